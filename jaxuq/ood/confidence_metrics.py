"""Discriminative power of OOD confidences, with scio's conventions (``scio.eval``).

Inputs are *confidences* (higher = more in-distribution): ``conf_ind [N]`` and ``conf_ood [M]``.
OOD is the positive class and is detected by a *low* confidence (threshold ``conf <= tau``), as
in scio. The ``*_conf`` functions take ``(conf_ind, conf_ood)``; the library's metrics of the
same stem in :mod:`jaxuq.metrics` take ``(scores, is_ood)`` with higher score = more OOD, and the
``*_conf`` wrappers call them on ``score = -confidence``.

- ``partial_auc(conf_ind, conf_ood, max_fpr)``: scio ``AUC(max_fpr)`` with the default
  "pessimistic" interpolation (step function), normalised by the FPR interval width
  (``max_fpr - min_fpr``), **not** McClish-standardised like sklearn's ``max_fpr``
  (``jaxuq.metrics.auc(max_fpr)`` is the McClish one, a different number).
- ``tpr_at_fpr_conf``: scio ``TPR(max_fpr)`` (pessimistic) = ``jaxuq.metrics.tpr_at_fpr``.
- ``auroc_conf``, ``aupr_conf``, ``fpr_at_tpr_conf``: ``jaxuq.metrics.auroc`` / ``aupr`` /
  ``fpr_at_tpr`` (TU's definitions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import jaxuq.metrics as M

__all__ = [
    "roc_pareto",
    "partial_auc",
    "tpr_at_fpr_conf",
    "auroc_conf",
    "aupr_conf",
    "fpr_at_tpr_conf",
    "METRICS",
    "evaluate_confidences",
]


def _check(conf_ind, conf_ood):
    a = np.asarray(conf_ind, np.float64).ravel()
    b = np.asarray(conf_ood, np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("need at least one in-distribution and one OOD sample")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("confidences contain NaN")
    return a, b


def roc_pareto(conf_ind, conf_ood) -> tuple[np.ndarray, np.ndarray]:
    """scio ``ROC``: Pareto front ``(FPR, TPR)`` for thresholds ``conf <= tau`` (OOD positive)."""
    a, b = _check(conf_ind, conf_ood)
    scores = np.concatenate([a, b])
    labels = np.concatenate([np.zeros(a.size, bool), np.ones(b.size, bool)])
    order = np.argsort(scores, kind="stable")
    scores, labels = scores[order], labels[order]
    unique = scores != np.r_[scores[1:], np.nan]
    pp = np.where(unique)[0] + 1
    tp = labels.cumsum()[pp - 1]
    fp = pp - tp
    fp = np.insert(fp, 0, 0)
    tp = np.insert(tp, 0, 0)
    mask = (np.diff(fp, append=np.inf) > 0) & (np.diff(tp, prepend=-np.inf) > 0)
    return fp[mask] / a.size, tp[mask] / b.size


def partial_auc(conf_ind, conf_ood, max_fpr: float = 1.0, min_fpr: float = 0.0) -> float:
    """scio ``AUC(max_fpr, min_fpr, kind="pessimistic")``."""
    if not 0 <= min_fpr < max_fpr <= 1:
        raise ValueError(f"need 0 <= min_fpr < max_fpr <= 1; got {min_fpr}, {max_fpr}")
    fpr, tpr = roc_pareto(conf_ind, conf_ood)
    interval = [min_fpr, max_fpr]
    i0, i1 = np.searchsorted(fpr, interval, "right")
    ptpr = np.append(tpr, 1)[i0 - 1 : i1 + 1].copy()
    pfpr = np.append(fpr, 1)[i0 - 1 : i1 + 1].copy()
    pfpr[[0, -1]] = interval
    return float(ptpr[:-1] @ np.diff(pfpr) / (max_fpr - min_fpr))


def _tu(fn, conf_ind, conf_ood, **kw) -> float:
    a, b = _check(conf_ind, conf_ood)
    scores = -np.concatenate([a, b]).astype(np.float32)
    is_ood = np.concatenate([np.zeros(a.size, np.int32), np.ones(b.size, np.int32)])
    return float(fn(scores, is_ood, **kw))


def auroc_conf(conf_ind, conf_ood) -> float:
    """``jaxuq.metrics.auroc`` (TU) with OOD positive and score ``-confidence``."""
    return _tu(M.auroc, conf_ind, conf_ood)


def aupr_conf(conf_ind, conf_ood) -> float:
    """``jaxuq.metrics.aupr`` (TU average precision) with OOD positive, score ``-confidence``."""
    return _tu(M.aupr, conf_ind, conf_ood)


def fpr_at_tpr_conf(conf_ind, conf_ood, tpr: float = 0.95) -> float:
    """``jaxuq.metrics.fpr_at_tpr`` (TU ``FPRx``) with OOD positive, score ``-confidence``."""
    return _tu(M.fpr_at_tpr, conf_ind, conf_ood, tpr=tpr)


def tpr_at_fpr_conf(conf_ind, conf_ood, max_fpr: float = 0.05) -> float:
    """scio ``TPR(max_fpr, kind="pessimistic")``: the best TPR with FPR <= ``max_fpr``.

    ``jaxuq.metrics.tpr_at_fpr`` with OOD positive and score ``-confidence``.
    """
    return _tu(M.tpr_at_fpr, conf_ind, conf_ood, max_fpr=max_fpr)


METRICS = {
    "AUROC": auroc_conf,
    "AUPR": aupr_conf,
    "FPR95": lambda a, b: fpr_at_tpr_conf(a, b, 0.95),
    "pAUC@0.2": lambda a, b: partial_auc(a, b, 0.2),
    "TPR@5%": lambda a, b: tpr_at_fpr_conf(a, b, 0.05),
}


def evaluate_confidences(
    confs_ind: Sequence[np.ndarray], confs_oods: Sequence[Sequence[np.ndarray]], metrics=("AUROC",)
) -> np.ndarray:
    """``[score, ood set, metric]`` array like scio's ``compute_metrics``.

    Args:
      confs_ind: per score, the InD confidences [N].
      confs_oods: per OOD set, per score, the OOD confidences [M] (scio's layout).
      metrics: names from :data:`METRICS` or callables ``f(conf_ind, conf_ood) -> float``.
    """
    fns = [METRICS[m] if isinstance(m, str) else m for m in metrics]
    out = np.empty((len(confs_ind), len(confs_oods), len(fns)))
    for i, ci in enumerate(confs_ind):
        for j, co in enumerate(confs_oods):
            out[i, j] = [f(ci, co[i]) for f in fns]
    return out
