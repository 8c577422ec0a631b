"""jaxuq.ood: OOD criteria (TU 0.13.0 names and signs), detectors that fit on in-distribution data
and read internal layers (scio 1.1.0 definitions), layer recording for Flax, evaluation."""

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
from jaxuq.ood.detectors import KNN, ODIN, Detector, GradNorm, Gram, Mahalanobis, ScoreTimer, Softmax
from jaxuq.ood.evaluation import evaluate_confidences, partial_auc, tpr_at_fpr_conf
from jaxuq.ood.recorder import RecordedNet, available_layers, layer_infos, layer_table

__all__ = [
    "CRITERIA", "deup", "energy", "entropy_score", "get_criterion", "max_logit", "msp",
    "mutual_information_score", "score", "variation_ratio", "KNN", "ODIN", "Detector", "GradNorm", "Gram",
    "Mahalanobis", "ScoreTimer", "Softmax", "evaluate_confidences", "partial_auc", "tpr_at_fpr_conf",
    "RecordedNet", "available_layers", "layer_infos", "layer_table",
]
