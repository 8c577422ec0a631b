"""Convolutions with torch semantics that are faster than ``lax.conv`` on XLA:CPU for some shapes."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
from collections.abc import Callable, Iterator
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

__all__ = ["CONV_LOWERINGS", "XLA_CPU_OPTIONS", "Conv", "DepthwiseConv2d", "conv_general_dilated",
           "conv_lowering", "conv_patches", "rewrites_on_cpu",
           "set_conv_lowering"]


class DepthwiseConv2d(nn.Module):
    """``torch.nn.Conv2d(C, C, k, padding=p, dilation=d, groups=C)`` (stride 1) on NHWC.

    Same variables as ``flax.linen.Conv(C, (k, k), feature_group_count=C)`` — ``kernel [k, k, 1, C]``,
    ``bias [C]`` — but computed as a sum of ``k*k`` shifted, per-channel-scaled copies of the zero-padded
    input. On XLA:CPU this is ~20x faster than a grouped ``lax.conv`` (measured: 7x7, dilation 3,
    500x32x32x12: 0.09 s vs 1.9 s); the result agrees to float32 rounding.
    """

    features: int
    kernel_size: int
    padding: int = 0
    dilation: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        c, k, d, p = x.shape[-1], self.kernel_size, self.dilation, self.padding
        if c != self.features:
            raise ValueError(f"DepthwiseConv2d: {self.features} features but input has {c} channels")
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), jnp.float32)
        h_out = x.shape[1] + 2 * p - d * (k - 1)
        w_out = x.shape[2] + 2 * p - d * (k - 1)
        xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        out = None
        for i in range(k):
            for j in range(k):
                term = xp[:, i * d:i * d + h_out, j * d:j * d + w_out, :] * kernel[i, j, 0]
                out = term if out is None else out + term
        if self.use_bias:
            out = out + self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return out


# --------------------------------------------------------------------------------------------------------
# Convolution whose weight gradient stays fast inside loops on XLA:CPU.
#
# XLA:CPU runs the weight-gradient convolution that autodiff emits (batch contracted, features as the
# batch dimension) through a naive loop when it sits inside a ``while`` body (``lax.scan`` epochs): measured
# here (2 cores, batch 32, 3x3 64->64 at 32x32) 1685 ms inside ``lax.scan`` vs 19 ms standalone
# (jax-ml/jax#12868). The same gradient written as a channels-last convolution (input channels as the
# batch, the batch as the contracted feature, the output gradient as the kernel) runs on the fast
# Eigen path in both places, and gives the same numbers (bitwise in our checks). The input gradient is
# written the same way (explicit HWIO kernel), which is 4x faster inside loops for stride-1 3x3 convs.
# --------------------------------------------------------------------------------------------------------

CONV_LOWERINGS = ("auto", "gemm", "conv", "lax")

# XLA options of jaxuq's compiled training and inference programs (``jax.jit(..., compiler_options=...)``
# on ``fit``'s ``train_chunk`` and on the forward of ``predict``/``evaluate``), set per program, never
# through the process-wide ``XLA_FLAGS``. jaxlib 0.10's XLA:CPU hands convolutions, matrix products and
# elementwise ops to YNNPACK fusions by default; for the weight-gradient convolutions of training (batch
# contracted, large windows) those run 2-5x slower than XLA's own Eigen kernels (measured on 2 cores, 10
# steps in ``lax.scan``: ResNet-20 3x3 16->16 B128 weight gradient 62.6 vs 12.4 ms, LeNet conv1 3.3 vs
# 0.7 ms), and ResNet-20 inference at batch 128 is 10 % faster without them. Only YNNPACK's reductions
# stay: they sum pairwise, where XLA's own loop sums a long column sequentially (relative error 6e-8 vs
# 2.6e-6 for 8192 rows; with all YNNPACK fusions off, 8-device data-parallel training of a BatchNorm CNN
# drifted 1.5e-4 from one device over 16 steps, 6e-6 with them on). LeNet training: 173 ms per 20 steps
# with the defaults, 141 with these options, 130 with every YNNPACK fusion off. An XLA:CPU debug option:
# other backends ignore it.
XLA_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
_DEFAULT = "auto"
_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("jaxuq_conv_lowering", default=None)


def _check_conv_lowering(lowering) -> str:
    if not isinstance(lowering, str):
        raise TypeError(f"lowering must be a string, got {type(lowering).__name__}")
    if lowering not in CONV_LOWERINGS:
        raise ValueError(f"lowering must be one of {CONV_LOWERINGS}, got {lowering!r}")
    return lowering


def set_conv_lowering(lowering: str) -> None:
    """The process-wide lowering of :func:`conv_general_dilated` (default ``"auto"``).

    - ``"auto"``: on CPU the patches + GEMM forward of ``"gemm"`` or the forward of ``"conv"`` per shape,
      as measured by ``bench/conv.py`` (see :func:`_auto_lowering`), with the explicit gradients and
      member batching rules of ``"conv"``; GPU/TPU: ``"lax"``.
    - ``"gemm"``: patches by slicing + one matrix product (a batched one over groups); plain autodiff
      (forward mode works), and under ``jax.vmap`` JAX's own batching: batched products over members.
    - ``"conv"``: ``lax.conv_general_dilated`` forward, both gradients as channels-last convolutions
      (a ``jax.custom_vjp``: forward-mode autodiff, ``jax.jvp``/``jax.hessian``, is unavailable), and
      ``custom_vmap`` rules for ensemble members and MC samples (see the note above
      :func:`_members_forward`): no grouped convolution under ``jax.vmap``.
    - ``"lax"``: ``lax.conv_general_dilated`` and JAX's own gradients.

    The CPU-only rewrites ("gemm", "conv") apply only when JAX's default backend is CPU at trace time;
    a function already compiled keeps the lowering it was traced with (``jax.clear_caches()`` retraces).
    """
    global _DEFAULT
    _DEFAULT = _check_conv_lowering(lowering)


@contextlib.contextmanager
def conv_lowering(lowering: str) -> Iterator[None]:
    """Trace the convolutions inside the ``with`` block with ``lowering`` (see :func:`set_conv_lowering`);
    the ensemble lowering ``"gemm"`` (:mod:`jaxuq.ensembles`) runs its vmapped members under
    ``conv_lowering("gemm")``, so member-stacked convolutions become batched matrix products."""
    token = _OVERRIDE.set(_check_conv_lowering(lowering))
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def rewrites_on_cpu() -> bool:
    """Whether jaxuq's XLA:CPU rewrites with explicit gradients (a ``jax.custom_vjp``) apply at trace time:
    JAX's default backend is CPU and the active lowering is not ``"lax"`` (which keeps JAX's own
    primitives and autodiff, forward mode included). Used by the convolutions and by ``max_pool2d``."""
    return jax.default_backend() == "cpu" and (_OVERRIDE.get() or _DEFAULT) != "lax"


def _channels_last(nd: int) -> lax.ConvDimensionNumbers:
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, nd + 1) + spatial,
        rhs_spec=(nd + 1, nd) + tuple(range(nd)),
        out_spec=(0, nd + 1) + spatial,
    )


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """Drop-in ``lax.conv_general_dilated`` (the ``conv_general_dilated`` of ``flax.linen.Conv``).

    Same forward result; on XLA:CPU, for channels-last convolutions (NHWC / HWIO) without input dilation,
    the weight and input gradients are computed as channels-last convolutions (see the note above).
    Everything else goes straight to ``lax.conv_general_dilated``.
    """
    nd = lhs.ndim - 2
    kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                  feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                  precision=precision, preferred_element_type=preferred_element_type)
    channels_last = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _channels_last(nd)
    rhs_dil = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * nd
    if isinstance(padding, str):
        if not channels_last:
            return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
        dilated_k = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:nd], rhs_dil, strict=True)]
        pads = tuple(lax.padtype_to_pads(lhs.shape[1:-1], dilated_k, window_strides, padding))
    else:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    lowering = _OVERRIDE.get() or _DEFAULT
    cpu_ok = (
        rewrites_on_cpu()
        and channels_last
        and (lhs_dilation is None or all(d == 1 for d in lhs_dilation))
        and batch_group_count == 1
        and preferred_element_type is None
        and all(lo >= 0 and hi >= 0 for lo, hi in pads)
    )
    if not cpu_ok:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    args = (tuple(window_strides), pads, rhs_dil, int(feature_group_count), precision)
    if lowering == "gemm":
        return _conv_gemm(lhs, rhs, *args)
    kind = _auto_lowering(lhs.shape, rhs.shape, *args[:4]) if lowering == "auto" else lowering
    return _conv_cpu(lhs, rhs, kind, *args)


def _auto_lowering(lhs_shape, rhs_shape, strides, pads, rhs_dil, groups) -> str:
    """XLA:CPU's choice between ``"gemm"`` and ``"conv"`` for one convolution, measured under
    :data:`XLA_CPU_OPTIONS` (bench/results/conv.md, 2026-12-06, quiet, forward + gradients, 10 steps in
    ``lax.scan``; a first layer without its input gradient) and in whole LeNet training steps:
    ``"gemm"`` for strided convs (ResNet-20 3x3 16->32 s2: 71 vs 103 ms) and for one input channel
    (LeNet conv1: 11 vs 24 ms); ``"conv"`` otherwise (ResNet-20 16->16: 112 vs 254 ms; LeNet conv2: 19
    vs 21 ms alone, and 121 vs 168 ms per 20 training steps of the network, where the patches' gradient
    fuses badly with the max-pool gradient)."""
    del lhs_shape, pads, rhs_dil, groups
    if any(s > 1 for s in strides) or rhs_shape[-2] == 1:
        return "gemm"
    return "conv"


def _conv_plain(lhs, rhs, strides, pads, rhs_dil, groups, precision):
    return lax.conv_general_dilated(
        lhs, rhs, strides, pads, rhs_dilation=rhs_dil, dimension_numbers=_channels_last(lhs.ndim - 2),
        feature_group_count=groups, precision=precision,
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _conv_cpu(lhs, rhs, kind, strides, pads, rhs_dil, groups, precision):
    """The CPU rewrites ``kind`` ("conv" or "gemm") with explicit gradients and member batching rules."""
    return _members_forward(kind, strides, pads, rhs_dil, groups, precision)(lhs, rhs)


def _conv_cpu_fwd(lhs, rhs, kind, strides, pads, rhs_dil, groups, precision):
    return _members_forward(kind, strides, pads, rhs_dil, groups, precision)(lhs, rhs), (lhs, rhs)


def _conv_cpu_bwd(kind, strides, pads, rhs_dil, groups, precision, res, g):
    lhs, rhs = res
    gradients = _members_gradients(kind, tuple(lhs.shape), tuple(rhs.shape), strides, pads, rhs_dil, groups,
                                   precision)
    d_lhs, d_rhs = gradients(lhs, rhs, g)
    return _like(d_lhs.astype(lhs.dtype), lhs), _like(d_rhs.astype(rhs.dtype), rhs)


def _vma(x) -> frozenset:
    """The mesh axes ``x`` varies over inside ``shard_map`` (``.mat.varying``; ``.vma`` in older jax)."""
    t = jax.typeof(x)
    mat = getattr(t, "mat", None)
    return frozenset(mat.varying) if mat is not None else frozenset(getattr(t, "vma", ()))


def _like(ct, primal):
    """Inside ``shard_map``: a cotangent that varies over mesh axes its primal does not vary over is summed
    over them (the transpose of the implicit ``pvary``), as autodiff's own conv transpose does."""
    extra = tuple(sorted(_vma(ct) - _vma(primal)))
    return lax.psum(ct, extra) if extra else ct


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


