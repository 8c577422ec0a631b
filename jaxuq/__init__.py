"""jaxuq: uncertainty quantification for deep learning in JAX/Flax.

A reimplementation of torch-uncertainty 0.13.0 (metrics, models, ensembles,
post-hoc calibration, OOD detection) with parity tests against it.
"""

__version__ = "0.1.0"
