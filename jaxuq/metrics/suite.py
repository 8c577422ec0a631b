"""The whole TU classification metric table in one fused jitted function, and the one table of TU's
key names.

:data:`KEYS` maps jaxuq's metric names to TU 0.13.0 ``ClassificationRoutine``'s keys
(``test/cls/Acc``, ``ood/AUROC``, ...); :func:`jaxuq.evaluation.classification_table` (arrays) and
:func:`jaxuq.evaluate` (streaming) both write their results through it. :func:`rank_metrics` (the
metrics that need a global sort: AURC family, aECE, AUROC/AUPR/FPR95, SCOD) is the one function both
call. :func:`table_core` computes every jittable metric of TU's ``test_step`` (``test/cls``,
``test/cal`` except SmECE, ``test/sc``, ``ood/*``, ``ens_*``) in a single XLA program, sharing the
top-label reduction and one sort per score (confidence, OOD score). Inputs must be validated already
(see :func:`jaxuq.evaluation.classification_table`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxuq.metrics import _ties
from jaxuq.metrics import calibration as _cal
from jaxuq.metrics import classification as _cls
from jaxuq.metrics import ensemble as _ens
from jaxuq.metrics import ood as _ood
from jaxuq.metrics import selective as _sel

__all__ = ["KEYS", "rank_metrics", "table_core"]

F32 = jnp.float32

#: jaxuq metric name -> TU 0.13.0 ``ClassificationRoutine`` / ``RegressionRoutine`` test-table key (the only
#: place they are spelt).
KEYS = {
    "acc": "test/cls/Acc", "brier": "test/cls/Brier", "nll": "test/cls/NLL", "entropy": "test/cls/Entropy",
    "ece": "test/cal/ECE", "mce": "test/cal/MCE", "aece": "test/cal/aECE", "smece": "test/cal/SmECE",
    "aurc": "test/sc/AURC", "augrc": "test/sc/AUGRC", "cov_5risk": "test/sc/Cov_5Risk",
    "risk_80cov": "test/sc/Risk_80Cov",
    "ens_disagreement": "test/ens_Disagreement", "ens_mi": "test/ens_MI", "ens_entropy": "test/ens_Entropy",
    "auroc": "ood/AUROC", "aupr": "ood/AUPR", "fpr95": "ood/FPR95", "ood_entropy": "ood/Entropy",
    "scod_aurc": "ood/SCOD_AURC", "scod_augrc": "ood/SCOD_AUGRC", "scod_cov_5risk": "ood/SCOD_Cov_5Risk",
    "scod_risk_80cov": "ood/SCOD_Risk_80Cov",
    "ood_ens_disagreement": "ood/ens_Disagreement", "ood_ens_mi": "ood/ens_MI",
    "ood_ens_entropy": "ood/ens_Entropy",
    "flops": "test/cplx/flops", "params": "test/cplx/params",
    # RegressionRoutine
    "mae": "test/reg/MAE", "mse": "test/reg/MSE", "rmse": "test/reg/RMSE", "reg_nll": "test/reg/NLL",
    "qce": "test/cal/QCE",
}
_SELECTIVE = {"AURC": "aurc", "AUGRC": "augrc", "Cov_5Risk": "cov_5risk", "Risk_80Cov": "risk_80cov"}


def _selective_keys(values: dict, prefix: str = "") -> dict:
    """``selective_from_groups``' dict -> TU keys (``prefix`` ``"scod_"``: the SCOD block)."""
    return {KEYS[prefix + _SELECTIVE[k]]: v for k, v in values.items()}


def _ens_block(member_probs, prefix: str) -> dict:
    n = member_probs.shape[1]
    mi = jnp.maximum(jnp.sum(_ens.mutual_information_per_sample(member_probs)), 0.0)
    return {
        KEYS[f"{prefix}ens_disagreement"]: jnp.sum(_ens.disagreement_per_sample(member_probs)) / n,
        KEYS[f"{prefix}ens_mi"]: mi / n,
        KEYS[f"{prefix}ens_entropy"]: jnp.sum(jnp.mean(_cls.entropy_per_sample(member_probs), axis=0)) / n,
    }