# --------------------------------------------------------------------------------------------------------
# Ensemble members under ``jax.vmap`` (``custom_vmap`` rules of the forward and of both gradients).
#
# A vmapped ``lax.conv`` with stacked weights is a grouped convolution, which XLA:CPU runs as a loop over
# groups (LeNet, 8 members: 19x the time of one member). The rules instead use each member's own fast
# single-model kernels and merge members where they share an operand:
# - shared input, stacked weights (the first layer of a deep ensemble): the patches are built once and
#   multiplied with every member's kernel in one product (``einsum`` over the member axis), the weight
#   gradient likewise (bench/results/conv.md, 8 members of LeNet conv1, 10 steps: 21 ms vs 212 ms
#   grouped and 59 ms ``lax.map``). Merging the members into ``M * Co`` channels of one convolution
#   instead needs transposes to and from the member-major layout that cost as much as the product
#   (the same 8 members with a ReLU after them: 6.6 vs 5.4 ms per step);
# - stacked inputs, shared weights (MC samples of one network): one convolution over ``M * N`` images;
# - both stacked: ``lax.map`` over the members of the single-model kernels.
# --------------------------------------------------------------------------------------------------------


def _map_members(f, args, batched):
    """``f`` for every member: ``lax.map`` over the batched ``args``, the others shared."""
    def one(member):
        it = iter(member)
        return f(*(next(it) if b else a for a, b in zip(args, batched, strict=True)))

    return lax.map(one, tuple(a for a, b in zip(args, batched, strict=True) if b))


