"""jaxuq: uncertainty quantification for deep learning in JAX/Flax.

A reimplementation of torch-uncertainty 0.13.0 (metrics, models, ensembles,
post-hoc calibration, OOD detection) with parity tests against it.

The subpackages load on first access (PEP 562), so ``import jaxuq`` is cheap and
``jaxuq.metrics.ece`` works without a separate ``import jaxuq.metrics``.
``jaxuq.evaluate``, ``jaxuq.predict`` and ``jaxuq.classification_table`` are
``jaxuq.evaluation``'s functions of the same names.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "calibration",
    "data",
    "ensembles",
    "evaluation",
    "forward",
    "losses",
    "metrics",
    "models",
    "nn",
    "ood",
    "report",
    "sampling",
    "sharding",
    "train",
    "tta",
)
_EVALUATION = ("classification_table", "evaluate", "predict")

__all__ = ["__version__", *_SUBMODULES, *_EVALUATION]


def _submodule(name: str):
    """Import ``jaxuq.<name>`` (which sets the attribute); a module absent from this install is an
    AttributeError, so ``hasattr`` / ``getattr(jaxuq, name, None)`` work. Errors inside it propagate."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (no module {e.name})") from e


def __getattr__(name: str):
    if name in _SUBMODULES:
        return _submodule(name)
    if name in _EVALUATION:
        value = getattr(_submodule("evaluation"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *(k for k in globals() if k.startswith("__"))})
