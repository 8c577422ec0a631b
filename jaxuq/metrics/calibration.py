"""Calibration metrics: ECE, MCE, adaptive ECE, smooth ECE, reliability-diagram data (TU A.2).

Top-label calibration: ``conf = max_c p_c`` (float32) and ``acc = [argmax p = y]``.

* ``ece`` / ``mce``: torchmetrics ``MulticlassCalibrationError`` with 15 bins. The bin edges are
  torch's ``linspace(0, 1, 16, float32)``, hard-coded bit for bit (they differ from
  ``np.linspace`` in float32 by one ulp at 6 edges). ``idx = searchsorted(edges, conf, 'right') - 1``
  so bins are ``[e_k, e_{k+1})`` and ``conf == 1.0`` falls in a 16th slot of its own.
* ``adaptive_ece``: 15 equal-mass chunks of the sorted confidences (``np.array_split`` sizes);
  NaN when N < 15. Tie-aware (deviation from TU, whose unstable ``torch.sort`` decides): each
  sample counts with the mean accuracy of its group of tied confidences, so a tied group that
  straddles a chunk boundary contributes pro rata to both chunks, whatever the sample order. On
  tie-free input this is TU's value.
* ``smooth_ece``: TU's SmECE (logit Gaussian kernel, automatic bandwidth search). This is a
  float64 numpy port; it is **not jittable** (the bandwidth search and grid sizes are data
  dependent) and runs on host.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq import _validate
from jaxuq._validate import check_int, check_real
from jaxuq.metrics import _ties
from jaxuq.metrics.classification import check_reduction as _cls_check_reduction
from jaxuq.metrics.classification import probs_labels_any
from jaxuq.metrics.classification import reduce as _cls_reduce

__all__ = [
    "ECE_EDGES",
    "ReliabilityData",
    "torch_linspace",
    "ece",
    "classwise_ece",
    "mce",
    "adaptive_ece",
    "smooth_ece",
    "reliability_diagram_data",
    "top_label",
]

F32 = jnp.float32
NUM_BINS = 15

_EDGE_BITS = (
    "00000000 3d888889 3e088889 3e4cccce 3e888889 3eaaaaab 3eccccce 3eeeeef0 "
    "3f088888 3f199999 3f2aaaaa 3f3bbbbc 3f4ccccd 3f5dddde 3f6eeeef 3f800000"
)
#: torch.linspace(0, 1, 16, dtype=float32), bit-exact (numpy float32 array of 16 edges).
ECE_EDGES = np.array([int(b, 16) for b in _EDGE_BITS.split()], dtype=np.uint32).view(np.float32)


def torch_linspace(steps: int, start: float = 0.0, end: float = 1.0) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` in float32, bit for bit (numpy, host).

    torch's CPU kernel computes ``start + step * i`` for ``i < steps // 2`` and
    ``end - step * (steps - 1 - i)`` above, with ``step = (end - start) / (steps - 1)`` in float32
    and the multiply-add fused (one rounding). The fused result is the float64 evaluation rounded
    once to float32 (the float64 product of two float32 values is exact; checked against torch
    2.14 for every ``steps`` up to 5000 on ``[0, 1]``). ``torch_linspace(16)`` is :data:`ECE_EDGES`.
    """
    steps = int(steps)
    if steps < 2:
        return np.full((steps,), start, np.float32)
    s, e = np.float32(start), np.float32(end)
    step = np.float64(np.float32((e - s) / np.float32(steps - 1)))
    i = np.arange(steps, dtype=np.float64)
    lo = step * i + np.float64(s)
    hi = np.float64(e) - step * (steps - 1 - i)
    return np.where(np.arange(steps) < steps // 2, lo, hi).astype(np.float32)


def top_label(probs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(conf, acc)``: float32 max probability and float32 correctness, each ``[N]``. Jittable."""
    probs = probs.astype(F32)
    conf = jnp.max(probs, axis=-1)
    acc = (jnp.argmax(probs, axis=-1) == labels).astype(F32)
    return conf, acc


def _binned_sums(conf: jax.Array, acc: jax.Array, mask: jax.Array | None = None, num_bins: int = NUM_BINS):
    """``num_bins + 1``-slot sums (16 by default): (conf_sum f32, acc_sum f32, count i32), over
    torch's float32 edges ``linspace(0, 1, num_bins + 1)``; the last slot holds ``conf == 1``. Rows
    where ``mask`` is False (padding) fall in no slot."""
    edges = ECE_EDGES if num_bins == NUM_BINS else torch_linspace(num_bins + 1)
    # up to 64 edges one compare per edge (a fused count) beats the binary search's while loop on CPU
    method = "compare_all" if len(edges) <= 64 else "scan"
    idx = jnp.searchsorted(jnp.asarray(edges), conf, side="right", method=method) - 1
    idx = jnp.clip(idx, 0, num_bins)
    n_slots = num_bins + 1
    if mask is not None:  # segment_sum drops ids outside [0, n_slots)
        idx = jnp.where(mask, idx, n_slots)
    conf_sum = jax.ops.segment_sum(conf, idx, num_segments=n_slots)
    acc_sum = jax.ops.segment_sum(acc, idx, num_segments=n_slots)
    count = jax.ops.segment_sum(jnp.ones_like(idx, dtype=jnp.int32), idx, num_segments=n_slots)
    return conf_sum, acc_sum, count


def _bin_means(conf_sum, acc_sum, count):
    cnt = count.astype(F32)
    safe = jnp.where(count > 0, cnt, 1.0)
    conf_bin = jnp.where(count > 0, conf_sum / safe, 0.0)
    acc_bin = jnp.where(count > 0, acc_sum / safe, 0.0)
    prop = cnt / jnp.sum(cnt)
    return conf_bin, acc_bin, prop


def _ece_from_sums(conf_sum, acc_sum, count):
    conf_bin, acc_bin, prop = _bin_means(conf_sum, acc_sum, count)
    return jnp.sum(jnp.abs(acc_bin - conf_bin) * prop)


def _mce_from_sums(conf_sum, acc_sum, count):
    conf_bin, acc_bin, _ = _bin_means(conf_sum, acc_sum, count)
    return jnp.max(jnp.abs(acc_bin - conf_bin))


NORMS = ("l1", "l2", "max")


def _gap_norm(acc_bin, conf_bin, prop, norm: str):
    """torchmetrics' ``_ce_compute`` norms of the per-bin gaps: ``l1`` = sum |gap| prop, ``l2`` =
    sqrt(sum gap^2 prop) (0 when that sum is 0), ``max`` = max |gap|."""
    gap = acc_bin - conf_bin
    if norm == "l1":
        return jnp.sum(jnp.abs(gap) * prop)
    if norm == "max":
        return jnp.max(jnp.abs(gap))
    ce = jnp.sum(jnp.square(gap) * prop)
    return jnp.where(ce > 0, jnp.sqrt(jnp.where(ce > 0, ce, 1.0)), 0.0)


def _ce_from_sums(conf_sum, acc_sum, count, norm: str = "l1"):
    conf_bin, acc_bin, prop = _bin_means(conf_sum, acc_sum, count)
    return _gap_norm(acc_bin, conf_bin, prop, norm)


def _binary_conf_acc(p: jax.Array, labels: jax.Array, how: str):
    """Binary tasks' ``(conf, acc)`` as TU computes them from positive-class probabilities ``p [N]``:
    ``"positive"`` (torchmetrics ``BinaryCalibrationError``: ``conf = p``, ``acc = y``), ``"round"``
    (TU's binary aECE: ``max(p, 1 - p)`` and ``round(p) = y``) or ``"half"`` (TU's SmECE:
    ``p >= 0.5`` decides the predicted class)."""
    p, y = p.astype(F32), labels.astype(F32)
    if how == "positive":
        return p, y
    if how == "round":
        return jnp.maximum(p, 1 - p), (jnp.round(p) == y).astype(F32)
    pred = p >= 0.5
    return jnp.where(pred, p, 1 - p), (pred.astype(F32) == y).astype(F32)


def _conf_acc(probs, labels, binary: bool, how: str):
    return _binary_conf_acc(probs, labels, how) if binary else top_label(probs, labels)


@functools.partial(jax.jit, static_argnames=("binary", "num_bins", "norm"))
def _ece_any_impl(probs, labels, binary, num_bins, norm):
    conf, acc = _conf_acc(probs, labels, binary, "positive")
    return _ce_from_sums(*_binned_sums(conf, acc, num_bins=num_bins), norm)


@functools.partial(jax.jit, static_argnames=("num_bins", "norm", "reduction"))
def _classwise_impl(probs, labels, num_bins, norm, reduction):
    acc = jax.nn.one_hot(labels, probs.shape[-1], dtype=F32)
    one = lambda c, a: _ce_from_sums(*_binned_sums(c, a, num_bins=num_bins), norm)  # noqa: E731
    per_class = jax.vmap(one, in_axes=(1, 1))(probs.astype(F32), acc)
    return jnp.mean(per_class) if reduction == "mean" else _cls_reduce(per_class, reduction)


def _check_bins_norm(num_bins, norm) -> tuple[int, str]:
    num_bins = check_int(num_bins, "num_bins", 1)
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}, got {norm!r}")
    return num_bins, norm


@jax.jit
def _ece_impl(probs, labels):
    return _ece_from_sums(*_binned_sums(*top_label(probs, labels)))


@jax.jit
def _mce_impl(probs, labels):
    return _mce_from_sums(*_binned_sums(*top_label(probs, labels)))


def _chunk_ids(n: int, num_bins: int) -> np.ndarray:
    """Chunk index of each sorted position, with ``np.array_split`` sizes (static)."""
    sizes = [len(c) for c in np.array_split(np.arange(n), num_bins)]
    return np.repeat(np.arange(num_bins), sizes).astype(np.int32)


def _aece_sorted(conf_sorted: jax.Array, acc_sorted: jax.Array, num_bins: int = NUM_BINS, norm: str = "l1"):
    n = conf_sorted.shape[0]
    if n < num_bins:
        return jnp.float32(jnp.nan)
    ids = jnp.asarray(_chunk_ids(n, num_bins))
    csum = jax.ops.segment_sum(conf_sorted, ids, num_segments=num_bins)
    asum = jax.ops.segment_sum(acc_sorted, ids, num_segments=num_bins)
    cnt = jnp.asarray(np.bincount(_chunk_ids(n, num_bins), minlength=num_bins).astype(np.float32))
    if norm == "l1":
        return jnp.sum(jnp.abs(asum / cnt - csum / cnt) * (cnt / n))
    return _gap_norm(asum / cnt, csum / cnt, cnt / n, norm)


def _aece_from_groups(g, which: int, num_bins: int = NUM_BINS):
    """Tie-aware aECE from confidence groups (:func:`jaxuq.metrics._ties.rank_sort`, payload
    ``which`` = accuracy): each sample's accuracy is its tie group's mean, so a tied group
    straddling a chunk boundary splits pro rata."""
    return _aece_sorted(g.scores[::-1], _ties.group_mean(g, which)[::-1], num_bins)


def _aece_from_conf_acc(conf, acc, num_bins: int = NUM_BINS, norm: str = "l1"):
    g = _ties.rank_sort(conf, acc)
    return _aece_sorted(g.scores[::-1], _ties.group_mean(g, 0)[::-1], num_bins, norm)


@functools.partial(jax.jit, static_argnames=("num_bins",))
def _aece_impl(probs, labels, num_bins: int = NUM_BINS):
    return _aece_from_conf_acc(*top_label(probs, labels), num_bins)


@functools.partial(jax.jit, static_argnames=("binary", "num_bins", "norm"))
def _aece_any_impl(probs, labels, binary, num_bins, norm):
    return _aece_from_conf_acc(*_conf_acc(probs, labels, binary, "round"), num_bins, norm)


def ece(probs, labels, *, num_bins: int = NUM_BINS, norm: str = "l1") -> jax.Array:
    """Expected calibration error, 15 equal-width bins + the ``conf == 1`` slot, L1 norm (TU's
    ``CalibrationError``; the options are its ``num_bins`` and ``norm``).

    ``ECE = sum_k |acc_k - conf_k| * count_k / N`` over the 16 slots (see module docstring).

    Args:
      probs: ``[N, C]`` probabilities (top-label calibration), or a binary task's positive-class
        probabilities ``[N]`` (``task="binary"``: confidence ``p``, accuracy ``y``, not top-label).
      labels: ``[N]`` integer labels (binary: 0/1).
      num_bins: equal-width bins (torch's float32 ``linspace`` edges) plus the ``conf == 1`` slot.
      norm: ``"l1"`` (ECE), ``"l2"`` (RMSCE: ``sqrt(sum gap^2 prop)``) or ``"max"`` (MCE).
    Returns:
      float32 scalar in [0, 1].
    """
    num_bins, norm = _check_bins_norm(num_bins, norm)
    if num_bins == NUM_BINS and norm == "l1" and jnp.ndim(probs) == 2:
        return _ece_impl(*_validate.probs_labels(probs, labels))  # today's path, unchanged
    p, y, binary = probs_labels_any(probs, labels)
    return _ece_any_impl(p, y, binary, num_bins, norm)


def classwise_ece(probs, labels, *, num_bins: int = NUM_BINS, norm: str = "l1",
                  reduction: str | None = "mean") -> jax.Array:
    """Classwise ECE (Kull et al. 2019), TU's ``ClasswiseCalibrationError``: for every class ``c`` the
    binary calibration error of ``p_c`` against ``[y = c]`` (torchmetrics ``BinaryCalibrationError``,
    ``num_bins`` equal-width bins + the ``p == 1`` slot, ``norm``), reduced over classes.

    Args:
      probs: ``[N, C]`` probabilities.
      labels: ``[N]`` integer labels.
      num_bins, norm: as :func:`ece` (TU's defaults: 15, ``"l1"``).
      reduction: over classes: ``"mean"`` (default), ``"sum"``, or ``"none"``/None for ``[C]``.
    Returns:
      float32 scalar (``[C]`` for ``reduction="none"``). Jittable.
    """
    num_bins, norm = _check_bins_norm(num_bins, norm)
    reduction = _cls_check_reduction(reduction)
    p, y = _validate.probs_labels(probs, labels)
    return _classwise_impl(p, y, num_bins, norm, reduction)


def mce(probs, labels) -> jax.Array:
    """Maximum calibration error: ``max_k |acc_k - conf_k|`` over the 16 slots (empty slots give 0).

    Args:
      probs: ``[N, C]`` probabilities.
      labels: ``[N]`` integer labels.
    Returns:
      float32 scalar.
    """
    return _mce_impl(*_validate.probs_labels(probs, labels))


def adaptive_ece(probs, labels, num_bins: int = NUM_BINS, *, norm: str = "l1") -> jax.Array:
    """Adaptive (equal-mass) ECE, L1 norm, TU's ``AdaptiveCalibrationError``.

    Confidences are sorted ascending and split like ``np.array_split(., num_bins)``;
    ``aECE = sum_b |mean acc_b - mean conf_b| * len_b / N`` where tied confidences share their
    group's mean accuracy (order-invariant; see module docstring). NaN if ``N < num_bins``.

    Args:
      probs: ``[N, C]`` probabilities, or a binary task's positive-class probabilities ``[N]`` (TU:
        confidence ``max(p, 1 - p)``, correct when ``round(p) = y``).
      labels: ``[N]`` integer labels (binary: 0/1).
      num_bins: number of equal-mass bins (15 in TU's routine).
      norm: ``"l1"``, ``"l2"`` (root of the mass-weighted squared gaps) or ``"max"`` (largest gap).
    Returns:
      float32 scalar.
    """
    num_bins, norm = _check_bins_norm(num_bins, norm)
    if norm == "l1" and jnp.ndim(probs) == 2:
        return _aece_impl(*_validate.probs_labels(probs, labels), num_bins=num_bins)
    p, y, binary = probs_labels_any(probs, labels)
    return _aece_any_impl(p, y, binary, num_bins, norm)


class ReliabilityData(NamedTuple):
    """Per-slot reliability-diagram data. Slot ``k < 15`` is ``[edges[k], edges[k+1])``; slot 15
    holds the samples with ``conf == 1.0`` exactly (TU/torchmetrics' 16th slot).

    Fields (numpy, float32 except counts): ``conf [16]`` mean confidence (0 if empty), ``acc [16]``
    mean accuracy (0 if empty), ``counts [16]`` int64, ``edges [16]`` the float32 bin edges.
    """

    conf: np.ndarray
    acc: np.ndarray
    counts: np.ndarray
    edges: np.ndarray


@jax.jit
def _reliability_impl(probs, labels):
    conf_sum, acc_sum, count = _binned_sums(*top_label(probs, labels))
    conf_bin, acc_bin, _ = _bin_means(conf_sum, acc_sum, count)
    return conf_bin, acc_bin, count


def reliability_diagram_data(probs, labels) -> ReliabilityData:
    """Per-bin mean confidence, accuracy and counts of the 15-bin (+1 slot) ECE binning.

    Args:
      probs: ``[N, C]`` probabilities.
      labels: ``[N]`` integer labels.
    Returns:
      :class:`ReliabilityData` with arrays of length 16.
    """
    conf, acc, count = jax.device_get(_reliability_impl(*_validate.probs_labels(probs, labels)))
    return ReliabilityData(
        np.asarray(conf), np.asarray(acc), np.asarray(count, dtype=np.int64), ECE_EDGES.copy()
    )


# ----------------------------------------------------------------------------------------------
# Smooth ECE (float64 numpy port of TU's SmoothCalibrationError, logit kernel, auto bandwidth).


def _fft_xcorr(values: np.ndarray, ker: np.ndarray, start: int, length: int) -> np.ndarray:
    """``length`` entries from ``start`` of the full cross-correlation of ``values`` with ``ker``
    (torch's ``conv1d``), via FFT, float64: ``padding='same'`` is ``start = (k - 1) // 2``,
    ``padding='valid'`` is ``start = k - 1``."""
    n, k = values.shape[0], ker.shape[0]
    full = n + k - 1
    size = 1 << (full - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(values, size) * np.fft.rfft(ker[::-1], size), size)[:full]
    return out[start : start + length]


def _gauss_apply(f: np.ndarray, y: np.ndarray, eval_at: np.ndarray, sigma: float,
                 reflect: bool = False) -> np.ndarray:
    """TU's ``GaussianKernel.apply`` (``reflect``: ``ReflectedGaussianKernel``, the grid mirrored at 0
    and 1 before a 'valid' convolution): soft-bin ``y`` at ``f`` onto an odd grid, smooth, interpolate."""
    n = max(2000, round(20 / sigma)) // 2
    if n % 2 == 0:
        n += 1
    # soft binning onto an n-point grid
    scaled = f * (n - 1)
    bins = np.clip(scaled.astype(np.int64), 0, n - 2)
    frac = scaled - bins
    values = np.zeros(n)
    np.add.at(values, bins, (1 - frac) * y)
    np.add.at(values, bins + 1, frac * y)
    t = np.linspace(0, 1, n)
    ker = np.exp(-((t - 0.5) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    if reflect:
        flip = values[::-1]
        ext = np.concatenate([flip[:-1], values, flip[1:]])
        smoothed = _fft_xcorr(ext, ker, n - 1 + n // 2, n)
    else:
        smoothed = _fft_xcorr(values, ker, (n - 1) // 2, n)
    # linear interpolation at eval_at
    nb = smoothed.shape[0]
    bucket = 1.0 / (nb - 1)
    inds = np.clip((eval_at * (nb - 1)).astype(np.int64), 0, nb - 2)
    resid = (eval_at - inds * bucket) / bucket
    return smoothed[inds] * (1 - resid) + smoothed[inds + 1] * resid


def _smece_logit_at(conf: np.ndarray, acc: np.ndarray, bw: float, mesh_pts: int = 200) -> float:
    npts = max(int(10 / bw), mesh_pts)
    t = np.linspace(0, 1, npts)
    z = t[1:-1]
    lz = np.log(z / (1 - z))
    fc = np.clip(conf, 1e-3, 1 - 1e-3)
    lf = np.log(fc / (1 - fc))
    lo, hi = min(lf.min(), lz.min()), max(lf.max(), lz.max())
    span = hi - lo if hi > lo else 1e-9
    lf = (lf - lo) / span
    lz = (lz - lo) / span
    sigma = bw * 4 / span
    r = conf - acc
    ys = _gauss_apply(lf, r, lz, sigma)
    dens = _gauss_apply(lf, np.ones_like(r), lz, sigma) + 1e-4
    ys = ys / dens
    dens = dens / (z * (1 - z))
    dens = dens * (len(conf) * npts / (dens.sum() + 1e-9))
    ys = np.concatenate([ys[:1], ys, ys[-1:]])
    dens = np.concatenate([dens[:1], dens, dens[-1:]])
    return _smece_sum(ys, dens)


def _smece_sum(ys: np.ndarray, dens: np.ndarray) -> float:
    valid = dens > 1e-8
    return float(np.sum(np.abs(ys[valid]) * dens[valid]) / (dens.sum() + 1e-8))


def _smece_reflected_at(conf: np.ndarray, acc: np.ndarray, bw: float, mesh_pts: int = 200) -> float:
    """TU's ``'reflected'`` kernel: a Gaussian of width ``bw`` in probability space, mirrored at 0, 1."""
    t = np.linspace(0, 1, max(int(10 / bw), mesh_pts))
    r = conf - acc
    dens = _gauss_apply(conf, np.ones_like(r), t, bw, reflect=True) + 1e-4
    return _smece_sum(_gauss_apply(conf, r, t, bw, reflect=True) / dens, dens)


def _smece_at(conf: np.ndarray, acc: np.ndarray, bw: float, mesh_pts: int = 200, kernel: str = "logit"):
    return (_smece_logit_at if kernel == "logit" else _smece_reflected_at)(conf, acc, bw, mesh_pts)


def _smece_conf_acc(conf: np.ndarray, acc: np.ndarray, eps: float = 1e-3, refine_steps: int = 10,
                    mesh_pts: int = 200, kernel: str = "logit", bandwidth: float | str = "auto"):
    conf = np.asarray(conf, dtype=np.float32).astype(np.float64)
    acc = np.asarray(acc, dtype=np.float64)

    def at(a: float) -> float:
        return _smece_at(conf, acc, a, mesh_pts, kernel)

    def ok(a: float) -> bool:
        return a < eps or a < at(a)

    if bandwidth != "auto":
        bw = float(bandwidth)
    elif ok(1.0):
        bw = 1.0
    else:
        start, end = 1.0, 0.0
        for _ in range(refine_steps):
            mid = (start + end) / 2.0
            if ok(mid):
                end = mid
            else:
                start = mid
        bw = start
    return at(bw), bw


def _check_smece_settings(kernel, bandwidth, eps, mesh_pts, refine_steps) -> None:
    if kernel not in ("logit", "reflected"):
        raise ValueError(f"`kernel` must be 'logit' or 'reflected', got {kernel!r}")
    if isinstance(bandwidth, str):
        if bandwidth != "auto":
            raise ValueError(f"`bandwidth` must be 'auto' or a positive float, got {bandwidth!r}")
    else:
        check_real(bandwidth, "bandwidth", low=0.0, low_open=True)
    check_real(eps, "eps", low=0.0, low_open=True)
    check_int(mesh_pts, "mesh_pts", 2)
    check_int(refine_steps, "refine_steps", 0)


def smooth_ece(probs, labels, *, kernel: str = "logit", bandwidth: float | str = "auto", eps: float = 1e-3,
               mesh_pts: int = 200, refine_steps: int = 10, return_bandwidth: bool = False):
    """Smooth ECE (Blasiok & Nakkiran 2023) exactly as TU 0.13.0's ``SmoothCalibrationError``
    (defaults: logit Gaussian kernel, ``bandwidth='auto'``, eps 1e-3, mesh 200, 10 refine steps).

    Float64 numpy port on host: **not jittable** (data-dependent bandwidth search and grid sizes).
    The confidences are float32 maxima of ``probs``; agrees with TU to ~1e-7.

    Args:
      probs: ``[N, C]`` probabilities (top label), or a binary task's positive-class probabilities
        ``[N]`` (TU: the predicted class is ``p >= 0.5``, confidence ``max(p, 1 - p)``).
      labels: ``[N]`` integer labels (binary: 0/1).
      kernel: ``"logit"`` (Gaussian in log-odds space) or ``"reflected"`` (Gaussian in probability
        space, mirrored at 0 and 1; relplot's default).
      bandwidth: ``"auto"`` (TU's fixed-point bisection) or a positive float.
      eps, mesh_pts, refine_steps: the bisection's tolerance, the base grid size and its steps (TU's).
      return_bandwidth: also return the selected bandwidth.
    Returns:
      Python float (and the bandwidth if asked).
    """
    _check_smece_settings(kernel, bandwidth, eps, mesh_pts, refine_steps)
    p, y, binary = probs_labels_any(probs, labels)
    conf, acc = jax.device_get(jax.jit(_conf_acc, static_argnums=(2, 3))(p, y, binary, "half"))
    value, bw = _smece_conf_acc(conf, acc, eps, refine_steps, mesh_pts, kernel, bandwidth)
    return (value, bw) if return_bandwidth else value