@functools.lru_cache(maxsize=512)
def _members_forward(kind, strides, pads, rhs_dil, groups, precision):
    single = _conv_gemm if kind == "gemm" else _conv_plain

    @custom_vmap
    def forward(lhs, rhs):
        return single(lhs, rhs, strides, pads, rhs_dil, groups, precision)

    @forward.def_vmap
    def rule(m, batched, lhs, rhs):
        if batched == [True, False]:
            out = forward(lhs.reshape((-1,) + lhs.shape[2:]), rhs)
            return out.reshape((m, -1) + out.shape[1:]), True
        if batched == [False, True] and groups == 1:  # one product of the shared patches with every kernel
            pt = conv_patches(lhs, rhs.shape[1:-2], strides, pads, rhs_dil)
            out = jnp.einsum("pk,mko->mpo", pt.reshape(-1, math.prod(pt.shape[-2:])),
                             rhs.reshape(m, -1, rhs.shape[-1]), precision=precision,
                             preferred_element_type=jnp.result_type(lhs.dtype, rhs.dtype))
            return out.reshape((m,) + pt.shape[:-2] + (rhs.shape[-1],)), True
        return _map_members(forward, (lhs, rhs), batched), True

    return forward


@functools.lru_cache(maxsize=512)
def _members_weight_gradient(kind, rhs_shape, strides, pads, rhs_dil, groups, precision):
    @custom_vmap
    def weight_gradient(lhs, g):
        if kind == "gemm":
            return _gemm_transpose("rhs", lhs, g, rhs_shape, (strides, pads, rhs_dil, groups, precision))
        return _weight_gradient(lhs, g, rhs_shape, strides, pads, rhs_dil, groups, precision)

    @weight_gradient.def_vmap
    def rule(m, batched, lhs, g):
        if batched == [False, True] and groups == 1:  # the shared patches' product with every member's g
            pt = conv_patches(lhs, rhs_shape[:-2], strides, pads, rhs_dil)
            dw = jnp.einsum("pk,mpo->mko", pt.reshape(-1, math.prod(pt.shape[-2:])),
                            g.reshape(m, -1, rhs_shape[-1]), precision=precision,
                            preferred_element_type=jnp.result_type(lhs.dtype, g.dtype))
            return dw.reshape((m,) + rhs_shape), True
        return _map_members(weight_gradient, (lhs, g), batched), True

    return weight_gradient


