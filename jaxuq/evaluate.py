"""One call from predictions to torch-uncertainty's full classification table.

:func:`classification_table` returns the same keys as TU 0.13.0's ``ClassificationRoutine``
(``test/cls/Acc``, ``test/cal/ECE``, ``test/sc/AURC``, ``ood/AUROC``, ``test/cplx/params``,
``test/ens_Disagreement``, ...) with float values; print it with :func:`jaxuq.report.print_table`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq.metrics import _checks
from jaxuq.metrics.calibration import _smece_conf_acc
from jaxuq.metrics.suite import table_core

__all__ = ["classification_table"]


def _split_members(x, name: str, pending):
    """``[N, C]`` -> (probs, None); ``[M, N, C]`` -> (mean over members, members if M > 1)."""
    arr = _checks.check_probs(x, name, (2, 3), pending)
    if arr.ndim == 2:
        return arr.astype(jnp.float32), None
    arr = arr.astype(jnp.float32)
    mean = jnp.mean(arr, axis=0)
    return mean, (arr if arr.shape[0] > 1 else None)


def classification_table(
    probs=None,
    labels=None,
    *,
    ood_scores=None,
    ood_labels=None,
    ood_probs=None,
    logits=None,
    flops: int | None = None,
    params: int | None = None,
    smece: bool = True,
    scod_ood_cost: float = 0.5,
) -> dict[str, float]:
    """TU's test table from predictions.

    Args:
      probs: ``[N, C]`` probabilities, or ``[M, N, C]`` member probabilities (averaged over
        members; ``M > 1`` adds ``test/ens_{Disagreement, MI, Entropy}``). Give either ``probs``
        or ``logits``.
      labels: ``[N]`` integer labels.
      ood_scores: optional ``[N + N_ood]`` OOD scores (higher = more OOD): the ``N`` ID samples
        first, in ``probs`` order, then the OOD samples. Adds ``ood/{AUROC, AUPR, FPR95}`` and
        ``ood/SCOD_*``.
      ood_labels: optional ``[N + N_ood]`` 0/1 OOD indicators; default ``N`` zeros then ones.
      ood_probs: optional OOD-set probabilities ``[N_ood, C]`` or ``[M, N_ood, C]``: adds
        ``ood/Entropy`` (of the averaged probabilities) and, for ``M > 1``, ``ood/ens_*``.
      logits: ``[N, C]`` or ``[M, N, C]`` logits instead of ``probs`` (float32 softmax applied).
      flops, params: complexity numbers (see :func:`jaxuq.metrics.count_flops`,
        :func:`jaxuq.metrics.count_params`), reported as ``test/cplx/flops`` / ``params``.
      smece: compute ``test/cal/SmECE`` (host float64, the slowest metric).
      scod_ood_cost: TU's ``scod_ood_cost``.
    Returns:
      ``{key: float}`` with TU's metric names.
    """
    if (probs is None) == (logits is None):
        raise ValueError("give exactly one of `probs` or `logits`")
    if logits is not None:
        lg = _checks.as_array(logits, "logits", (2, 3))
        probs = jax.nn.softmax(lg.astype(jnp.float32), axis=-1)
    pending = []  # every value check is fetched in one device->host transfer
    p, members = _split_members(probs, "probs", pending)
    n, c = p.shape
    y = _checks.check_labels(labels, n, c, "labels", pending)
    kw = {}
    if members is not None:
        kw["member_probs"] = members
    if ood_scores is not None:
        s = _checks.check_scores(ood_scores, "ood_scores", pending)
        if s.shape[0] <= n and ood_labels is None:
            raise ValueError(
                f"`ood_scores` has shape {s.shape}: expected N + N_ood > N = {n} scores (ID first)"
            )
        if ood_labels is None:
            is_ood = jnp.concatenate([jnp.zeros((n,), jnp.int32), jnp.ones((s.shape[0] - n,), jnp.int32)])
        else:
            is_ood = _checks.check_binary(ood_labels, s.shape[0], "ood_labels", pending=pending)
        kw.update(ood_scores=s, is_ood=is_ood)
        if ood_probs is not None:
            op, om = _split_members(ood_probs, "ood_probs", pending)
            if op.shape[1] != c:
                raise ValueError(f"`ood_probs` has {op.shape[1]} classes, `probs` has {c}")
            kw["ood_probs"] = op
            if om is not None:
                kw["ood_member_probs"] = om
    elif ood_labels is not None or ood_probs is not None:
        raise ValueError("`ood_labels` / `ood_probs` need `ood_scores`")
    scod_ood_cost = _checks.check_fraction(scod_ood_cost, "scod_ood_cost")
    _checks.resolve(pending)
    out, conf, acc = table_core(p, y, ood_cost=scod_ood_cost, **kw)
    res = {k: float(v) for k, v in jax.device_get(out).items()}
    if smece:
        conf, acc = jax.device_get((conf, acc))
        res["test/cal/SmECE"] = _smece_conf_acc(np.asarray(conf), np.asarray(acc))[0]
    if flops is not None:
        res["test/cplx/flops"] = int(flops)
    if params is not None:
        res["test/cplx/params"] = int(params)
    return res
