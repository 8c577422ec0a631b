"""Histogram binning with torch-uncertainty 0.13.0's semantics, and the probability-space plumbing
shared by the non-parametric scalers (histogram binning, isotonic regression, BBQ).

Each of these scalers works on probabilities, one-vs-rest per class, and hands back pseudo-logits,
exactly as TU's ``HistogramBinningScaler`` / ``IsotonicRegressionScaler`` / ``BBQScaler``:

* logits ``[N, C]`` -> ``softmax``; binary logits ``[N]`` or ``[N, 1]`` -> ``sigmoid`` (one "class");
* the fitted map calibrates each class's probability; multi-class rows are renormalised to sum to 1;
* the result is clamped to ``[eps, 1 - eps]`` and returned as ``log p`` (multi-class) or
  ``logit(p)`` (binary), so ``softmax`` / ``sigmoid`` of the output are the calibrated probabilities.

Every scaler is four pure functions: ``*_fit(logits, labels)`` / ``*_apply(params, logits)`` (TU's
fit / forward) and the probability-space core ``*_fit_probs(probs, labels)`` /
``*_apply_probs(params, probs)`` (calibrated probabilities), which also calibrates an ensemble's
averaged probabilities, for which there are no logits. Binary parameters have no class axis.

Histogram binning (Zadrozny & Elkan 2001): ``num_bins`` equal-width bins with TU's edges
(``torch.linspace(0, 1, num_bins + 1)`` in float32, bit for bit:
:func:`jaxuq.metrics.calibration.torch_linspace`) and ``torch.bucketize`` (``right=False``: bin ``k``
is ``(e_k, e_{k+1}]``, 0 and values below ``e_1`` in bin 0); each bin's value is the mean
one-vs-rest label of its calibration samples, or the bin centre when it is empty. Row sums use
torch's (histogram binning, BBQ) or numpy's (isotonic) float32 summation order, as TU does, so that
given TU's probabilities every output is bit-identical (:mod:`jaxuq.calibration.reductions`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxuq import _validate
from jaxuq._validate import check_int, check_real, finite_logits
from jaxuq.calibration.reductions import torch_sum
from jaxuq.metrics.calibration import torch_linspace
from jaxuq.metrics.classification import binary_probs

__all__ = [
    "histogram_binning_fit",
    "histogram_binning_apply",
    "histogram_binning_fit_probs",
    "histogram_binning_apply_probs",
    "logits_to_probs",
    "probs_to_logits",
    "through_probs",
]

F32 = jnp.float32


# ----------------------------------------------------------------------------- shared plumbing
def logits_to_probs(logits, *, num_classes: int | None = None) -> jax.Array:
    """TU's ``_determine_dimensionality``: ``[N, C]`` -> softmax ``[N, C]``; binary ``[N]`` / ``[N, 1]``
    -> sigmoid ``[N]``. Refuses NaN/inf (when concrete) and, given ``num_classes`` (1 = binary), another
    class count."""
    z = finite_logits(logits, ndims=(1, 2))
    binary = z.ndim == 1 or z.shape[1] == 1
    if num_classes is not None and (1 if binary else z.shape[1]) != num_classes:
        got = "binary logits" if binary else f"{z.shape[1]} classes"
        raise ValueError(f"`logits` (shape {z.shape}) have {got}, but the parameters were fitted for "
                         f"{'a binary task' if num_classes == 1 else f'{num_classes} classes'}")
    return jax.nn.sigmoid(z.reshape(-1)) if binary else jax.nn.softmax(z, axis=-1)


def through_probs(apply_probs, params: dict, logits, num_classes: int, eps: float) -> jax.Array:
    """``apply_probs(params, probs)`` between :func:`logits_to_probs` and :func:`probs_to_logits`; a
    binary output keeps the logits' shape (``[N]`` or ``[N, 1]``), as TU's ``view_as(logits)``."""
    eps = check_eps(eps)
    shape = jnp.shape(logits)
    out = probs_to_logits(apply_probs(params, logits_to_probs(logits, num_classes=num_classes)), eps)
    return out.reshape(shape) if num_classes == 1 else out


def probs_to_logits(probs: jax.Array, eps: float) -> jax.Array:
    """TU's way back: clamp to ``[eps, 1 - eps]``; ``log p`` for ``[N, C]``, ``torch.logit(p, eps)``
    = ``log(p / (1 - p))`` for binary ``[N]``."""
    p = jnp.clip(probs, eps, 1 - eps)
    if p.ndim == 1:
        return jnp.log(p / (1 - p))
    return jnp.log(p)


def check_fit_probs(probs, labels) -> tuple[jax.Array, jax.Array, int]:
    """Validate calibration probabilities and labels: ``[N, C]`` rows on the simplex with labels in
    ``[0, C)``, or binary ``[N]`` positive-class probabilities with 0/1 labels.

    Returns float32 probs, int32 labels and the number of calibrated "classes" (1 = binary).
    """
    arr = jnp.asarray(probs)
    pending: _validate.Pending = []
    if arr.ndim == 1:
        p = binary_probs(arr, "probs", (1,), pending)
        y = _validate.check_labels(labels, p.shape[0], 2, "labels", pending)
        _validate.resolve(pending)
        return p.astype(F32), y, 1
    p = _validate.check_probs(arr, "probs", (2,), pending)
    y = _validate.check_labels(labels, p.shape[0], p.shape[1], "labels", pending)
    _validate.resolve(pending)
    return p.astype(F32), y, p.shape[1]


def one_vs_rest(probs: jax.Array, labels: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Per-"class" columns ``[N, K]`` of probabilities and float32 0/1 targets (binary: K = 1)."""
    if k == 1:
        return probs[:, None], labels.astype(F32)[:, None]
    return probs, jax.nn.one_hot(labels, k, dtype=F32)


