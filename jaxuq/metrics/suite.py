"""The whole TU classification metric table in one fused jitted function.

:func:`table_core` computes every jittable metric of TU's ``ClassificationRoutine.test_step``
(``test/cls``, ``test/cal`` except SmECE, ``test/sc``, ``ood/*``, ``ens_*``) in a single XLA
program, sharing the top-label reduction and one sort per score (confidence, OOD score). Inputs
must be validated already (see :func:`jaxuq.evaluation.classification_table`).
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

__all__ = ["table_core"]

F32 = jnp.float32


def _ens_block(member_probs, prefix: str) -> dict:
    n = member_probs.shape[1]
    return {
        f"{prefix}Disagreement": jnp.sum(_ens.disagreement_per_sample(member_probs)) / n,
        f"{prefix}MI": jnp.maximum(jnp.sum(_ens.mutual_information_per_sample(member_probs)), 0.0) / n,
        f"{prefix}Entropy": jnp.sum(jnp.mean(_cls.entropy_per_sample(member_probs), axis=0)) / n,
    }


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
        "test/cls/Acc": jnp.mean(acc),
        "test/cls/Brier": jnp.sum(_cls._brier_per_sample(probs, labels)) / n,
        "test/cls/NLL": jnp.sum(_cls._nll_per_sample(probs, labels)) / n,
        "test/cls/Entropy": jnp.sum(_cls.entropy_per_sample(probs)) / n,
    }
    sums = _cal._binned_sums(conf, acc)
    out["test/cal/ECE"] = _cal._ece_from_sums(*sums)
    out["test/cal/MCE"] = _cal._mce_from_sums(*sums)
    # one sort of the confidences serves the AURC family and aECE (both tie-aware)
    g = _ties.rank_sort(conf, 1.0 - acc, acc)
    for k, v in _sel.selective_from_groups(g).items():
        out[f"test/sc/{k}"] = v
    out["test/cal/aECE"] = _cal._aece_from_groups(g, 1)
    if member_probs is not None:
        out.update(_ens_block(member_probs, "test/ens_"))
    if ood_scores is not None:
        # one sort of the OOD scores serves ROC/PR and SCOD (acceptance -score: reversed groups)
        n_tot = ood_scores.shape[0]
        errors = jnp.concatenate([1.0 - acc, jnp.zeros((n_tot - n,), F32)])
        losses = _sel.scod_losses(errors, is_ood, ood_cost)
        g = _ties.rank_sort(ood_scores, is_ood.astype(jnp.int32), losses)
        pts = _ood.roc_points_groups(g)
        out["ood/AUROC"] = _ood._auroc_from_points(pts)
        out["ood/AUPR"] = _ood._aupr_from_points(pts)
        out["ood/FPR95"] = _ood._fpr_at_tpr_from_points(pts, 0.95)
        for k, v in _sel.selective_from_groups(_ties.reverse(g), 1).items():
            out[f"ood/SCOD_{k}"] = v
        if ood_probs is not None:
            out["ood/Entropy"] = jnp.sum(_cls.entropy_per_sample(ood_probs)) / ood_probs.shape[0]
        if ood_member_probs is not None:
            out.update(_ens_block(ood_member_probs, "ood/ens_"))
    return out, conf, acc
