"""OOD-detection metrics (TU A.4). Positive class = OOD (``is_ood == 1``); higher score = more OOD.

All curves are tie-exact: there is one ROC/PR point per *distinct* score (a threshold can never
split a group of tied scores), computed with a single sort plus cumulative max/min scans
(``jaxuq.metrics._ties``), so everything is jittable with static shapes and order-invariant.

* ``auroc``: area under the ROC curve (trapezoid from (0, 0), one point per distinct score) =
  torchmetrics ``BinaryAUROC`` on raw scores = ``sklearn.metrics.roc_auc_score``.
* ``aupr``: average precision ``sum_k (R_k - R_{k-1}) P_k`` (step-wise, no interpolation) =
  torchmetrics ``BinaryAveragePrecision`` = ``sklearn.metrics.average_precision_score``.
* ``fpr_at_tpr``: TU's ``FPRx`` (``FPR95`` for tpr=0.95): the FPR at the first (highest)
  threshold whose TPR reaches ``tpr``.
* ``auc``: partial AUC up to ``max_fpr``, McClish-standardised exactly like
  ``sklearn.metrics.roc_auc_score(max_fpr=...)``; ``max_fpr=1`` gives the plain AUROC.
* ``tpr_at_fpr``: the largest TPR over the ROC points (distinct thresholds, (0, 0) included) whose
  FPR is ``<= max_fpr``; no interpolation.

**Deviation from TU 0.13.0 (documented):** torchmetrics applies ``sigmoid`` to an update *batch*
of scores whenever any score of that batch lies outside [0, 1]; batches are squashed or not
independently, which can change the ranking across batches (e.g. entropy scores). We always use
the raw scores (the correct definition). Where every batch is squashed (MSP, logit, energy) or
the data is one batch, TU and jaxuq agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxuq import _validate
from jaxuq.metrics import _ties

__all__ = ["auroc", "aupr", "fpr_at_tpr", "fpr95", "auc", "tpr_at_fpr", "roc_points", "roc_points_groups"]

F32 = jnp.float32


def roc_points_groups(g):
    """Tie-aware cumulative counts from :func:`jaxuq.metrics._ties.rank_sort` groups of the scores
    (payload 0 = int32 OOD indicator). Jittable.

    Returns:
      ``(pos, tp_end, tp_before, fp_end, fp_before, end_idx, is_last, n_pos, n_neg)``, each array
      ``[N]`` in sorted (descending) order: for the tie group of sorted position ``i``,
      ``tp_end``/``fp_end`` are the TP/FP counts once the whole group is accepted, ``*_before``
      the counts before it; ``pos`` the group's mean positive rate; ``end_idx`` the group's last
      sorted index; ``is_last`` marks the last position of each group (one ROC point each).
    """
    tp_before, tp_end = g.totals[0]
    n = g.end.shape[0]
    n_pos = tp_end[-1]
    pos = _ties.group_mean(g)
    is_last = g.end == jnp.arange(n, dtype=jnp.int32)
    return (pos, tp_end, tp_before, g.end + 1 - tp_end, g.start - tp_before, g.end, is_last, n_pos,
            n - n_pos)  # fmt: skip


def roc_points(scores: jax.Array, is_ood: jax.Array):
    """:func:`roc_points_groups` of ``scores [N]`` (higher = more OOD) and ``is_ood [N]``."""
    return roc_points_groups(_ties.rank_sort(scores, is_ood.astype(jnp.int32)))


def _auroc_from_points(pts):
    pos, tp_end, tp_before, _, _, _, _, n_pos, n_neg = pts
    h = (tp_end + tp_before).astype(F32) / (2.0 * n_pos.astype(F32))
    return jnp.sum((1.0 - pos) * h) / n_neg.astype(F32)  # pos: the group's share of positives


def _aupr_from_points(pts):
    pos, tp_end, _, _, _, end_idx, _, n_pos, _ = pts
    prec = tp_end.astype(F32) / (end_idx + 1).astype(F32)
    return jnp.sum(pos * prec) / n_pos.astype(F32)


def _fpr_at_tpr_from_points(pts, tpr: float):
    _, tp_end, _, fp_end, _, _, is_last, n_pos, n_neg = pts
    recall = tp_end.astype(F32) / n_pos.astype(F32)
    ok = is_last & (recall >= jnp.asarray(tpr, F32))
    first = jnp.argmax(ok)
    return jnp.where(tpr == 0, 0.0, fp_end[first].astype(F32) / n_neg.astype(F32))


def _partial_auc_from_points(pts, max_fpr: float):
    _, tp_end, tp_before, fp_end, fp_before, _, is_last, n_pos, n_neg = pts
    f1 = fp_end.astype(F32) / n_neg.astype(F32)
    f0 = fp_before.astype(F32) / n_neg.astype(F32)
    t1 = tp_end.astype(F32) / n_pos.astype(F32)
    t0 = tp_before.astype(F32) / n_pos.astype(F32)
    m = jnp.asarray(max_fpr, F32)
    full = (f1 - f0) * (t0 + t1) / 2.0
    width = jnp.where(f1 > f0, f1 - f0, 1.0)
    t_m = t0 + (t1 - t0) * (m - f0) / width
    part = (m - f0) * (t0 + t_m) / 2.0
    seg = jnp.where(f1 <= m, full, jnp.where(f0 >= m, 0.0, part))
    pauc = jnp.sum(jnp.where(is_last, seg, 0.0))
    min_area = 0.5 * m**2
    std = 0.5 * (1.0 + (pauc - min_area) / jnp.where(m < 1.0, m - min_area, 1.0))
    return jnp.where(m >= 1.0, pauc, std)


def _tpr_at_fpr_from_points(pts, max_fpr: float):
    _, tp_end, _, fp_end, _, _, is_last, n_pos, n_neg = pts
    fpr = fp_end.astype(F32) / n_neg.astype(F32)
    ok = is_last & (fpr <= jnp.asarray(max_fpr, F32))
    best = jnp.max(jnp.where(ok, tp_end, 0))
    return best.astype(F32) / n_pos.astype(F32)


@jax.jit
def _auroc_impl(scores, is_ood):
    return _auroc_from_points(roc_points(scores, is_ood))


@jax.jit
def _aupr_impl(scores, is_ood):
    return _aupr_from_points(roc_points(scores, is_ood))


@jax.jit
def _fpr_at_tpr_impl(scores, is_ood, tpr: float = 0.95):
    return _fpr_at_tpr_from_points(roc_points(scores, is_ood), tpr)


@jax.jit
def _auc_impl(scores, is_ood, max_fpr: float = 1.0):
    return _partial_auc_from_points(roc_points(scores, is_ood), max_fpr)


@jax.jit
def _tpr_at_fpr_impl(scores, is_ood, max_fpr: float):
    return _tpr_at_fpr_from_points(roc_points(scores, is_ood), max_fpr)


def _scores_labels(scores, is_ood):
    pending = []
    scores = _validate.check_scores(scores, "scores", pending)
    is_ood = _validate.check_binary(is_ood, scores.shape[0], "is_ood", both_classes=True, pending=pending)
    _validate.resolve(pending)
    return scores, is_ood


def auroc(scores, is_ood) -> jax.Array:
    """Area under the ROC curve, OOD = positive (raw scores; no per-batch sigmoid).

    Args:
      scores: ``[N]`` finite scores, higher = more OOD.
      is_ood: ``[N]`` 0/1 (or bool), both classes present.
    Returns:
      float32 scalar in [0, 1].
    """
    return _auroc_impl(*_scores_labels(scores, is_ood))


def aupr(scores, is_ood) -> jax.Array:
    """Average precision with OOD as the positive class (step-wise, one point per distinct score).

    Args:
      scores: ``[N]`` finite scores, higher = more OOD.
      is_ood: ``[N]`` 0/1 labels, both classes present.
    Returns:
      float32 scalar in [0, 1].
    """
    return _aupr_impl(*_scores_labels(scores, is_ood))


def fpr_at_tpr(scores, is_ood, tpr: float = 0.95) -> jax.Array:
    """TU's ``FPRx``: FPR at the first distinct threshold (descending) whose TPR >= ``tpr``.

    Args:
      scores: ``[N]`` finite scores, higher = more OOD.
      is_ood: ``[N]`` 0/1 labels, both classes present.
      tpr: recall level in [0, 1] (0.95 gives FPR95).
    Returns:
      float32 scalar in [0, 1].
    """
    tpr = _validate.check_fraction(tpr, "tpr")
    return _fpr_at_tpr_impl(*_scores_labels(scores, is_ood), tpr=tpr)


def fpr95(scores, is_ood) -> jax.Array:
    """``fpr_at_tpr(scores, is_ood, 0.95)`` (``ood/FPR95``)."""
    return fpr_at_tpr(scores, is_ood, 0.95)


def auc(scores, is_ood, max_fpr: float = 1.0) -> jax.Array:
    """Partial ROC AUC on ``FPR in [0, max_fpr]``, standardised like sklearn (McClish correction).

    With ``A`` the area under the ROC curve for ``FPR <= max_fpr`` (the last segment linearly
    interpolated at ``max_fpr``), returns ``0.5 * (1 + (A - max_fpr^2/2) / (max_fpr - max_fpr^2/2))``,
    which equals ``sklearn.metrics.roc_auc_score(is_ood, scores, max_fpr=max_fpr)``: 0.5 for a
    random detector, 1 for a perfect one. ``max_fpr = 1`` returns the plain AUROC.

    Args:
      scores: ``[N]`` finite scores, higher = more OOD.
      is_ood: ``[N]`` 0/1 labels, both classes present.
      max_fpr: in (0, 1].
    Returns:
      float32 scalar.
    """
    max_fpr = _validate.check_fraction(max_fpr, "max_fpr", open_left=True)
    return _auc_impl(*_scores_labels(scores, is_ood), max_fpr=max_fpr)


def tpr_at_fpr(scores, is_ood, max_fpr: float) -> jax.Array:
    """Largest TPR reachable with FPR <= ``max_fpr`` (over distinct thresholds, no interpolation).

    Args:
      scores: ``[N]`` finite scores, higher = more OOD.
      is_ood: ``[N]`` 0/1 labels, both classes present.
      max_fpr: in [0, 1].
    Returns:
      float32 scalar in [0, 1].
    """
    max_fpr = _validate.check_fraction(max_fpr, "max_fpr")
    return _tpr_at_fpr_impl(*_scores_labels(scores, is_ood), max_fpr=max_fpr)