@functools.partial(jax.jit, static_argnames=("ood_cost",))
def rank_metrics(conf, acc, ood_scores=None, is_ood=None, ood_cost: float = 0.5) -> dict:
    """The rank-based metrics of TU's table, one sort per score: ``test/sc/*`` and ``test/cal/aECE``
    from the ID confidences ``conf [N]`` and correctness ``acc [N]`` (float32 0/1); with
    ``ood_scores [N_tot]`` (the ``N`` ID samples first, higher = more OOD) and ``is_ood [N_tot]``
    (0/1) also ``ood/{AUROC, AUPR, FPR95}`` and ``ood/SCOD_*`` (``ood_cost``: TU's
    ``scod_ood_cost``). Jittable; float32 scalars keyed by :data:`KEYS`."""
    # one sort of the confidences: the AURC family and aECE (tie-aware); one of the OOD scores serves
    # ROC/PR and SCOD (acceptance -score: reversed groups); both sorts in one call
    specs = [(conf, 1.0 - acc, acc)]
    if ood_scores is not None:
        errors = jnp.concatenate([1.0 - acc, jnp.zeros((ood_scores.shape[0] - conf.shape[0],), F32)])
        specs.append((ood_scores, is_ood.astype(jnp.int32), _sel.scod_losses(errors, is_ood, ood_cost)))
    g, *ood = _ties.rank_sort_many(*specs)
    out = _selective_keys(_sel.selective_from_groups(g))
    out[KEYS["aece"]] = _cal._aece_from_groups(g, 1)
    if not ood:
        return out
    g = ood[0]
    pts = _ood.roc_points_groups(g)
    out[KEYS["auroc"]] = _ood._auroc_from_points(pts)
    out[KEYS["aupr"]] = _ood._aupr_from_points(pts)
    out[KEYS["fpr95"]] = _ood._fpr_at_tpr_from_points(pts, 0.95)
    return out | _selective_keys(_sel.selective_from_groups(_ties.reverse(g), 1), "scod_")


@functools.partial(jax.jit, static_argnames=("ood_cost",))
def table_core(
    probs,
    labels,
    member_probs=None,
    ood_scores=None,
    is_ood=None,
    ood_probs=None,
    ood_member_probs=None,
    ood_cost: float = 0.5,
):
    """All jittable metrics of the TU table.

    Args:
      probs: ``[N, C]`` (member-averaged) ID probabilities.
      labels: ``[N]`` ID labels.
      member_probs: optional ``[M, N, C]`` ID member probabilities (adds ``test/ens_*``).
      ood_scores: optional ``[N_tot]`` OOD scores, the ``N`` ID samples first (adds ``ood/*``).
      is_ood: ``[N_tot]`` 0/1, required with ``ood_scores``.
      ood_probs: optional ``[N_ood, C]`` probabilities of the OOD set (adds ``ood/Entropy``).
      ood_member_probs: optional ``[M, N_ood, C]`` (adds ``ood/ens_*``).
      ood_cost: SCOD cost of accepting an OOD sample.
    Returns:
      ``(metrics, conf, acc)``: a dict of float32 scalars keyed with TU's names, and the ID
      top-label confidence / correctness ``[N]`` (for SmECE on host).
    """
    n = probs.shape[0]
    conf, acc = _cal.top_label(probs, labels)
    out = {
        KEYS["acc"]: jnp.mean(acc),
        KEYS["brier"]: jnp.sum(_cls._brier_per_sample(probs, labels)) / n,
        KEYS["nll"]: jnp.sum(_cls._nll_per_sample(probs, labels)) / n,
        KEYS["entropy"]: jnp.sum(_cls.entropy_per_sample(probs)) / n,
    }
    sums = _cal._binned_sums(conf, acc)
    out[KEYS["ece"]] = _cal._ece_from_sums(*sums)
    out[KEYS["mce"]] = _cal._mce_from_sums(*sums)
    out |= rank_metrics(conf, acc, ood_scores, is_ood, ood_cost)
    if member_probs is not None:
        out.update(_ens_block(member_probs, ""))
    if ood_probs is not None:
        out[KEYS["ood_entropy"]] = jnp.sum(_cls.entropy_per_sample(ood_probs)) / ood_probs.shape[0]
    if ood_member_probs is not None:
        out.update(_ens_block(ood_member_probs, "ood_"))
    return out, conf, acc