@functools.lru_cache(maxsize=512)
def _members_gradients(kind, lhs_shape, rhs_shape, strides, pads, rhs_dil, groups, precision):
    """Both gradients; members with their own inputs and kernels (``lax.map``) get both in one loop, which
    slices each member's ``g`` once (8 LeNet members: 3 % of a training step, interleaved runs); other
    batchings go to each gradient's own rule."""
    static = (strides, pads, rhs_dil, groups, precision)

    def both(lhs, rhs, g):
        return (_members_input_gradient(kind, lhs_shape, *static)(g, rhs),
                _members_weight_gradient(kind, rhs_shape, *static)(lhs, g))

    gradients = custom_vmap(both)

    @gradients.def_vmap
    def rule(m, batched, lhs, rhs, g):
        if all(batched):
            out = _map_members(both, (lhs, rhs, g), batched)
        else:
            out = jax.vmap(both, tuple(0 if b else None for b in batched))(lhs, rhs, g)
        return out, (True, True)

    return gradients


@functools.lru_cache(maxsize=512)
def _members_input_gradient(kind, lhs_shape, strides, pads, rhs_dil, groups, precision):
    @custom_vmap
    def input_gradient(g, rhs):
        if kind == "gemm":
            return _gemm_transpose("lhs", rhs, g, lhs_shape, (strides, pads, rhs_dil, groups, precision))
        return _input_gradient(g, rhs, lhs_shape, strides, pads, rhs_dil, groups, precision)

    @input_gradient.def_vmap
    def rule(m, batched, g, rhs):
        if batched == [True, False]:
            folded = (m * lhs_shape[0],) + lhs_shape[1:]
            dx = _members_input_gradient(kind, folded, strides, pads, rhs_dil, groups, precision)
            return dx(g.reshape((-1,) + g.shape[2:]), rhs).reshape((m,) + lhs_shape), True
        return _map_members(input_gradient, (g, rhs), batched), True

    return input_gradient


