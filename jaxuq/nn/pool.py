"""Pooling with torch semantics on NHWC arrays, and a convolution fused with the max pool after it."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax
from jax.custom_batching import custom_vmap

from jaxuq.nn.conv import (
    Conv,
    _like,
    _map_members,
    _members_input_gradient,
    conv_general_dilated,
    rewrites_on_cpu,
)

__all__ = ["ConvMaxPool", "adaptive_avg_pool2d", "conv_max_pool", "max_pool2d"]


def adaptive_avg_pool2d(x, output_size: int | tuple[int, int]):
    """``torch.nn.AdaptiveAvgPool2d`` on ``x: [N, H, W, C]`` -> ``[N, oh, ow, C]``.

    Bin ``i`` spans rows ``[floor(i*H/oh), ceil((i+1)*H/oh))`` (same for columns). Identity when the
    size already matches; a plain mean when the output is 1x1.
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (oh, ow):
        return x
    if (oh, ow) == (1, 1):
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    rows = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        cols = []
        for j in range(ow):
            c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            cols.append(jnp.mean(x[:, r0:r1, c0:c1, :], axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


def max_pool2d(x, kernel_size: int, stride: int | None = None, padding: int = 0):
    """``torch.nn.functional.max_pool2d`` (floor mode) on NHWC; padding uses -inf.

    Non-overlapping windows without padding (``stride == kernel_size``, LeNet's and VGG's 2x2) are a
    chain of ``where((v > best) | isnan(v), v, best)`` over the ``k*k`` window positions in torch's
    row-major order, and each output's gradient goes to the element torch's kernel picks (the first
    maximum; a NaN wins). On CPU (:func:`jaxuq.nn.conv.rewrites_on_cpu`) the forward also records the
    picked position (int8) and a custom VJP sends the gradient there in one fused select (profiles of
    LeNet training steps, batch 128: the kernels of the pools and ReLUs went from 14.9 to 8.2 ms per
    step for 8 members under ``vmap``, from 1.2 to 1.1 ms for one model); the ``"lax"``
    lowering and other backends differentiate the select chain (the same gradient; forward mode works).
    Both are several times faster on XLA:CPU than ``reduce_window`` and its ``select_and_scatter``
    gradient. Other windows use ``flax.linen.max_pool``.
    """
    stride = kernel_size if stride is None else stride
    if stride == kernel_size and padding == 0:
        return _max_pool_tiled(x, kernel_size)
    pad = ((padding, padding), (padding, padding))
    return nn.max_pool(x, (kernel_size, kernel_size), strides=(stride, stride), padding=pad)


def _max_pool_tiled(x, k: int):
    if rewrites_on_cpu():
        return _max_pool_tiled_vjp(x, k, x.shape[1:3])
    return _tiled_max(x, k)[0]


def _tiled_max(x, k: int):
    """``(max, index)`` of every non-overlapping ``k x k`` window: torch's pick (first maximum in row-major
    window order; a NaN wins) as the index of the window position (int8; int32 from 128 positions)."""
    n, h, w, c = x.shape
    ho, wo = h // k, w // k
    win = x[:, : ho * k, : wo * k].reshape(n, ho, k, wo, k, c)
    best = win[:, :, 0, :, 0]
    index = jnp.zeros(best.shape, jnp.int8 if k * k < 128 else jnp.int32)
    for t, (i, j) in enumerate(itertools.product(range(k), range(k))):
        if t:
            v = win[:, :, i, :, j]
            take = (v > best) | jnp.isnan(v)
            best = jnp.where(take, v, best)
            index = jnp.where(take, jnp.asarray(t, index.dtype), index)
    return best, index


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_tiled_vjp(x, k: int, hw: tuple[int, int]):
    return _tiled_max(x, k)[0]


def _max_pool_tiled_fwd(x, k: int, hw: tuple[int, int]):
    best, index = _tiled_max(x, k)
    return best, index


def _max_pool_tiled_bwd(k: int, hw: tuple[int, int], index, g):
    """Each output's gradient to its window's picked element: the sum of the ``k*k`` window positions'
    selects, each padded into place (XLA fuses it into one loop over the input)."""
    n, ho, wo, c = g.shape
    zero = jnp.zeros((), g.dtype)
    dx = None
    for t, (i, j) in enumerate(itertools.product(range(k), range(k))):
        tap = jnp.where(index == t, g, zero)[:, :, None, :, None]
        pads = ((0, 0, 0), (0, 0, 0), (i, k - 1 - i, 0), (0, 0, 0), (j, k - 1 - j, 0), (0, 0, 0))
        tap = lax.pad(tap, zero, pads)
        dx = tap if dx is None else dx + tap
    dx = dx.reshape(n, ho * k, wo * k, c)
    h, w = hw
    return (jnp.pad(dx, ((0, 0), (0, h - ho * k), (0, w - wo * k), (0, 0))),)


_max_pool_tiled_vjp.defvjp(_max_pool_tiled_fwd, _max_pool_tiled_bwd)


# --------------------------------------------------------------------------------------------------------
# A convolution fused with the ReLU and non-overlapping max pool after it (LeNet's conv -> ReLU -> pool 2).
#
# On XLA:CPU the unfused chain costs several slow passes over the convolution's output, the largest tensor
# of a LeNet step (8 deep-ensemble members sharing a batch of 128: 14 MB for conv1): the pool reads the
# members' product ``[M*Co, positions]`` transposed, its gradient re-derives the picked position of every
# window inside the fusion that writes the 14 MB gradient, and that gradient is transposed back for the
# weight gradient's product. Here the forward product is computed "tap-major", one column block per window
# position (``[Co, T, N, Ho, Wo]``, ``T = k*k``), so the pool is a reduction over the ``T`` contiguous
# blocks that also yields the picked positions (int8, stored: XLA does not re-derive a reduction inside its
# consumers). The weight gradient puts each window's gradient at its picked position, window position
# innermost (``[Co, N, Ho, Wo, T]``, a plain broadcast), times patches in the same order. The ReLU commutes
# with the pool (same values; the same gradient, masked where the pooled value is not positive) and is
# applied to the pooled tensor, channels first. Measured: 8 LeNet members' conv1 + ReLU + pool, forward
# and both gradients, 10 steps in ``lax.scan`` on a constant input (patches folded away on both sides):
# 4.6 vs 12 ms per step; the 8-member training step as a whole, 18 % faster with this and
# :func:`jaxuq.nn.conv._members_gradients` (bench/results/ensembles.md).
# --------------------------------------------------------------------------------------------------------


def conv_max_pool(x, kernel, bias, padding, window: int, relu: bool = False, precision=None):
    """``max_pool2d(act(conv(x, kernel) + bias), window)``, ``act`` a ReLU if ``relu`` else the identity: a
    stride-1 convolution (NHWC ``x``, HWIO ``kernel``, explicit ``padding`` ``((lo, hi), (lo, hi))``,
    ``bias [Co]`` or None) and the non-overlapping ``window x window`` max pool of :func:`max_pool2d` (floor
    mode, torch's pick: the first maximum in row-major window order; a NaN wins, the later of two NaNs).

    On CPU (:func:`jaxuq.nn.conv.rewrites_on_cpu`) the tap-major kernel above, with a custom VJP and member
    batching rules (a shared input: one product of its patches with every member's kernel; stacked inputs
    and kernels: ``lax.map`` over members); its input gradient is :mod:`jaxuq.nn.conv`'s. Elsewhere, and
    for grouped convolutions, windows of one position or of 128 and more, the plain composition.
    """
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    pooled = [(x.shape[1 + i] + sum(pads[i]) - kernel.shape[i] + 1) // window for i in range(2)]
    if (rewrites_on_cpu() and x.ndim == 4 and kernel.ndim == 4 and kernel.shape[2] == x.shape[-1]
            and all(lo >= 0 and hi >= 0 for lo, hi in pads) and 1 < window * window < 128
            and min(pooled) > 0):
        b = jnp.zeros(kernel.shape[-1], kernel.dtype) if bias is None else bias
        return _conv_max_pool_cpu(x, kernel, b, pads, int(window), bool(relu), precision)
    y = conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                             precision=precision)
    y = y if bias is None else y + bias
    return max_pool2d(jax.nn.relu(y) if relu else y, window)


def _windows(xp, k: tuple[int, int], window: int, axis: int):
    """``(t, tap, slice)``: the strided slice of the padded input ``xp`` (spatial axes ``axis``,
    ``axis + 1``) that kernel tap ``tap = (a, b)`` reads at window position ``t = (ti, tj)`` of every
    pooled position, both in row-major order."""
    ho, wo = ((xp.shape[axis + i] - k[i] + 1) // window for i in range(2))
    for t, (ti, tj) in enumerate(itertools.product(range(window), range(window))):
        for tap, (a, b) in enumerate(itertools.product(range(k[0]), range(k[1]))):
            start, limit, strides = [0] * xp.ndim, list(xp.shape), [1] * xp.ndim
            for i, (first, n) in enumerate(((ti + a, ho), (tj + b, wo))):
                start[axis + i], limit[axis + i] = first, first + (n - 1) * window + 1
                strides[axis + i] = window
            yield t, tap, lax.slice(xp, start, limit, strides)


def _tap_major_patches(x, k: tuple[int, int], pads, window: int):
    """``x [N, H, W, C]`` -> ``[kh*kw*C, T*N*Ho*Wo]``: one row per (kernel tap, channel) in the HWIO
    kernel's order, one column block per window position ``t`` (row-major), in it the pooled positions;
    ``Ho = (H + pads - kh + 1) // window``."""
    xc = jnp.transpose(jnp.pad(x, ((0, 0), *pads, (0, 0))), (3, 0, 1, 2))  # [C, N, Hp, Wp]
    rows = [[None] * (window * window) for _ in range(k[0] * k[1])]
    for t, tap, piece in _windows(xc, k, window, 2):
        rows[tap][t] = piece
    return jnp.stack([jnp.stack(r, 1) for r in rows], 0).reshape(k[0] * k[1] * x.shape[-1], -1)


def _position_major_patches(x, k: tuple[int, int], pads, window: int):
    """``x [N, H, W, C]`` -> ``[N*Ho*Wo*T, kh*kw*C]``: the same patches, one row per (pooled position,
    window position), the columns in the HWIO kernel's order."""
    pieces = [piece for _, _, piece in _windows(jnp.pad(x, ((0, 0), *pads, (0, 0))), k, window, 1)]
    return jnp.stack(pieces, -2).reshape(-1, k[0] * k[1] * x.shape[-1])


def _pick(a, b):
    """torch's max-pool pick as a commutative, associative choice between ``(value, position)`` pairs: a
    NaN beats a number and the later NaN the earlier; else the larger value, the earlier on ties."""
    (v1, i1), (v2, i2) = a, b
    n1, n2 = jnp.isnan(v1), jnp.isnan(v2)
    take = jnp.where(n1 | n2, n2 & (~n1 | (i2 > i1)), (v2 > v1) | ((v2 == v1) & (i2 < i1)))
    return jnp.where(take, v2, v1), jnp.where(take, i2, i1)


def _members(single: Callable) -> Callable:
    """``single`` with a member batching rule: ``lax.map`` over the members when the input and the kernel
    (or the gradient) are both stacked (each member's patches stay small), else JAX's own batching (a
    shared input gives one product of its patches with every member's kernel)."""
    f = custom_vmap(single)

    @f.def_vmap
    def rule(m, batched, *args):
        if batched[0] and any(batched[1:]):
            out = _map_members(f, args, batched)
        else:
            out = jax.vmap(single, tuple(0 if b else None for b in batched))(*args)
        return out, jax.tree.map(lambda _: True, out)

    return f


@functools.lru_cache(maxsize=256)
def _tap_major_forward(pads, window, precision):
    """``(x, kernel, bias) -> (best, index)``, both ``[Co, N, Ho, Wo]`` (index int8): the tap-major product
    ``[Co, T*N*Ho*Wo]`` plus bias and the pick over its ``T`` blocks, one variadic reduction."""
    def single(x, kernel, bias):
        n, co = x.shape[0], kernel.shape[-1]
        ho, wo = ((x.shape[1 + i] + sum(pads[i]) - kernel.shape[i] + 1) // window for i in range(2))
        z = lax.dot_general(kernel.reshape(-1, co).T, _tap_major_patches(x, kernel.shape[:2], pads, window),
                            (((1,), (0,)), ((), ())), precision=precision,
                            preferred_element_type=jnp.result_type(x.dtype, kernel.dtype))
        z = z.reshape(co, window * window, n, ho, wo) + bias.astype(z.dtype)[:, None, None, None, None]
        taps = jnp.broadcast_to(jnp.arange(window * window, dtype=jnp.int8)[:, None, None, None], z.shape)
        return lax.reduce((z, taps), (jnp.array(-jnp.inf, z.dtype), jnp.array(0, jnp.int8)), _pick, (1,))

    return _members(single)


@functools.lru_cache(maxsize=256)
def _tap_major_weight_gradient(kernel_shape, pads, window, precision):
    """``(x, index, gt) -> d_kernel``: the pooled gradient ``gt [Co, N, Ho, Wo]`` at each window's picked
    position (``[Co, N*Ho*Wo*T]``, zero elsewhere) times the position-major patches, one product."""
    def single(x, index, gt):
        taps = jnp.arange(window * window, dtype=jnp.int8)
        gz = jnp.where(index[..., None] == taps, gt[..., None], jnp.zeros((), gt.dtype))
        patches = _position_major_patches(x, kernel_shape[:2], pads, window)
        dk = lax.dot_general(gz.reshape(gz.shape[0], -1), patches, (((1,), (0,)), ((), ())),
                             precision=precision, preferred_element_type=jnp.result_type(gt.dtype, x.dtype))
        return dk.T.reshape(kernel_shape)

    return _members(single)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _conv_max_pool_cpu(x, kernel, bias, pads, window, relu, precision):
    return _conv_max_pool_cpu_fwd(x, kernel, bias, pads, window, relu, precision)[0]


def _conv_max_pool_cpu_fwd(x, kernel, bias, pads, window, relu, precision):
    best, index = _tap_major_forward(pads, window, precision)(x, kernel, bias)
    out = jnp.transpose(jax.nn.relu(best) if relu else best, (1, 2, 3, 0))
    return out, (x, kernel, bias, index, best if relu else None)


def _conv_max_pool_cpu_bwd(pads, window, relu, precision, res, g):
    """Weight and bias gradients from the pooled gradient, channels first (masked by the ReLU where the
    pooled value is not positive); the input gradient is :mod:`jaxuq.nn.conv`'s, of the gradient at the
    picked positions (:func:`_max_pool_tiled_bwd`)."""
    x, kernel, bias, index, best = res
    gt = jnp.transpose(g, (3, 0, 1, 2))
    gt = jnp.where(best > 0, gt, jnp.zeros((), gt.dtype)) if relu else gt
    d_kernel = _tap_major_weight_gradient(tuple(kernel.shape), pads, window, precision)(x, index, gt)
    d_bias = gt.sum((1, 2, 3))
    conv_hw = tuple(x.shape[1 + i] + sum(pads[i]) - kernel.shape[i] + 1 for i in range(2))
    to_nhwc = partial(jnp.transpose, axes=(1, 2, 3, 0))
    g_conv = _max_pool_tiled_bwd(window, conv_hw, to_nhwc(index), to_nhwc(gt))[0]
    d_x = _members_input_gradient("conv", tuple(x.shape), (1, 1), pads, (1, 1), 1, precision)(g_conv, kernel)
    return (_like(d_x.astype(x.dtype), x), _like(d_kernel.astype(kernel.dtype), kernel),
            _like(d_bias.astype(bias.dtype), bias))


_conv_max_pool_cpu.defvjp(_conv_max_pool_cpu_fwd, _conv_max_pool_cpu_bwd)


class ConvMaxPool(Conv):
    """:class:`jaxuq.nn.Conv`, then a ReLU if ``relu``, then ``max_pool2d(., max_pool)``: fused
    (:func:`conv_max_pool`) for 2-d stride-1 convolutions without groups, dilation, mask or unshared
    weights, else composed. Same variables as the ``Conv``."""

    max_pool: int = 2
    relu: bool = False

    @nn.compact
    def __call__(self, inputs):
        k = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        padding = self.padding
        if isinstance(padding, int):
            padding = ((padding, padding),) * 2
        fusable = (inputs.ndim == 4 and len(k) == 2 and self.shared_weights and self.mask is None
                   and self.feature_group_count == 1 and not isinstance(padding, str) and len(padding) == 2
                   and all(_pair(v) == (1, 1)
                           for v in (self.strides, self.kernel_dilation, self.input_dilation)))
        if not fusable:
            out = super().__call__(inputs)
            return max_pool2d(jax.nn.relu(out) if self.relu else out, self.max_pool)
        kernel = self.param("kernel", self.kernel_init, k + (inputs.shape[-1], self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias
                else None)
        x, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
        return conv_max_pool(x, kernel, bias, pads, self.max_pool, self.relu, self.precision)


def _pair(v) -> tuple:
    return (1, 1) if v is None else (v, v) if isinstance(v, int) else tuple(v)
