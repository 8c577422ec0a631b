"""float32 arithmetic in the exact order torch 2.14 (CPU) and numpy 2 use, where TU's non-parametric
scalers depend on it bit for bit: sums along the last axis, ``torch.quantile`` and a fused
multiply-add. The sums work on numpy and JAX arrays alike (``+`` and indexing only; the order is
static, so they jit); ``fma32`` and ``torch_quantile`` are host (numpy) helpers for the fits.
"""

from __future__ import annotations

import numpy as np

__all__ = ["numpy_sum", "torch_sum", "fma32", "torch_quantile"]

F32 = np.float32
_LANES = 8  # torch 2.14's float sum kernel works on 8-float vectors (measured; AVX512 machine too)


def numpy_sum(x):
    """``numpy.sum(x, axis=-1)`` of float32 ``[..., C]`` in numpy's pairwise order: sequential below 8
    terms, 8 interleaved accumulators up to 128, halves (rounded to a multiple of 8) above."""
    n = x.shape[-1]
    if n < 8:
        acc = x[..., 0] * 0
        for i in range(n):
            acc = acc + x[..., i]
        return acc
    if n <= 128:
        r = [x[..., j] for j in range(8)]
        i = 8
        while i < n - n % 8:
            r = [r[j] + x[..., i + j] for j in range(8)]
            i += 8
        acc = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for k in range(i, n):
            acc = acc + x[..., k]
        return acc
    half = n // 2 - (n // 2) % 8
    return numpy_sum(x[..., :half]) + numpy_sum(x[..., half:])


def _multi_row_sum(rows: list):
    """torch's ``multi_row_sum`` (SumKernel.cpp) over a list of equally shaped terms, with its 4-level
    cascade (level step ``2 ** max(4, ceil(log2 n) // 4)``)."""
    n = len(rows)
    power = max(4, (int(np.ceil(np.log2(n))) if n > 1 else 0) // 4)
    step, mask = 1 << power, (1 << power) - 1
    zero = rows[0] * 0
    acc = [zero] * 4
    i = 0
    while i + step <= n:
        for _ in range(step):
            acc[0] = acc[0] + rows[i]
            i += 1
        for j in range(1, 4):
            acc[j], acc[j - 1] = acc[j] + acc[j - 1], zero
            if i & (mask << (j * power)):
                break
    for k in range(i, n):
        acc[0] = acc[0] + rows[k]
    for j in range(1, 4):
        acc[0] = acc[0] + acc[j]
    return acc[0]


def _row_sum(items: list):
    """torch's ``row_sum``: 4 interleaved partial sums (``multi_row_sum`` over groups of 4), the tail
    added to the first, then the other three."""
    m = len(items) // 4
    if m:
        part = [_multi_row_sum(items[k : m * 4 : 4]) for k in range(4)]
    else:
        part = [items[0] * 0] * 4
    for k in range(m * 4, len(items)):
        part[0] = part[0] + items[k]
    for k in range(1, 4):
        part[0] = part[0] + part[k]
    return part[0]


def torch_sum(x):
    """``torch.sum(x, dim=-1)`` of a contiguous float32 ``[..., C]`` on CPU, bit for bit: below 8 terms
    torch's scalar ``row_sum``; above, ``row_sum`` over 8-float vectors, then the tail and the 8 lanes
    added in order. Checked against torch 2.14 up to C = 5000 (longer sums are split across threads)."""
    n = x.shape[-1]
    if n < _LANES:
        return _row_sum([x[..., i] for i in range(n)])
    nv = n // _LANES
    vec = _row_sum([x[..., i * _LANES : (i + 1) * _LANES] for i in range(nv)])
    acc = x[..., 0] * 0
    for k in range(nv * _LANES, n):
        acc = acc + x[..., k]
    for k in range(_LANES):
        acc = acc + vec[..., k]
    return acc


def fma32(a, b, c) -> np.ndarray:
    """Fused multiply-add of float32 arrays with one rounding (``a * b + c`` exact, then to float32)."""
    a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
    p = a * b  # exact: two float32 significands fit in float64's
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)  # TwoSum: s + err == p + c exactly
    r = s.astype(F32)
    lo = np.where(r.astype(np.float64) > s, np.nextafter(r, F32(-np.inf)), r)
    hi = np.nextafter(lo, F32(np.inf))
    tie = (s == (lo.astype(np.float64) + hi.astype(np.float64)) / 2) & (err != 0)  # double rounding
    return np.where(tie, np.where(err > 0, hi, lo), r).astype(F32)


def torch_quantile(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``torch.quantile(x, q)`` (linear) of float32 ``x [N]`` at float32 ``q [Q]``, bit for bit (CPU):
    ranks ``q * (N - 1)`` in float64, weight ``rank - floor`` rounded to float32, then torch's ``lerp``
    with a fused multiply-add (``lo + w d`` for ``w < 0.5``, ``hi - d (1 - w)`` above)."""
    s = np.sort(np.asarray(x, F32))
    ranks = np.asarray(q, F32).astype(np.float64) * (s.shape[0] - 1)
    below, above = np.floor(ranks).astype(np.int64), np.ceil(ranks).astype(np.int64)
    w = (ranks - below).astype(F32)
    lo, hi = s[below], s[above]
    d = (hi - lo).astype(F32)
    return np.where(w < 0.5, fma32(w, d, lo), fma32(-d, (F32(1) - w).astype(F32), hi)).astype(F32)
