"""Classification metrics: accuracy, Brier score, NLL, entropy (TU 0.13.0 definitions, A.1).

All computations are float32 whatever the input dtype. Public functions validate their inputs
(see :mod:`jaxuq._validate`) and call a jitted ``_*_impl`` core that can be used inside
other jitted code.

TU's options: ``reduction`` (``"mean"`` default, ``"sum"``, ``"none"``/``None`` = per sample ``[N]``)
on Brier, NLL and entropy; Brier's ``top_class`` and ensemble input (members on axis 0 here,
``[M, N, C]``: per-member scores averaged over members, TU's ``(B, M, C)``); binary tasks, where
``probs`` are positive-class probabilities ``[N]`` (Brier also ``[N, 1]`` / ``[M, N, 1]``, TU's
``num_classes=1``) and labels are 0/1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.scipy.special import entr

from jaxuq import _validate

__all__ = ["accuracy", "brier_score", "nll", "entropy", "entropy_per_sample", "REDUCTIONS", "reduce"]

F32 = jnp.float32
#: TU's ``reduction`` values: over samples ``mean`` (the default) or ``sum``; ``none``/None: per sample.
REDUCTIONS = ("mean", "sum", "none", None)


def reduce(per_sample: jax.Array, reduction: str | None) -> jax.Array:
    """TU's reduction of a per-sample score ``[N]``: ``sum / N``, ``sum``, or the scores. Jittable
    (``reduction`` static)."""
    if reduction == "mean":
        return jnp.sum(per_sample) / per_sample.shape[0]
    if reduction == "sum":
        return jnp.sum(per_sample)
    return per_sample


def check_reduction(reduction) -> str | None:
    """``reduction`` if it is one of :data:`REDUCTIONS`, else ``ValueError`` naming the argument."""
    if not isinstance(reduction, str | type(None)) or reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def binary_probs(probs, name: str = "probs", ndims: tuple[int, ...] = (1,), pending=None) -> jax.Array:
    """Validate positive-class probabilities (binary task): floating, finite, in [0, 1] (no row sums)."""
    arr = _validate.as_array(probs, name, ndims)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(f"`{name}` must be floating point probabilities, got dtype {arr.dtype}")
    if _validate.is_traced(arr):
        return arr

    def report(stats):
        finite, lo, hi, _ = stats
        if finite < 1:
            raise ValueError(f"`{name}` (shape {arr.shape}) contains NaN or inf")
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"`{name}` (shape {arr.shape}) must lie in [0, 1] (got min {lo:.4g}, max "
                             f"{hi:.4g}); pass probabilities, not logits")

    _validate._defer(pending, _validate._float_stats(arr, False), report)
    return arr


def probs_labels_any(probs, labels, *, probs_ndims=(2,), binary_ndims=(1,)):
    """Validate ``probs`` (``[..., N, C]`` of a rank in ``probs_ndims``, or binary positive-class
    ``[..., N]`` / ``[..., N, 1]`` of a rank in ``binary_ndims``) with ``labels [N]`` in one transfer.
    Returns ``(probs, labels, binary)``; binary probabilities keep their shape."""
    arr = probs if isinstance(probs, jax.Array) else jnp.asarray(probs)
    binary = arr.ndim in binary_ndims and (arr.ndim not in probs_ndims or arr.shape[-1] == 1)
    pending: _validate.Pending = []
    if binary:
        arr = binary_probs(arr, "probs", binary_ndims, pending)
        n = arr.shape[-2] if arr.ndim in probs_ndims else arr.shape[-1]
        labels = _validate.check_labels(labels, n, 2, "labels", pending)
    else:
        arr = _validate.check_probs(arr, "probs", probs_ndims, pending)
        labels = _validate.check_labels(labels, arr.shape[-2], arr.shape[-1], "labels", pending)
    _validate.resolve(pending)
    return arr, labels, binary


def _correct(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """[N] float32 1.0 where argmax(probs) == label (argmax ties go to the first index)."""
    return (jnp.argmax(probs, axis=-1) == labels).astype(F32)


def _brier_per_sample(probs: jax.Array, labels: jax.Array) -> jax.Array:
    probs = probs.astype(F32)
    onehot = jax.nn.one_hot(labels, probs.shape[-1], dtype=F32)
    return jnp.sum(jnp.square(probs - onehot), axis=-1)


def _brier_top_class(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """``(max_c p - [argmax p = y])^2`` per sample (TU ``top_class=True``)."""
    probs = probs.astype(F32)
    return jnp.square(jnp.max(probs, axis=-1) - (jnp.argmax(probs, axis=-1) == labels).astype(F32))


def _two_class(p: jax.Array) -> jax.Array:
    """Binary positive-class probabilities ``[...]`` -> ``[..., 2]`` = ``[1 - p, p]`` (TU's stack)."""
    p = p.astype(F32)
    return jnp.stack([1 - p, p], axis=-1)


def _brier_any(probs: jax.Array, labels: jax.Array, binary: bool, top_class: bool) -> jax.Array:
    """Per-sample Brier ``[N]`` of ``[N, C]`` / ``[M, N, C]`` (member mean) or binary ``[N]`` /
    ``[N, 1]`` / ``[M, N, 1]`` probabilities (TU ``BrierScore``, ``num_classes=1`` for binary)."""
    if binary:
        p = probs[..., 0] if probs.ndim >= 2 and probs.shape[-1] == 1 else probs
        if top_class:
            per = _brier_top_class(_two_class(p), labels)
        else:
            per = jnp.square(p.astype(F32) - labels.astype(F32))
    else:
        per = (_brier_top_class if top_class else _brier_per_sample)(probs, labels)
    return jnp.mean(per, axis=0) if per.ndim == 2 else per


def _nll_per_sample(probs: jax.Array, labels: jax.Array) -> jax.Array:
    p_y = jnp.take_along_axis(probs.astype(F32), labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return -jnp.log(p_y)


def entropy_per_sample(probs: jax.Array) -> jax.Array:
    """Shannon entropy (nats) of each row: ``[..., C] -> [...]``, with ``entr(0) = 0``. Jittable."""
    return jnp.sum(entr(probs.astype(F32)), axis=-1)


@jax.jit
def _accuracy_impl(probs, labels):
    return jnp.mean(_correct(probs, labels))


@jax.jit
def _brier_impl(probs, labels):
    return jnp.sum(_brier_per_sample(probs, labels)) / probs.shape[0]


@jax.jit
def _nll_impl(probs, labels):
    return jnp.sum(_nll_per_sample(probs, labels)) / probs.shape[0]


@jax.jit
def _entropy_impl(probs):
    return jnp.sum(entropy_per_sample(probs)) / probs.shape[0]


def accuracy(probs, labels) -> jax.Array:
    """Top-1 accuracy ``mean[argmax p = y]`` (torchmetrics MulticlassAccuracy, micro).

    Args:
      probs: ``[N, C]`` probabilities (rows sum to 1).
      labels: ``[N]`` integer labels in ``[0, C)``.
    Returns:
      float32 scalar in [0, 1].
    """
    return _accuracy_impl(*_validate.probs_labels(probs, labels))


@functools.partial(jax.jit, static_argnames=("binary", "top_class", "reduction"))
def _brier_any_impl(probs, labels, binary, top_class, reduction):
    return reduce(_brier_any(probs, labels, binary, top_class), reduction)


@functools.partial(jax.jit, static_argnames=("binary", "reduction"))
def _nll_any_impl(probs, labels, binary, reduction):
    return reduce(_nll_per_sample(_two_class(probs) if binary else probs, labels), reduction)


@functools.partial(jax.jit, static_argnames=("reduction",))
def _entropy_any_impl(probs, reduction):
    return reduce(entropy_per_sample(probs), reduction)


def brier_score(probs, labels, *, top_class: bool = False, reduction: str | None = "mean") -> jax.Array:
    """Brier score ``mean_i sum_c (p_ic - onehot_ic)^2``, summed over classes (range [0, 2]); TU's
    ``BrierScore``.

    Args:
      probs: ``[N, C]`` probabilities; an ensemble's ``[M, N, C]`` (each member's score, averaged over
        members); binary positive-class probabilities ``[N]``, ``[N, 1]`` or ``[M, N, 1]`` (score
        ``(p - y)^2``, TU's ``num_classes=1``).
      labels: ``[N]`` integer labels (binary: 0/1).
      top_class: score only the top class, ``(max_c p - [argmax p = y])^2`` (binary: of ``[1 - p, p]``).
      reduction: ``"mean"`` (default), ``"sum"``, or ``"none"``/None for the per-sample scores ``[N]``.
    Returns:
      float32 scalar (``[N]`` for ``reduction="none"``).
    """
    reduction = check_reduction(reduction)
    if not isinstance(top_class, bool):
        raise TypeError(f"`top_class` must be a bool, got {type(top_class).__name__}")
    if top_class is False and reduction == "mean" and jnp.ndim(probs) == 2 and jnp.shape(probs)[-1] > 1:
        return _brier_impl(*_validate.probs_labels(probs, labels))  # today's path, unchanged
    p, y, binary = probs_labels_any(probs, labels, probs_ndims=(2, 3), binary_ndims=(1, 2, 3))
    return _brier_any_impl(p, y, binary, top_class, reduction)


def nll(probs, labels, *, reduction: str | None = "mean") -> jax.Array:
    """Negative log-likelihood ``mean_i -log p_{i, y_i}`` of float32 probabilities, no clamping.

    Like TU's ``CategoricalNLL`` the log is taken of the float32 probabilities, so the result is
    ``+inf`` if any ``p_{i, y_i} == 0``.

    Args:
      probs: ``[N, C]`` probabilities, or binary positive-class probabilities ``[N]`` (TU stacks
        ``[1 - p, p]``).
      labels: ``[N]`` integer labels (binary: 0/1).
      reduction: ``"mean"`` (default), ``"sum"``, or ``"none"``/None for the per-sample values ``[N]``.
    Returns:
      float32 scalar (``[N]`` for ``reduction="none"``).
    """
    reduction = check_reduction(reduction)
    if reduction == "mean" and jnp.ndim(probs) == 2:
        return _nll_impl(*_validate.probs_labels(probs, labels))
    p, y, binary = probs_labels_any(probs, labels)
    return _nll_any_impl(p, y, binary, reduction)


def entropy(probs, *, reduction: str | None = "mean") -> jax.Array:
    """Mean Shannon entropy (nats) of the rows of ``probs`` (``test/cls/Entropy``, ``ood/Entropy``).

    For an ensemble pass the member-averaged probabilities (total entropy); for the mean *member*
    entropy use :func:`jaxuq.metrics.ensemble_entropy`.

    Args:
      probs: ``[N, C]`` probabilities.
      reduction: ``"mean"`` (default), ``"sum"``, or ``"none"``/None for the per-sample entropies ``[N]``.
    Returns:
      float32 scalar (``[N]`` for ``reduction="none"``).
    """
    reduction = check_reduction(reduction)
    p = _validate.check_probs(probs, "probs", (2,))
    return _entropy_impl(p) if reduction == "mean" else _entropy_any_impl(p, reduction)
