"""jaxuq.metrics: torch-uncertainty 0.13.0's classification and regression metric suites as pure JAX
functions (regression: :mod:`jaxuq.metrics.regression`).

Every public function validates its inputs (shapes, NaN/inf, label ranges, probabilities summing to
one) with one device->host check and raises ``ValueError`` naming the argument, then calls a
jitted float32 core. Under ``jax.jit`` / ``vmap`` / ``grad`` the value checks are skipped (the
inputs are tracers); shapes and dtypes are still checked. Rank-based metrics (AURC family, aECE,
ROC/PR, SCOD) are tie-aware and independent of sample order (:mod:`jaxuq.metrics._ties`).
Streaming (batch/device mergeable) forms live in :mod:`jaxuq.metrics.streaming`; the fused
whole-table core in :mod:`jaxuq.metrics.suite`.

Shapes: ``probs [N, C]``, ``labels [N]``, ensembles ``member_probs [M, N, C]`` (members on axis 0),
OOD ``scores [N]`` (higher = more OOD) with ``is_ood [N]`` (OOD = positive class).
"""

from jaxuq.metrics import streaming
from jaxuq.metrics.calibration import (
    ECE_EDGES,
    ReliabilityData,
    adaptive_ece,
    classwise_ece,
    ece,
    mce,
    reliability_diagram_data,
    smooth_ece,
)
from jaxuq.metrics.classification import accuracy, brier_score, entropy, nll
from jaxuq.metrics.complexity import count_flops, count_params
from jaxuq.metrics.ensemble import disagreement, ensemble_entropy, mutual_information, variation_ratio
from jaxuq.metrics.ood import auc, aupr, auroc, fpr95, fpr_at_tpr, tpr_at_fpr
from jaxuq.metrics.regression import (
    distribution_nll,
    interval_coverage,
    interval_score,
    inverse_absolute_error,
    inverse_squared_error,
    log10_error,
    mean_absolute_error,
    mean_interval_width,
    mean_squared_error,
    mean_squared_log_error,
    quantile_calibration_error,
    relative_absolute_error,
    relative_squared_error,
    silog,
    threshold_accuracy,
)
from jaxuq.metrics.selective import augrc, aurc, cov_at_risk, risk_at_cov, scod_metrics

__all__ = [
    "distribution_nll",
    "interval_coverage",
    "interval_score",
    "inverse_absolute_error",
    "inverse_squared_error",
    "log10_error",
    "mean_absolute_error",
    "mean_interval_width",
    "mean_squared_error",
    "mean_squared_log_error",
    "quantile_calibration_error",
    "relative_absolute_error",
    "relative_squared_error",
    "silog",
    "threshold_accuracy",
    "ECE_EDGES",
    "ReliabilityData",
    "accuracy",
    "adaptive_ece",
    "auc",
    "augrc",
    "aupr",
    "auroc",
    "aurc",
    "brier_score",
    "classwise_ece",
    "count_flops",
    "count_params",
    "cov_at_risk",
    "disagreement",
    "ece",
    "ensemble_entropy",
    "entropy",
    "fpr95",
    "fpr_at_tpr",
    "mce",
    "mutual_information",
    "nll",
    "reliability_diagram_data",
    "risk_at_cov",
    "scod_metrics",
    "smooth_ece",
    "streaming",
    "tpr_at_fpr",
    "variation_ratio",
]
