"""Streaming (mergeable) forms of the metrics, optax-style.

Each factory returns a :class:`StreamingMetric` ``(init, update, merge, compute)`` of pure
functions over a small ``NamedTuple`` state, so an evaluation over batches (and devices: merge the
per-device states) gives the full-array answer whatever the batching:

* **sum type** (accuracy, Brier, NLL, entropy, ensemble entropy, disagreement, MI):
  :class:`SumState` = float32 running sum + int32 count; equal to the full-array value up to
  float32 summation order (~1e-7 relative). MI clamps the accumulated sum at compute, like TU.
* **binned** (ECE, MCE, reliability data): :class:`BinnedState` = the 16-slot float32 sums of
  confidence and accuracy plus exact int32 counts; bin membership is per sample, so the state is
  batching-invariant up to float32 summation order.
* **regression** (MAE, MSE, RMSE, DistributionNLL: :class:`SumState` over the target *elements*;
  QuantileCalibrationError: :class:`CountState`, exact int32 counts per level).
* **list type** (aECE, SmECE, AURC family, AUROC, AUPR, FPR@TPR, partial AUC, TPR@FPR): these
  need a global sort, so :class:`ListState` keeps the concatenated per-sample arrays (confidence
  and error, or score and OOD label; O(N) memory, like torchmetrics' list states) and ``compute``
  runs the full-array metric once. ``update`` is cheap (one top-label reduction per batch). These
  metrics are tie-aware, hence independent of sample order: merging states in any order gives the
  full-array value.

``update(state, *batch, mask=None)`` checks shapes (free) but not values: value validation would
force a device->host sync per batch; validate once on the full arrays with the public functions if
needed. ``mask`` (bool ``[B]``) marks the real rows of a zero-padded batch, so that one compiled
program serves every batch, the last short one included (``jaxuq.evaluate`` pads its tail batch):
sum and binned states ignore the masked-out rows inside ``jit``; a list state drops them, which
needs a concrete mask (outside ``jit``), since its arrays grow by the number of real rows.

Factories are cached: calling ``ece()`` twice returns the same metric (and jitted functions).

Example::

    m = jaxuq.metrics.streaming.ece()
    state = m.init()
    for probs, labels in batches:
        state = m.update(state, probs, labels)
    value = m.compute(state)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq import _validate
from jaxuq.metrics import calibration as _cal
from jaxuq.metrics import classification as _cls
from jaxuq.metrics import ensemble as _ens
from jaxuq.metrics import ood as _ood
from jaxuq.metrics import regression as _reg
from jaxuq.metrics import selective as _sel

__all__ = [
    "StreamingMetric",
    "SumState",
    "BinnedState",
    "ListState",
    "accuracy",
    "brier_score",
    "nll",
    "entropy",
    "ensemble_entropy",
    "disagreement",
    "mutual_information",
    "ece",
    "mce",
    "reliability",
    "adaptive_ece",
    "smooth_ece",
    "aurc",
    "augrc",
    "cov_at_risk",
    "risk_at_cov",
    "auroc",
    "aupr",
    "fpr_at_tpr",
    "auc",
    "tpr_at_fpr",
    "CountState",
    "mae",
    "mse",
    "rmse",
    "distribution_nll",
    "quantile_calibration_error",
]

F32 = jnp.float32


class StreamingMetric(NamedTuple):
    """``init() -> state``, ``update(state, *batch) -> state``, ``merge(a, b) -> state``,
    ``compute(state) -> value``."""

    init: Callable[[], Any]
    update: Callable[..., Any]
    merge: Callable[[Any, Any], Any]
    compute: Callable[[Any], Any]


class SumState(NamedTuple):
    total: jax.Array  # float32 scalar
    count: jax.Array  # int32 scalar


class BinnedState(NamedTuple):
    conf_sum: jax.Array  # float32 [16]
    acc_sum: jax.Array  # float32 [16]
    count: jax.Array  # int32 [16]


class ListState(NamedTuple):
    arrays: tuple  # per-sample arrays, each [N_seen], concatenated over updates


# ---------------------------------------------------------------------------- shape checks
def _check_pl(probs, labels, ndim: int = 2):
    probs = jnp.asarray(probs)
    labels = jnp.asarray(labels)
    if probs.ndim != ndim:
        raise ValueError(f"`probs` must be {ndim}-D, got shape {probs.shape}")
    n = probs.shape[-2]
    if labels.shape != (n,):
        raise ValueError(f"`labels` has shape {labels.shape}, expected ({n},) to match `probs` {probs.shape}")
    return probs, labels


def _check_p(probs, ndim: int):
    probs = jnp.asarray(probs)
    if probs.ndim != ndim:
        raise ValueError(f"`probs` must be {ndim}-D, got shape {probs.shape}")
    return probs


# ---------------------------------------------------------------------------- sum type
def _sum_init() -> SumState:
    return SumState(jnp.zeros((), F32), jnp.zeros((), jnp.int32))


def _sum_merge(a: SumState, b: SumState) -> SumState:
    return SumState(a.total + b.total, a.count + b.count)


def _mean_compute(s: SumState):
    return s.total / s.count.astype(F32)


def _check_mask(mask, n: int):
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.shape != (n,) or mask.dtype != jnp.bool_:
        raise ValueError(f"`mask` must be bool of shape ({n},) (one flag per row), got {mask.dtype} "
                         f"{mask.shape}")
    return mask


def _sum_metric(per_sample: Callable, check: Callable, compute=_mean_compute):
    """Sum state of ``per_sample(*batch) -> [B]`` (the batch's rows on the last axis of its output)."""

    @jax.jit
    def batch_sum(mask, *batch):
        v = per_sample(*batch)
        if mask is None:
            return jnp.sum(v), jnp.int32(v.shape[0])
        return jnp.sum(jnp.where(mask, v, 0.0)), jnp.sum(mask).astype(jnp.int32)

    def update(state: SumState, *batch, mask=None) -> SumState:
        batch = check(*batch)
        total, count = batch_sum(_check_mask(mask, batch[0].shape[-2]), *batch)
        return SumState(state.total + total, state.count + count)

    return StreamingMetric(_sum_init, update, _sum_merge, compute)


def _per_sample_pl_metric(per_sample: Callable) -> StreamingMetric:
    """Mean over samples of ``per_sample(probs [B, C], labels [B]) -> [B]``."""
    return _sum_metric(per_sample, _check_pl)


@functools.cache
def accuracy() -> StreamingMetric:
    """Streaming :func:`jaxuq.metrics.accuracy`; ``update(state, probs [B, C], labels [B])``."""
    return _per_sample_pl_metric(_cls._correct)


@functools.cache
def brier_score() -> StreamingMetric:
    """Streaming Brier score; ``update(state, probs [B, C], labels [B])``."""
    return _per_sample_pl_metric(_cls._brier_per_sample)


@functools.cache
def nll() -> StreamingMetric:
    """Streaming NLL; ``update(state, probs [B, C], labels [B])``."""
    return _per_sample_pl_metric(_cls._nll_per_sample)


@functools.cache
def entropy() -> StreamingMetric:
    """Streaming mean entropy; ``update(state, probs [B, C])``."""
    return _sum_metric(_cls.entropy_per_sample, lambda p: (_check_p(p, 2),))


@functools.cache
def ensemble_entropy() -> StreamingMetric:
    """Streaming mean member entropy; ``update(state, member_probs [M, B, C])``."""
    return _sum_metric(lambda p: jnp.mean(_cls.entropy_per_sample(p), axis=0), lambda p: (_check_p(p, 3),))


@functools.cache
def disagreement() -> StreamingMetric:
    """Streaming disagreement; ``update(state, member_probs [M, B, C])``."""
    return _sum_metric(_ens.disagreement_per_sample, lambda p: (_check_p(p, 3),))


@functools.cache
def mutual_information() -> StreamingMetric:
    """Streaming MI (sum clamped at compute like TU); ``update(state, member_probs [M, B, C])``."""
    return _sum_metric(
        _ens.mutual_information_per_sample,
        lambda p: (_check_p(p, 3),),
        compute=lambda s: jnp.maximum(s.total, 0.0) / s.count.astype(F32),
    )


# ---------------------------------------------------------------------------- binned
def _binned_init() -> BinnedState:
    n = _cal.NUM_BINS + 1
    return BinnedState(jnp.zeros((n,), F32), jnp.zeros((n,), F32), jnp.zeros((n,), jnp.int32))


@jax.jit
def _binned_batch(probs, labels, mask):
    return _cal._binned_sums(*_cal.top_label(probs, labels), mask)


def _binned_update(state: BinnedState, probs, labels, mask=None) -> BinnedState:
    probs, labels = _check_pl(probs, labels)
    c, a, n = _binned_batch(probs, labels, _check_mask(mask, probs.shape[0]))
    return BinnedState(state.conf_sum + c, state.acc_sum + a, state.count + n)


def _binned_merge(a: BinnedState, b: BinnedState) -> BinnedState:
    return BinnedState(a.conf_sum + b.conf_sum, a.acc_sum + b.acc_sum, a.count + b.count)


@functools.cache
def ece() -> StreamingMetric:
    """Streaming ECE (16-slot binned sums); ``update(state, probs [B, C], labels [B])``."""
    return StreamingMetric(
        _binned_init, _binned_update, _binned_merge, lambda s: _cal._ece_from_sums(*s)
    )


@functools.cache
def mce() -> StreamingMetric:
    """Streaming MCE (16-slot binned sums); ``update(state, probs [B, C], labels [B])``."""
    return StreamingMetric(
        _binned_init, _binned_update, _binned_merge, lambda s: _cal._mce_from_sums(*s)
    )


@functools.cache
def reliability() -> StreamingMetric:
    """Streaming :func:`jaxuq.metrics.reliability_diagram_data`."""

    def compute(s: BinnedState):
        conf, acc, _ = _cal._bin_means(*s)
        return _cal.ReliabilityData(
            np.asarray(conf), np.asarray(acc), np.asarray(s.count, np.int64), _cal.ECE_EDGES.copy()
        )

    return StreamingMetric(_binned_init, _binned_update, _binned_merge, compute)


# ---------------------------------------------------------------------------- list type
def _list_init(k: int):
    return lambda: ListState(tuple(jnp.zeros((0,), F32) for _ in range(k)))


def _list_merge(a: ListState, b: ListState) -> ListState:
    return ListState(tuple(jnp.concatenate([x, y]) for x, y in zip(a.arrays, b.arrays)))


@jax.jit
def _conf_acc(probs, labels):
    return _cal.top_label(probs, labels)


def _keep_rows(arrays: tuple, mask) -> ListState:
    """The rows of ``arrays`` where the concrete ``mask`` is True (all rows without a mask)."""
    if mask is None:
        return ListState(arrays)
    mask = _check_mask(mask, arrays[0].shape[0])
    if isinstance(mask, jax.core.Tracer):
        raise ValueError("a list state keeps a data-dependent number of rows: its `mask` must be "
                         "concrete (update outside jit, or return the per-sample arrays from jit and "
                         "drop the padded rows on host)")
    return ListState(tuple(a[mask] for a in arrays))


def _conf_acc_update(state: ListState, probs, labels, mask=None) -> ListState:
    probs, labels = _check_pl(probs, labels)
    return _list_merge(state, _keep_rows(_conf_acc(probs, labels), mask))


def _score_update(state: ListState, scores, is_ood, mask=None) -> ListState:
    scores, is_ood = jnp.asarray(scores), jnp.asarray(is_ood)
    if scores.ndim != 1 or is_ood.shape != scores.shape:
        raise ValueError(
            f"`scores` and `is_ood` must be 1-D of the same shape, got {scores.shape} and {is_ood.shape}"
        )
    return _list_merge(state, _keep_rows((scores.astype(F32), is_ood.astype(F32)), mask))


def _conf_acc_metric(fn: Callable) -> StreamingMetric:
    fn = jax.jit(fn)
    return StreamingMetric(_list_init(2), _conf_acc_update, _list_merge, lambda s: fn(*s.arrays))


@functools.cache
def adaptive_ece() -> StreamingMetric:
    """Streaming aECE (keeps all confidences); ``update(state, probs [B, C], labels [B])``."""
    return _conf_acc_metric(lambda c, a: _cal._aece_from_conf_acc(c, a))


@functools.cache
def smooth_ece() -> StreamingMetric:
    """Streaming SmECE (keeps all confidences; host float64 compute, not jittable)."""
    return StreamingMetric(
        _list_init(2),
        _conf_acc_update,
        _list_merge,
        lambda s: _cal._smece_conf_acc(np.asarray(s.arrays[0]), np.asarray(s.arrays[1]))[0],
    )


@functools.cache
def aurc() -> StreamingMetric:
    """Streaming AURC; ``update(state, probs [B, C], labels [B])``."""
    return _conf_acc_metric(lambda c, a: _sel.selective_from_scores(c, 1.0 - a)["AURC"])


@functools.cache
def augrc() -> StreamingMetric:
    """Streaming AUGRC; ``update(state, probs [B, C], labels [B])``."""
    return _conf_acc_metric(lambda c, a: _sel.selective_from_scores(c, 1.0 - a)["AUGRC"])


@functools.cache
def cov_at_risk(risk: float = 0.05) -> StreamingMetric:
    """Streaming coverage at risk; ``update(state, probs [B, C], labels [B])``; ``risk`` in [0, 1]."""
    risk = _validate.check_fraction(risk, "risk")
    return _conf_acc_metric(
        lambda c, a: _sel.selective_from_scores(c, 1.0 - a, risk=float(risk))["Cov_5Risk"]
    )


@functools.cache
def risk_at_cov(cov: float = 0.8) -> StreamingMetric:
    """Streaming risk at coverage; ``update(state, probs [B, C], labels [B])``; ``cov`` in (0, 1]."""
    cov = _validate.check_fraction(cov, "cov", open_left=True)
    return _conf_acc_metric(
        lambda c, a: _sel.selective_from_scores(c, 1.0 - a, cov=float(cov))["Risk_80Cov"]
    )


def _score_metric(fn: Callable) -> StreamingMetric:
    fn = jax.jit(fn)
    return StreamingMetric(
        _list_init(2),
        _score_update,
        _list_merge,
        lambda s: fn(s.arrays[0], s.arrays[1].astype(jnp.int32)),
    )


@functools.cache
def auroc() -> StreamingMetric:
    """Streaming AUROC (raw scores); ``update(state, scores [B], is_ood [B])``."""
    return _score_metric(lambda s, y: _ood._auroc_from_points(_ood.roc_points(s, y)))


@functools.cache
def aupr() -> StreamingMetric:
    """Streaming AUPR; ``update(state, scores [B], is_ood [B])``."""
    return _score_metric(lambda s, y: _ood._aupr_from_points(_ood.roc_points(s, y)))


@functools.cache
def fpr_at_tpr(tpr: float = 0.95) -> StreamingMetric:
    """Streaming FPR@TPR (FPR95 by default); ``update(state, scores [B], is_ood [B])``."""
    return _score_metric(lambda s, y: _ood._fpr_at_tpr_from_points(_ood.roc_points(s, y), float(tpr)))


@functools.cache
def auc(max_fpr: float = 1.0) -> StreamingMetric:
    """Streaming (partial, McClish-standardised) AUC; ``update(state, scores [B], is_ood [B])``."""
    return _score_metric(
        lambda s, y: _ood._partial_auc_from_points(_ood.roc_points(s, y), float(max_fpr))
    )


@functools.cache
def tpr_at_fpr(max_fpr: float) -> StreamingMetric:
    """Streaming TPR@FPR; ``update(state, scores [B], is_ood [B])``."""
    return _score_metric(
        lambda s, y: _ood._tpr_at_fpr_from_points(_ood.roc_points(s, y), float(max_fpr))
    )


# ---------------------------------------------------------------------------- regression
class CountState(NamedTuple):
    covered: jax.Array  # int32 [K]: target elements inside each level's central interval
    total: jax.Array  # int32 scalar


def _row_mask(mask, shape):
    """``mask [B]`` broadcast over the trailing axes of ``shape`` (all True without a mask)."""
    if mask is None:
        return jnp.ones(shape, bool)
    return jnp.broadcast_to(jnp.reshape(mask, mask.shape + (1,) * (len(shape) - 1)), shape)


def _elementwise_metric(err: Callable, compute=_mean_compute) -> StreamingMetric:
    """Sum over the target elements of ``err(preds, targets)``; count = elements (torchmetrics' n_obs)."""

    @jax.jit
    def batch_sum(p, t, mask):
        keep = _row_mask(mask, t.shape)
        return jnp.sum(jnp.where(keep, err(p, t), 0.0)), jnp.sum(keep).astype(jnp.int32)

    def update(state: SumState, preds, targets, mask=None) -> SumState:
        p, t = _reg._pair(preds, targets)
        total, count = batch_sum(p, t, _check_mask(mask, t.shape[0]))
        return SumState(state.total + total, state.count + count)

    return StreamingMetric(_sum_init, update, _sum_merge, compute)


@functools.cache
def mae() -> StreamingMetric:
    """Streaming MAE; ``update(state, preds [B, ...], targets [B, ...])``."""
    return _elementwise_metric(lambda p, t: jnp.abs(p - t))


@functools.cache
def mse() -> StreamingMetric:
    """Streaming MSE; ``update(state, preds [B, ...], targets [B, ...])``."""
    return _elementwise_metric(lambda p, t: (p - t) * (p - t))


@functools.cache
def rmse() -> StreamingMetric:
    """Streaming RMSE (the state of :func:`mse`)."""
    return _elementwise_metric(lambda p, t: (p - t) * (p - t), lambda s: jnp.sqrt(_mean_compute(s)))


def _dist_args(params, targets, mixture: bool):
    y = jnp.asarray(targets, F32)
    lead = (1,) if mixture else ()
    for k, v in params.items():
        if jnp.ndim(v) != y.ndim + mixture or jnp.shape(v)[len(lead):] != y.shape:
            want = ("[M, " if mixture else "[") + ", ".join(map(str, y.shape)) + "]"
            raise ValueError(f"`params[{k!r}]` has shape {jnp.shape(v)}, expected {want} for targets "
                             f"{y.shape}")
    return {k: jnp.asarray(v, F32) for k, v in params.items()}, y


@functools.cache
def distribution_nll(family: str, mixture: bool = False) -> StreamingMetric:
    """Streaming TU ``DistributionNLL``; ``update(state, params {name: [B, D]} ([M, B, D] for a mixture),
    targets [B, D])``: the NaN-skipping sum of the samples' joint NLL over the number of target elements."""

    @jax.jit
    def batch_sum(params, y, mask):
        nll = _reg.nll_per_sample(family, params, y, mixture)
        keep = _row_mask(mask, nll.shape) & ~jnp.isnan(nll)
        return jnp.sum(jnp.where(keep, nll, 0.0)), jnp.sum(_row_mask(mask, y.shape)).astype(jnp.int32)

    def update(state: SumState, params, targets, mask=None) -> SumState:
        params, y = _dist_args(params, targets, mixture)
        total, count = batch_sum(params, y, _check_mask(mask, y.shape[0]))
        return SumState(state.total + total, state.count + count)

    return StreamingMetric(_sum_init, update, _sum_merge, _mean_compute)


@functools.cache
def quantile_calibration_error(family: str, num_bins: int = 15, norm: str = "l1",
                               mixture: bool = False) -> StreamingMetric:
    """Streaming TU ``QuantileCalibrationError``: exact per-level counts; ``update(state, params, targets)``
    as :func:`distribution_nll`."""
    _reg.qce_levels(num_bins)
    batch = jax.jit(lambda p, y, mask: _reg.qce_counts(family, p, y, num_bins, mixture, mask))

    def init() -> CountState:
        return CountState(jnp.zeros((num_bins,), jnp.int32), jnp.zeros((), jnp.int32))

    def update(state: CountState, params, targets, mask=None) -> CountState:
        params, y = _dist_args(params, targets, mixture)
        covered, total = batch(params, y, _check_mask(mask, y.shape[0]))
        return CountState(state.covered + covered, state.total + total)

    def merge(a: CountState, b: CountState) -> CountState:
        return CountState(a.covered + b.covered, a.total + b.total)

    return StreamingMetric(init, update, merge, lambda s: _reg.qce_from_counts(family, *s, num_bins, norm))
