"""jaxuq.ood: OOD criteria (TU 0.13.0 names and signs), detectors that fit on in-distribution data
and read internal layers (scio 1.1.0 definitions; configurations + states + pure fit/score, and the
scio-named wrappers), layer recording for Flax, and metrics on confidences (scio's ``eval``)."""

from jaxuq.ood.confidence_metrics import evaluate_confidences, partial_auc, tpr_at_fpr_conf
from jaxuq.ood.criteria import (
    CRITERIA,
    deup,
    energy,
    entropy_score,
    get_criterion,
    max_logit,
    msp,
    mutual_information_score,
    score,
    variation_ratio,
)
from jaxuq.ood.detectors import (
    KNN,
    ODIN,
    Detector,
    DetectorConfig,
    EmptyState,
    GradNorm,
    GradNormConfig,
    Gram,
    GramConfig,
    GramState,
    KNNConfig,
    KNNState,
    Mahalanobis,
    MahalanobisConfig,
    MahalanobisState,
    ODINConfig,
    ScoreTimer,
    Softmax,
    SoftmaxConfig,
    confidence,
    fit_detector,
    score_detector,
)
from jaxuq.ood.recorder import RecordedNet, available_layers, layer_infos, layer_table

__all__ = [
    "CRITERIA", "deup", "energy", "entropy_score", "get_criterion", "max_logit", "msp",
    "mutual_information_score", "score", "variation_ratio",
    "DetectorConfig", "SoftmaxConfig", "GradNormConfig", "GramConfig", "KNNConfig", "MahalanobisConfig",
    "ODINConfig", "EmptyState", "GramState", "KNNState", "MahalanobisState", "fit_detector", "score_detector",
    "confidence", "KNN", "ODIN", "Detector", "GradNorm", "Gram", "Mahalanobis", "ScoreTimer", "Softmax",
    "evaluate_confidences", "partial_auc", "tpr_at_fpr_conf",
    "RecordedNet", "available_layers", "layer_infos", "layer_table",
]
