"""jaxuq.calibration: post-hoc calibration (temperature / vector / matrix / Dirichlet scaling,
histogram binning, isotonic regression, BBQ), conformal prediction sets (THR, APS, RAPS), conformal
regression intervals (CQR, split conformal), DEUP, Laplace
and MC-BatchNorm, with torch-uncertainty 0.13.0 semantics."""

from jaxuq.calibration.bbq import bbq_apply, bbq_apply_probs, bbq_fit, bbq_fit_probs
from jaxuq.calibration.binning import (
    histogram_binning_apply,
    histogram_binning_apply_probs,
    histogram_binning_fit,
    histogram_binning_fit_probs,
)
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
from jaxuq.calibration.conformal_regression import (
    cqr_intervals,
    cqr_quantile,
    cqr_scores,
    split_conformal_intervals,
    split_conformal_quantile,
)
from jaxuq.calibration.deup import deup_features, deup_fit, deup_score
from jaxuq.calibration.dirichlet import dirichlet_apply, dirichlet_fit
from jaxuq.calibration.isotonic import isotonic_apply, isotonic_apply_probs, isotonic_fit, isotonic_fit_probs
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
    "bbq_apply", "bbq_apply_probs", "bbq_fit", "bbq_fit_probs", "histogram_binning_apply",
    "histogram_binning_apply_probs", "histogram_binning_fit", "histogram_binning_fit_probs",
    "isotonic_apply", "isotonic_apply_probs", "isotonic_fit", "isotonic_fit_probs", "dirichlet_apply",
    "dirichlet_fit", "cqr_intervals", "cqr_quantile", "cqr_scores", "split_conformal_intervals",
    "split_conformal_quantile",
]

from jaxuq.calibration.mc_batch_norm import mc_batch_norm_fit  # noqa: E402

__all__ += ["mc_batch_norm_fit"]