def _gemm_transpose(wrt: str, fixed, g, shape, static):
    """``g`` through the transpose of :func:`_conv_gemm` with respect to ``wrt`` ("lhs": the patches' col2im,
    or "rhs": ``patches^T @ g``), the other operand ``fixed``: autodiff's own transpose. The product is
    linear in either operand, so it is taken at a zero point of ``shape``; inside ``shard_map`` that point
    is cast to vary like ``g`` and ``fixed`` (a local point, no spurious psum)."""
    zero = jnp.zeros(shape, jnp.result_type(g.dtype, fixed.dtype))
    varying = tuple(sorted(_vma(g) | _vma(fixed)))
    zero = lax.pcast(zero, varying, to="varying") if varying else zero
    if wrt == "lhs":
        return jax.vjp(lambda x: _conv_gemm(x, fixed, *static), zero)[1](g)[0]
    return jax.vjp(lambda w: _conv_gemm(fixed, w, *static), zero)[1](g)[0]


def _input_gradient(g, rhs, lhs_shape, strides, pads, rhs_dil, groups, precision):
    """``d conv / d lhs``: ``g [N, *O, Co]`` -> ``[N, *S, Ci]``, as a GEMM + col2im for kernels of >= 25
    taps (LeNet's 5x5: 1.2 vs 2.1 ms per step for conv2, where XLA:CPU's convolution of 16 -> 6 channels
    is slow), else as a channels-last convolution (3x3 ResNet layers: 5.1 vs 14.9 ms for 16 -> 16)."""
    if math.prod(rhs.shape[:-2]) >= 25:
        return _input_gradient_col2im(g, rhs, lhs_shape, strides, pads, rhs_dil, groups, precision)
    return _input_gradient_conv(g, rhs, lhs_shape, strides, pads, rhs_dil, groups, precision)


