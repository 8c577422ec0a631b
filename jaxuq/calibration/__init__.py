"""jaxuq.calibration: post-hoc calibration (temperature / vector / matrix scaling),
conformal prediction sets (THR, APS, RAPS), DEUP and MC-BatchNorm, with torch-uncertainty 0.13.0 semantics."""

from jaxuq.calibration.conformal import (
    aps_all_scores,
    aps_quantile,
    aps_scores,
    aps_sets,
    conformal_fit,
    conformal_predict,
    conformal_quantile,
    coverage_rate,
    set_size,
    thr_quantile,
    thr_scores,
    thr_sets,
)
from jaxuq.calibration.deup import deup_features, deup_fit, deup_score
from jaxuq.calibration.lbfgs import lbfgs_torch
from jaxuq.calibration.scaling import (
    cross_entropy,
    matrix_apply,
    matrix_fit,
    temperature_apply,
    temperature_fit,
    vector_apply,
    vector_fit,
)

__all__ = [
    "aps_all_scores", "aps_quantile", "aps_scores", "aps_sets", "conformal_fit", "conformal_predict",
    "conformal_quantile", "coverage_rate", "set_size", "thr_quantile", "thr_scores", "thr_sets",
    "deup_features", "deup_fit", "deup_score", "lbfgs_torch", "cross_entropy", "matrix_apply",
    "matrix_fit", "temperature_apply", "temperature_fit", "vector_apply", "vector_fit",
]

from jaxuq.calibration.mc_batch_norm import mc_batch_norm_fit, mc_batch_norm_predict  # noqa: E402

__all__ += ["mc_batch_norm_fit", "mc_batch_norm_predict"]
