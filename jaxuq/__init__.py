"""jaxuq: uncertainty quantification for deep learning in JAX/Flax.

A reimplementation of torch-uncertainty 0.13.0 (metrics, models, ensembles,
post-hoc calibration, OOD detection) with parity tests against it.
"""

__version__ = "0.1.0"

_EVALUATION = ("evaluate", "predict", "classification_table")


def __getattr__(name):
    """``evaluate``, ``predict``, ``classification_table`` from :mod:`jaxuq.evaluation`, lazily."""
    if name in _EVALUATION:
        from jaxuq import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'jaxuq' has no attribute {name!r}")