def _input_gradient_col2im(g, rhs, lhs_shape, strides, pads, rhs_dil, groups, precision):
    """``cols = g @ kernel^T`` (``[N, *O, K, Ci]``, one product per group), then each tap's slice added in
    place at its window offset (a strided ``.at[].add``, an in-place dynamic-update-slice: summing padded
    copies instead fused badly with the max-pool gradient), the padding cropped."""
    nd = g.ndim - 2
    k, c, co = rhs.shape[:nd], rhs.shape[nd], rhs.shape[-1]
    lead = g.shape[:-1]
    kernel = rhs.reshape(math.prod(k), c, groups, co // groups)
    cols = jnp.einsum("pgo,kcgo->pkgc", g.reshape(-1, groups, co // groups), kernel, precision=precision,
                      preferred_element_type=jnp.result_type(g.dtype, rhs.dtype))
    cols = cols.reshape(lead + (len(kernel), groups * c))
    padded = [lhs_shape[1 + i] + pads[i][0] + pads[i][1] for i in range(nd)]
    out = jnp.zeros((lead[0], *padded, groups * c), cols.dtype)
    for tap, offset in enumerate(itertools.product(*(range(n) for n in k))):
        window = tuple(slice(o * d, o * d + (n - 1) * s + 1, s)
                       for o, d, n, s in zip(offset, rhs_dil, g.shape[1:-1], strides, strict=True))
        out = out.at[(slice(None),) + window].add(cols[..., tap, :])
    crop = tuple(slice(pads[i][0], pads[i][0] + lhs_shape[1 + i]) for i in range(nd))
    return out[(slice(None),) + crop]


def _input_gradient_conv(g, rhs, lhs_shape, strides, pads, rhs_dil, groups, precision):
    """``d conv / d lhs`` as a channels-last conv with an HWIO kernel: ``g [N, *O, Co]`` -> ``[N, *S, Ci]``.

    Autodiff's own transpose uses the kernel as HWOI, which XLA:CPU also runs slowly inside loops (4x
    for 3x3 64->64). Here the kernel is flipped and regrouped to ``[*K, Co/G, Ci]`` explicitly; the
    output gradient is dilated by the stride and padded as ``lax``'s transpose rule does.
    """
    nd = g.ndim - 2
    k, cig, co = rhs.shape[:nd], rhs.shape[nd], rhs.shape[-1]
    cog = co // groups
    kernel = jnp.flip(rhs, tuple(range(nd))).reshape(k + (cig, groups, cog))
    kernel = jnp.transpose(kernel, tuple(range(nd)) + (nd + 2, nd + 1, nd)).reshape(k + (cog, groups * cig))
    padding = []
    for i in range(nd):
        k_dil = (k[i] - 1) * rhs_dil[i] + 1
        out_dil = (g.shape[1 + i] - 1) * strides[i] + 1
        before = k_dil - 1 - pads[i][0]
        padding.append((before, lhs_shape[1 + i] + k_dil - 1 - out_dil - before))
    return lax.conv_general_dilated(
        g, kernel, (1,) * nd, padding, lhs_dilation=strides, rhs_dilation=rhs_dil,
        dimension_numbers=_channels_last(nd), feature_group_count=groups, precision=precision,
    )


def _weight_gradient(lhs, g, rhs_shape, strides, pads, rhs_dil, groups, precision):
    """``d conv / d rhs`` as a channels-last conv: ``lhs [N, *S, G*c]``, ``g [N, *O, Co]`` -> ``[*K, c, Co]``.

    ``dw[k, c, o] = sum_{n, p} xpad[n, p*s + k*d, (grp(o), c)] * g[n, p, o]``: a conv whose batch is ``c``,
    whose contracted feature is ``n`` (in ``G`` groups), whose kernel is ``g`` (spatial ``O``, dilated by
    the stride ``s``) and whose window stride is the kernel dilation ``d``; its first ``K`` outputs per axis.
    """
    nd = lhs.ndim - 2
    n, c = lhs.shape[0], rhs_shape[nd]
    xpad = jnp.pad(lhs, ((0, 0),) + tuple(pads) + ((0, 0),))
    spatial = xpad.shape[1:-1]
    x = xpad.reshape((n,) + spatial + (groups, c))
    x = jnp.transpose(x, (nd + 2,) + tuple(range(1, nd + 1)) + (nd + 1, 0))  # [c, *S, G, N]
    x = x.reshape((c,) + spatial + (groups * n,))
    kernel = jnp.moveaxis(g, 0, nd)  # [*O, N, Co]
    out = lax.conv_general_dilated(x, kernel, rhs_dil, ((0, 0),) * nd, rhs_dilation=strides,
                                   dimension_numbers=_channels_last(nd), feature_group_count=groups,
                                   precision=precision)  # [c, *P, Co], P >= K
    out = out[(slice(None),) + tuple(slice(0, k) for k in rhs_shape[:nd])]
    return jnp.moveaxis(out, 0, nd)


# --------------------------------------------------------------------------------------------------------
# Convolution as patches + one matrix product ("gemm").
#
# XLA:CPU's direct convolution kernels (Eigen) are slow for the small channel counts of LeNet-like and
# CIFAR ResNet layers, and a grouped convolution (Packed layers, ``jax.vmap`` over members) is lowered to a
# loop over groups. The same arithmetic as ``patches [P, K*C] @ kernel [K*C, O]`` (grouped: one batched
# product over the groups) runs on XLA's matrix-product kernels; under ``jax.vmap`` over ensemble members it
# becomes one batched product over the member axis, and a batch shared by every member (TU's deep-ensemble
# recipe) gives one product with M*O output columns. Gradients are JAX's own: the weight gradient is
# ``patches^T @ g``, the input gradient the sum of the K padded slices of ``g @ kernel^T`` (col2im).
# --------------------------------------------------------------------------------------------------------


def conv_patches(x, kernel_size, strides, pads, rhs_dilation):
    """``x [N, *S, C]`` -> ``[N, *O, K, C]``: for every output position the ``K = prod(kernel_size)``
    input vectors its window reads (zero padding ``pads``, kernel dilation ``rhs_dilation``), in the
    kernel's row-major order, by ``K`` strided slices of the padded input."""
    xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
    out = [(xp.shape[1 + i] - d * (k - 1) - 1) // s + 1
           for i, (k, s, d) in enumerate(zip(kernel_size, strides, rhs_dilation, strict=True))]
    cols = []
    for offset in itertools.product(*(range(k) for k in kernel_size)):
        first = tuple(o * d for o, d in zip(offset, rhs_dilation, strict=True))
        last = tuple(f + (n - 1) * s + 1 for f, n, s in zip(first, out, strides, strict=True))
        cols.append(lax.slice(xp, (0, *first, 0), (x.shape[0], *last, x.shape[-1]), (1, *strides, 1)))
    return jnp.stack(cols, axis=-2)


def _conv_gemm(lhs, rhs, strides, pads, rhs_dil, groups, precision):
    """``conv_general_dilated`` for channels-last ``lhs [N, *S, G*c]``, ``rhs [*k, c, G*o]`` as a GEMM."""
    nd = lhs.ndim - 2
    k, c, co = rhs.shape[:nd], rhs.shape[nd], rhs.shape[-1]
    kk = math.prod(k)
    pt = conv_patches(lhs, k, strides, pads, rhs_dil)  # [N, *O, K, G*c]
    lead = pt.shape[:-2]
    dtype = jnp.result_type(lhs.dtype, rhs.dtype)
    if groups == 1:
        out = jnp.dot(pt.reshape(-1, kk * c), rhs.reshape(kk * c, co), precision=precision,
                      preferred_element_type=dtype)
    else:
        pt = pt.reshape(-1, kk, groups, c)
        out = jnp.einsum("pkgc,kcgo->pgo", pt, rhs.reshape(kk, c, groups, co // groups), precision=precision,
                         preferred_element_type=dtype)
    return out.reshape(lead + (co,))


class Conv(nn.Conv):
    """``flax.linen.Conv`` computed by :func:`conv_general_dilated` (same variables, same results)."""

    conv_general_dilated: Callable | None = conv_general_dilated