def class_count(params_array: jax.Array, per_class_ndim: int) -> int:
    """1 (binary) when the parameters have no class axis, else the class axis' length."""
    return 1 if params_array.ndim == per_class_ndim else params_array.shape[0]


def renormalise(calib: jax.Array, tiny: float | None, total_of) -> jax.Array:
    """Multi-class rows divided by their sum (``+ tiny`` as TU where it adds 1e-12); binary unchanged.
    ``total_of``: the row-sum function, :func:`jaxuq.calibration.reductions.torch_sum` or ``numpy_sum``
    (TU's order, so the result is bit-exact)."""
    if calib.ndim == 1:
        return calib
    total = total_of(calib)[..., None]
    total = total + F32(tiny) if tiny is not None else total
    # XLA rewrites x / broadcast(t) as x * (1 / t) (one more rounding); the barrier keeps IEEE division
    return calib / jax.lax.optimization_barrier(jnp.broadcast_to(total, calib.shape))


def check_eps(eps) -> float:
    return check_real(eps, "eps", low=0.0, low_open=True, high=0.5)


# ----------------------------------------------------------------------------- histogram binning
@functools.partial(jax.jit, static_argnames=("num_bins",))
def _hist_fit(cols: jax.Array, targets: jax.Array, num_bins: int):
    edges = jnp.asarray(torch_linspace(num_bins + 1))
    centers = (edges[:-1] + edges[1:]) / 2
    idx = jnp.searchsorted(edges[1:-1], cols, side="left")  # torch.bucketize(right=False)

    def per_class(i, t):
        count = jax.ops.segment_sum(jnp.ones_like(t), i, num_segments=num_bins)
        pos = jax.ops.segment_sum(t, i, num_segments=num_bins)
        return jnp.where(count > 0, pos / jnp.where(count > 0, count, 1), centers)

    return edges, jax.vmap(per_class, in_axes=(1, 1))(idx, targets)  # [K, B]


def histogram_binning_fit_probs(probs, labels, *, num_bins: int = 15) -> dict:
    """Fit TU's ``HistogramBinningScaler`` on probabilities.

    Args:
      probs: ``[N, C]`` probabilities, or binary ``[N]`` positive-class probabilities.
      labels: ``[N]`` int class indices (binary: 0/1).
      num_bins: number of equal-width bins (TU's default 15), an int >= 1.
    Returns:
      ``{"bin_edges": [B + 1], "bin_values": [C, B]}`` (binary: ``bin_values`` ``[B]``).
    """
    num_bins = check_int(num_bins, "num_bins", 1)
    p, y, k = check_fit_probs(probs, labels)
    edges, values = _hist_fit(*one_vs_rest(p, y, k), num_bins)
    return {"bin_edges": edges, "bin_values": values[0] if k == 1 else values}


def histogram_binning_apply_probs(params: dict, probs) -> jax.Array:
    """Calibrated probabilities: each class's probability replaced by its bin's value, multi-class rows
    renormalised (``/ (sum + 1e-12)`` as TU). ``[N, C]`` -> ``[N, C]``; binary ``[N]`` -> ``[N]``."""
    edges, values = jnp.asarray(params["bin_edges"]), jnp.asarray(params["bin_values"])
    p = jnp.asarray(probs, F32)
    idx = jnp.searchsorted(edges[1:-1], p, side="left")
    if values.ndim == 1:
        return values[idx]
    return renormalise(jnp.take_along_axis(values.T, idx, axis=0), 1e-12, torch_sum)  # TU: torch


def histogram_binning_fit(logits, labels, *, num_bins: int = 15) -> dict:
    """Fit TU's ``HistogramBinningScaler``: softmax (binary ``[N]``/``[N, 1]``: sigmoid) of ``logits``,
    then :func:`histogram_binning_fit_probs`. ``logits``: ``[N, C]``; ``labels``: ``[N]`` int."""
    num_bins = check_int(num_bins, "num_bins", 1)
    return histogram_binning_fit_probs(logits_to_probs(logits), labels, num_bins=num_bins)


def histogram_binning_apply(params: dict, logits, *, eps: float = 1e-6) -> jax.Array:
    """TU's ``HistogramBinningScaler.forward``: calibrated pseudo-logits ``[N, C]`` (``log p``; binary
    ``[N]``: ``logit p``), probabilities clamped to ``[eps, 1 - eps]``. Jittable."""
    k = class_count(jnp.asarray(params["bin_values"]), 1)
    return through_probs(histogram_binning_apply_probs, params, logits, k, eps)
