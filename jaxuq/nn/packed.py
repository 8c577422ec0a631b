"""Packed-Ensembles layers (Laurent et al., ICLR 2023), exact to torch-uncertainty 0.13.0.

A Packed-Ensemble packs ``M`` members into one wider network whose layers are grouped
convolutions / block-diagonal dense layers, so member ``m`` only ever sees its own block of
channels. TU's arithmetic (``torch_uncertainty/layers/packed.py``):

- ``ext_in = int(in * (1 if first else alpha))`` and ``ext_out = int(out * (M if last else alpha))``;
- groups ``G = 1`` if ``first`` else ``gamma * groups * M``;
- conv only: while ``(ext_in % G or ext_in // G < minimum_channels_per_group)`` and
  ``G // (groups * M) > 1``, gamma is decremented (``G = gamma * groups * M``);
- ``last=True`` rearranges the output ``b (m c) -> (m b) c`` (member-major rows).

Layout (NHWC): a packed conv is a plain ``nn.Conv`` with ``feature_group_count=G`` stored as the
submodule ``conv`` (mirrors torch's ``.conv``), kernel ``[kh, kw, ext_in/G, ext_out]``; torch's
OIHW grouped weight maps to it with ``transpose(2, 3, 1, 0)``. A packed dense layer stores
``kernel: [G, ext_out/G, ext_in/G]`` (torch's ``(G, o, i)`` layout unchanged) and ``bias: [ext_out]``
and computes ``y[..., g, o] = sum_i x[..., g, i] * W[g, o, i] + b``.

Layers (TU 0.13.0 -> jaxuq): ``PackedConv1d/2d/3d`` -> :class:`PackedConv` (the spatial rank is the
input's: ``[B, L, C]``, ``[B, H, W, C]`` or ``[B, D, H, W, C]``), ``PackedConvTranspose2d`` ->
:class:`PackedConvTranspose` (same rule), ``PackedLinear`` -> :class:`PackedDense` (math:
:func:`packed_linear`), ``PackedLayerNorm`` -> :class:`PackedLayerNorm`, ``PackedMultiheadAttention`` ->
:class:`PackedMultiheadAttention`, ``PackedTransformerEncoderLayer`` / ``PackedTransformerDecoderLayer`` ->
:class:`PackedTransformerEncoderLayer` / :class:`PackedTransformerDecoderLayer`. Sequence layouts are
TU's: ``[L, B, E]`` (``batch_first=False``) or ``[B, L, E]``.

Initialisation follows torch's defaults (``U(+-1/sqrt(fan_in))`` for conv/linear weights and biases,
per-group Xavier-uniform for the attention projections, ones/zeros for the norms); the streams differ from
torch's, so parity tests load converted weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxuq.nn.conv import Conv, conv_general_dilated
from jaxuq.nn.init import torch_uniform_init
from jaxuq.nn.pool import ConvMaxPool

__all__ = [
    "PackedConv",
    "PackedConvTranspose",
    "PackedDense",
    "PackedLayerNorm",
    "PackedMultiheadAttention",
    "PackedTransformerDecoderLayer",
    "PackedTransformerEncoderLayer",
    "packed_linear",
    "packed_conv_sizes",
    "packed_dense_sizes",
    "split_members",
    "torch_uniform_init",
]


def _check(alpha: float, gamma: int, num_estimators: int) -> None:
    """TU's ``check_packed_parameters_consistency``: a missing value or one out of range is a ValueError,
    a value of the wrong type (``num_estimators=1.5``, ``gamma=0.5``) a TypeError, naming the argument."""
    if alpha is None:
        raise ValueError("You must specify the value of the arg. `alpha`")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.integer | np.floating):
        raise TypeError(f"Attribute `alpha` should be a number, not {type(alpha).__name__}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"Attribute `alpha` should be > 0, not {alpha}")
    if isinstance(gamma, bool) or not isinstance(gamma, int | np.integer):
        raise TypeError(f"Attribute `gamma` should be an int, not {type(gamma).__name__} {gamma!r}")
    if gamma < 1:
        raise ValueError(f"Attribute `gamma` should be >= 1, not {gamma}")
    if num_estimators is None:
        raise ValueError("You must specify the value of the arg. `num_estimators`")
    if isinstance(num_estimators, bool) or not isinstance(num_estimators, int | np.integer):
        raise TypeError(f"Attribute `num_estimators` should be an int, not {type(num_estimators).__name__} "
                        f"{num_estimators!r}")
    if num_estimators < 1:
        raise ValueError(f"Attribute `num_estimators` should be >= 1, not {num_estimators}")


def packed_conv_sizes(
    in_channels: int,
    out_channels: int,
    alpha: float,
    num_estimators: int,
    gamma: int = 1,
    groups: int = 1,
    minimum_channels_per_group: int = 64,
    first: bool = False,
    last: bool = False,
) -> tuple[int, int, int]:
    """TU's ``PackedConv2d`` arithmetic: returns ``(ext_in, ext_out, G)`` incl. the gamma reduction."""
    _check(alpha, gamma, num_estimators)
    gamma = int(gamma)
    ext_in = int(in_channels * (1 if first else alpha))
    ext_out = int(out_channels * (num_estimators if last else alpha))
    g = 1 if first else gamma * groups * num_estimators
    while (ext_in % g != 0 or ext_in // g < minimum_channels_per_group) and g // (
        groups * num_estimators
    ) > 1:
        gamma -= 1
        g = gamma * groups * num_estimators
    if ext_in % g:
        raise ValueError(
            f"PackedConv: in_channels {in_channels} (extended {ext_in}) is not divisible by groups {g}"
        )
    if ext_out % (gamma * groups * num_estimators):
        raise ValueError(
            f"PackedConv: out_channels {out_channels} (extended {ext_out}) is not divisible by "
            f"gamma * groups * num_estimators = {gamma * groups * num_estimators}"
        )
    return ext_in, ext_out, g


def packed_dense_sizes(
    in_features: int,
    out_features: int,
    alpha: float,
    num_estimators: int,
    gamma: int = 1,
    first: bool = False,
    last: bool = False,
) -> tuple[int, int, int]:
    """TU's ``PackedLinear`` arithmetic: returns ``(ext_in, ext_out, G)`` (no 64-channel rule)."""
    _check(alpha, gamma, num_estimators)
    ext_in = int(in_features * (1 if first else alpha))
    ext_out = int(out_features * (num_estimators if last else alpha))
    g = 1 if first else num_estimators * int(gamma)
    if ext_in % g:
        raise ValueError(f"PackedDense: in_features {in_features} (extended {ext_in}) not divisible by {g}")
    if ext_out % (num_estimators * int(gamma)):
        raise ValueError(
            f"PackedDense: out_features {out_features} (extended {ext_out}) not divisible by "
            f"num_estimators * gamma = {num_estimators * int(gamma)}"
        )
    return ext_in, ext_out, g


def _ntuple(v, nd: int, name: str) -> tuple[int, ...]:
    """torch's ``_single``/``_pair``/``_triple``: an int repeated ``nd`` times, or ``nd`` ints."""
    out = (int(v),) * nd if isinstance(v, int) else tuple(int(a) for a in v)
    if len(out) != nd:
        raise ValueError(f"`{name}` must be an int or {nd} ints for a {nd}-d input, got {v!r}")
    return out


_PAD_MODES = {"zeros": None, "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _conv_pads(padding, kernel, dilation, stride, nd: int) -> tuple[tuple[int, int], ...]:
    """torch's conv padding (int, ints, ``"valid"`` or ``"same"``) as ``(lo, hi)`` per spatial axis;
    ``"same"``: ``d (k - 1)`` in total, the odd one at the end (stride 1 only, as in torch)."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding != "same":
            raise ValueError(f"`padding` must be an int, ints, 'valid' or 'same', got {padding!r}")
        if any(s != 1 for s in stride):
            raise ValueError("padding='same' is not supported for strided convolutions")
        total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        return tuple((t // 2, t - t // 2) for t in total)
    return tuple((p, p) for p in _ntuple(padding, nd, "padding"))


def _members_first(out, num_estimators: int):
    """TU's ``b (m c) ... -> (m b) c ...`` on channels-last ``[B, ..., M*c]`` -> ``[M*B, ..., c]``."""
    m, b, c = num_estimators, out.shape[0], out.shape[-1] // num_estimators
    out = out.reshape(*out.shape[:-1], m, c)
    return jnp.moveaxis(out, -2, 0).reshape(m * b, *out.shape[1:-2], c)


class PackedConv(nn.Module):
    """TU ``PackedConv1d`` / ``PackedConv2d`` / ``PackedConv3d`` on channels-last inputs.

    The spatial rank is the input's: ``x: [B, L, ext_in]``, ``[B, H, W, ext_in]`` or ``[B, D, H, W, ext_in]``;
    ``kernel_size``/``stride``/``padding``/``dilation`` are ints or one int per spatial axis, ``padding``
    may be ``"same"``/``"valid"`` and ``padding_mode`` is torch's (zeros, reflect, replicate, circular).
    ``in_channels`` / ``out_channels`` are the nominal (per-network, pre-alpha) sizes, exactly as in TU.
    Output ``[B, *S', ext_out]``, or ``[M*B, *S', out_channels]`` (member-major) when ``last``.
    Variables: ``conv/kernel [*k, ext_in/G, ext_out]`` (torch ``conv.weight`` (O, I/G, *k)), ``conv/bias``.
    ``max_pool`` (and ``relu``): the output (after a ReLU) max-pooled with non-overlapping windows of that
    size (before ``last``'s reorder), fused where it can be (:class:`jaxuq.nn.ConvMaxPool`).
    """

    in_channels: int
    out_channels: int
    kernel_size: int | Sequence[int]
    alpha: float
    num_estimators: int
    gamma: int = 1
    stride: int | Sequence[int] = 1
    padding: int | Sequence[int] | str = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    minimum_channels_per_group: int = 64
    bias: bool = True
    padding_mode: str = "zeros"
    first: bool = False
    last: bool = False
    dtype: jnp.dtype | None = None
    max_pool: int = 0
    relu: bool = False

    def sizes(self) -> tuple[int, int, int]:
        return packed_conv_sizes(
            self.in_channels, self.out_channels, self.alpha, self.num_estimators, self.gamma,
            self.groups, self.minimum_channels_per_group, self.first, self.last,
        )

    @nn.compact
    def __call__(self, x):
        ext_in, ext_out, g = self.sizes()
        nd = x.ndim - 2
        if nd < 1 or x.shape[-1] != ext_in:
            raise ValueError(f"{self.name}: expected [B, *spatial, {ext_in}] (channels last), got {x.shape}")
        if self.padding_mode not in _PAD_MODES:
            raise ValueError(f"`padding_mode` must be one of {tuple(_PAD_MODES)}, got {self.padding_mode!r}")
        k = _ntuple(self.kernel_size, nd, "kernel_size")
        stride, dilation = _ntuple(self.stride, nd, "stride"), _ntuple(self.dilation, nd, "dilation")
        pads = _conv_pads(self.padding, k, dilation, stride, nd)
        if _PAD_MODES[self.padding_mode] is not None:
            x = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode=_PAD_MODES[self.padding_mode])
            pads = ((0, 0),) * nd
        fan_in = (ext_in // g) * math.prod(k)
        if self.relu and not self.max_pool:
            raise ValueError(f"{self.name}: relu=True needs max_pool (a fused conv -> ReLU -> pool block)")
        pool = {"max_pool": self.max_pool, "relu": self.relu} if self.max_pool else {}
        out = (ConvMaxPool if self.max_pool else Conv)(
            ext_out, k, strides=stride, padding=pads, kernel_dilation=dilation, feature_group_count=g,
            use_bias=self.bias, dtype=self.dtype, kernel_init=torch_uniform_init(fan_in),
            bias_init=torch_uniform_init(fan_in), name="conv", **pool,
        )(x)
        return _members_first(out, self.num_estimators) if self.last else out


class _ConvTransposeParams(nn.Module):
    """The ``conv_transpose`` submodule's variables: ``kernel [*k, O/G, I]`` (torch's (I, O/G, *k) weight
    moved channels-last with a conv's transpose) and ``bias [O]``, both ``U(+-1/sqrt(fan_in))``."""

    kernel_size: tuple[int, ...]
    in_features: int
    out_per_group: int
    out_features: int
    use_bias: bool
    fan_in: int

    @nn.compact
    def __call__(self):
        init = torch_uniform_init(self.fan_in)
        shape = (*self.kernel_size, self.out_per_group, self.in_features)
        kernel = self.param("kernel", init, shape, jnp.float32)
        bias = self.param("bias", init, (self.out_features,), jnp.float32) if self.use_bias else None
        return kernel, bias


class PackedConvTranspose(nn.Module):
    """TU ``PackedConvTranspose2d`` (any spatial rank, from the input, as :class:`PackedConv`).

    ``x: [B, *S, ext_in]`` -> ``[B, *S', ext_out]`` (``[M*B, *S', out_channels]`` when ``last``) with
    ``S' = (S - 1) stride - 2 padding + dilation (k - 1) + output_padding + 1``, torch's
    ``ConvTranspose`` with ``G`` groups (TU's channel arithmetic and gamma reduction, as ``PackedConv``).
    Variables: ``conv_transpose/kernel [*k, ext_out/G, ext_in]`` (torch ``conv_transpose.weight``
    (ext_in, ext_out/G, *k)) and ``conv_transpose/bias [ext_out]``.
    """

    in_channels: int
    out_channels: int
    kernel_size: int | Sequence[int]
    alpha: float
    num_estimators: int
    gamma: int = 1
    stride: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    output_padding: int | Sequence[int] = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    minimum_channels_per_group: int = 64
    bias: bool = True
    first: bool = False
    last: bool = False

    def sizes(self) -> tuple[int, int, int]:
        return packed_conv_sizes(
            self.in_channels, self.out_channels, self.alpha, self.num_estimators, self.gamma,
            self.groups, self.minimum_channels_per_group, self.first, self.last,
        )

    @nn.compact
    def __call__(self, x):
        ext_in, ext_out, g = self.sizes()
        nd = x.ndim - 2
        if nd < 1 or x.shape[-1] != ext_in:
            raise ValueError(f"{self.name}: expected [B, *spatial, {ext_in}] (channels last), got {x.shape}")
        k = _ntuple(self.kernel_size, nd, "kernel_size")
        stride, dilation = _ntuple(self.stride, nd, "stride"), _ntuple(self.dilation, nd, "dilation")
        pad = _ntuple(self.padding, nd, "padding")
        out_pad = _ntuple(self.output_padding, nd, "output_padding")
        if any(op >= max(s, d) for op, s, d in zip(out_pad, stride, dilation, strict=True)):
            raise ValueError(f"`output_padding` {out_pad} must be smaller than stride or dilation")
        fan_in = (ext_out // g) * math.prod(k)  # torch's fan_in of a (I, O/G, *k) weight
        kernel, bias = _ConvTransposeParams(k, ext_in, ext_out // g, ext_out, self.bias, fan_in,
                                            name="conv_transpose")()
        # as a conv of the stride-dilated input with the flipped kernel, regrouped to [*k, I/G, O]
        w = kernel.reshape(*k, ext_out // g, g, ext_in // g)
        w = jnp.transpose(w, (*range(nd), nd + 2, nd + 1, nd)).reshape(*k, ext_in // g, ext_out)
        w = jnp.flip(w, tuple(range(nd)))
        pads = [(d * (kk - 1) - p, d * (kk - 1) - p + op) for kk, d, p, op in zip(k, dilation, pad, out_pad,
                                                                                    strict=True)]
        dn = lax.conv_dimension_numbers(x.shape, w.shape, ("N" + "DHW"[3 - nd:] + "C",
                                                           "DHW"[3 - nd:] + "IO", "N" + "DHW"[3 - nd:] + "C"))
        out = conv_general_dilated(x.astype(jnp.float32), w, (1,) * nd, pads, lhs_dilation=stride,
                                   rhs_dilation=dilation, dimension_numbers=dn, feature_group_count=g)
        if bias is not None:
            out = out + bias
        return _members_first(out, self.num_estimators) if self.last else out


def packed_linear(x, weight, bias=None):
    """TU's ``packed_linear`` (every implementation): ``x [..., G*i]``, ``weight [G, o, i]`` (torch's
    layout), ``bias [G*o]`` -> ``[..., G*o]``: ``y[..., g, :] = W[g] @ x[..., g, :] + b`` (block diagonal)."""
    g, o, i = weight.shape
    if x.shape[-1] != g * i:
        raise ValueError(f"packed_linear: {x.shape[-1]} input features, weight {weight.shape} takes {g * i}")
    dt = jnp.result_type(x.dtype, weight.dtype)
    xg = x.reshape(*x.shape[:-1], g, i).astype(dt)
    out = jnp.einsum("...gi,goi->...go", xg, weight.astype(dt)).reshape(*x.shape[:-1], g * o)
    return out if bias is None else out + bias.astype(dt)


class PackedDense(nn.Module):
    """TU ``PackedLinear``: ``x: [B, ..., ext_in]`` -> ``[B, ..., ext_out]`` or, if ``last``,
    ``[M*B, ..., out_features]`` member-major (TU's ``"b ... (m h) -> (m b) ... h"``).

    ``implementation`` is accepted for TU compatibility ('einsum', 'conv1d', 'full', 'sparse' are
    the same function, :func:`packed_linear`). Variables: ``kernel [G, ext_out/G, ext_in/G]`` (torch's
    ``weight``), ``bias [ext_out]``.
    """

    in_features: int
    out_features: int
    alpha: float
    num_estimators: int
    gamma: int = 1
    bias: bool = True
    first: bool = False
    last: bool = False
    implementation: str = "einsum"
    dtype: jnp.dtype | None = None

    def sizes(self) -> tuple[int, int, int]:
        return packed_dense_sizes(
            self.in_features, self.out_features, self.alpha, self.num_estimators, self.gamma,
            self.first, self.last,
        )

    @nn.compact
    def __call__(self, x):
        if self.implementation not in ("einsum", "conv1d", "full", "sparse"):
            raise ValueError(f"unknown PackedLinear implementation {self.implementation!r}")
        ext_in, ext_out, g = self.sizes()
        if x.shape[-1] != ext_in:
            raise ValueError(f"{self.name}: expected {ext_in} input features, got shape {x.shape}")
        fan_in = ext_in // g
        w = self.param("kernel", torch_uniform_init(fan_in), (g, ext_out // g, ext_in // g), jnp.float32)
        b = self.param("bias", torch_uniform_init(fan_in), (ext_out,), jnp.float32) if self.bias else None
        dt = self.dtype or jnp.result_type(x.dtype, jnp.float32)
        out = packed_linear(x.astype(dt), w.astype(dt), None if b is None else b.astype(dt))
        return _members_first(out, self.num_estimators) if self.last else out


class PackedLayerNorm(nn.Module):
    """TU ``PackedLayerNorm`` (a ``GroupNorm`` over the last axis): ``x [..., C]`` with
    ``C = int(embed_dim * (M if last else alpha))``, normalised per row in ``M`` groups if ``first``
    else one (a LayerNorm), biased variance, then ``* scale + bias`` (torch ``weight``/``bias``, [C])."""

    embed_dim: int
    num_estimators: int
    alpha: float
    eps: float = 1e-5
    affine: bool = True
    first: bool = False
    last: bool = False

    @nn.compact
    def __call__(self, x):
        c = int(self.embed_dim * (self.num_estimators if self.last else self.alpha))
        g = self.num_estimators if self.first else 1
        if c % g:
            raise ValueError(f"{self.name}: num_channels ({c}) must be divisible by num_groups ({g})")
        if x.shape[-1] != c:
            raise ValueError(f"{self.name}: expected {c} features on the last axis, got shape {x.shape}")
        xf = x.astype(jnp.float32).reshape(*x.shape[:-1], g, c // g)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = ((xf - mean) * lax.rsqrt(var + self.eps)).reshape(x.shape)
        if self.affine:
            y = y * self.param("scale", nn.initializers.ones, (c,), jnp.float32)
            y = y + self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return y.astype(x.dtype)


# ------------------------------------------------------------------------------------------ attention
def _xavier_groups(key, shape, dtype=jnp.float32):
    """torch's ``xavier_uniform_`` on each ``[o, i]`` slice of a ``[G, o, i]`` weight (TU's init)."""
    bound = math.sqrt(6.0 / (shape[-2] + shape[-1]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _xavier_normal_bias(key, shape, dtype=jnp.float32):
    """torch ``MultiheadAttention``'s ``xavier_normal_`` for ``bias_k``/``bias_v`` ``(1, 1, E)``: std
    ``1/sqrt(E)`` (TU leaves them uninitialised, ``torch.empty``; a checkpoint carries its values)."""
    return jax.random.normal(key, shape, dtype) / math.sqrt(shape[-1])


def _canonical_mask(mask, name: str):
    """torch's ``F._canonical_mask``: a bool mask becomes ``-inf`` where True, 0 elsewhere; a float mask is
    added as is."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.dtype == jnp.bool_:
        return jnp.where(mask, -jnp.inf, 0.0).astype(jnp.float32)
    if not jnp.issubdtype(mask.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a bool or float array, got {mask.dtype}")
    return mask.astype(jnp.float32)


def _in_projection(p: dict, q, k, v, mode: str):
    """TU's ``packed_in_projection(_packed)``: q, k, v [L or S, B, E] after the packed in-projection.

    With one ``in_proj_weight [G, 3E/G, E/G]`` the split depends on how TU was called (object identity):
    ``"self"`` (q is k is v) splits the ``3E`` outputs globally into q | k | v; ``"encdec"`` (k is v)
    takes each group's first ``E/G`` rows for q and the rest for k | v (split globally); ``"general"``
    takes each group's thirds. The bias is always split globally in thirds."""
    b = p.get("in_proj_bias")
    thirds = (None, None, None) if b is None else tuple(jnp.split(b, 3))
    if "in_proj_weight" not in p:  # separate q/k/v weights (kdim or vdim != embed_dim)
        return tuple(packed_linear(x, p[f"{n}_proj_weight"], bb)
                     for x, n, bb in zip((q, k, v), "qkv", thirds, strict=True))
    w, e = p["in_proj_weight"], q.shape[-1]
    if mode == "self":
        proj = packed_linear(q, w, b)
        return proj[..., :e], proj[..., e:2 * e], proj[..., 2 * e:]
    if mode == "encdec":
        rows = w.shape[-1]
        q_out = packed_linear(q, w[:, :rows], None if b is None else b[:e])
        kv = packed_linear(k, w[:, rows:], None if b is None else b[e:])
        return q_out, kv[..., :e], kv[..., e:]
    w_q, w_k, w_v = jnp.split(w, 3, axis=1)
    return tuple(packed_linear(x, ww, bb) for x, ww, bb in zip((q, k, v), (w_q, w_k, w_v), thirds,
                                                                strict=True))


def _attention_mask(attn_mask, kpm, is_causal: bool, shape: tuple[int, int, int, int], p: dict,
                    add_zero_attn: bool):
    """TU's mask preparation: returns ``(additive mask broadcastable to [B, H, L, S'] or None, causal)``
    where ``S' = S (+1 with bias_k) (+1 with add_zero_attn)``."""
    b, h, tgt, src = shape
    if is_causal and attn_mask is None:
        raise ValueError("is_causal=True needs attn_mask (as TU: it replaces the mask by the causal one)")
    causal = is_causal and kpm is None
    if causal:
        attn_mask = None
    if attn_mask is not None:
        want = (tgt, src) if attn_mask.ndim == 2 else (b * h, tgt, src)
        if attn_mask.shape != want:
            raise ValueError(f"`attn_mask` must have shape {(tgt, src)} or {(b * h, tgt, src)}, "
                             f"got {attn_mask.shape}")
        attn_mask = attn_mask[None] if attn_mask.ndim == 2 else attn_mask
    if kpm is not None and kpm.shape != (b, src):
        raise ValueError(f"`key_padding_mask` must have shape {(b, src)}, got {kpm.shape}")
    extra = int("bias_k" in p) + int(add_zero_attn)
    pad = lambda m: None if m is None else jnp.pad(m, [(0, 0)] * (m.ndim - 1) + [(0, extra)])  # noqa: E731
    attn_mask, kpm = pad(attn_mask), pad(kpm)
    if kpm is not None:
        kpm = jnp.broadcast_to(kpm[:, None, None, :], (b, h, 1, src + extra)).reshape(b * h, 1, src + extra)
        attn_mask = kpm if attn_mask is None else attn_mask + kpm
    if attn_mask is not None:
        attn_mask = attn_mask[None] if attn_mask.shape[0] == 1 else attn_mask.reshape(b, h, -1, src + extra)
    return attn_mask, causal


def _sdpa(q, k, v, mask, causal: bool, dropout: Callable):
    """``F.scaled_dot_product_attention``: q [B, H, L, d], k/v [B, H, S, d]."""
    scores = jnp.einsum("bhld,bhsd->bhls", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
    if causal:
        tril = jnp.tril(jnp.ones(scores.shape[-2:], bool))
        scores = jnp.where(tril, scores, -jnp.inf)
    if mask is not None:
        scores = scores + mask
    return jnp.einsum("bhls,bhsd->bhld", dropout(jax.nn.softmax(scores, axis=-1)), v)


class PackedMultiheadAttention(nn.Module):
    """TU ``PackedMultiheadAttention``: ``G = 1 if first else M*gamma`` groups of ``num_heads`` heads each,
    block-diagonal (packed) in/out projections, torch's masks and ``scaled_dot_product_attention``.

    Call: ``(query, key=None, value=None, *, key_padding_mask=None, attn_mask=None, is_causal=False,
    train=False)`` with ``query [L, B, E_in]`` (``[B, L, E_in]`` if ``batch_first``; ``[L, E_in]`` unbatched),
    ``E_in = int(embed_dim * (1 if first else alpha))``; ``key=None`` means ``query`` and ``value=None``
    means ``key``. As in TU, the in-projection split follows the call: ``mha(x)`` / ``mha(x, x, x)`` is
    self-attention, ``mha(x, mem)`` / ``mha(x, mem, mem)`` encoder-decoder attention (same Python object:
    identity, like TU's ``is`` checks), three different arrays the general split (see
    :func:`_in_projection`); an unbatched query always takes the general split (TU unsqueezes each
    input). Masks: bool (True = masked) or float (added), ``attn_mask [L, S]`` or
    ``[B*H, L, S]``, ``key_padding_mask [B, S]``; ``is_causal`` needs ``attn_mask`` and, without a key
    padding mask, replaces it by the causal mask (TU). Returns the attention output only (TU returns
    ``(output, None)``), ``[L, B, E_out]`` with ``E_out = int(embed_dim * alpha)``, or
    ``[L, M*B, embed_dim]`` member-major when ``last`` (TU's ``l b (m e) -> l (m b) e``).

    Variables (TU's state-dict names and layouts): ``in_proj_weight [G, 3E/G, E_in/G]`` (or
    ``q/k/v_proj_weight [G, E/G, E_in/G or kdim/G or vdim/G]`` when ``kdim``/``vdim`` differ from
    ``embed_dim``), ``in_proj_bias [3E]``, ``bias_k``/``bias_v [1, 1, E]`` (``add_bias_kv``),
    ``out_proj_weight [G, E_out/G, E/G]``, ``out_proj_bias [E_out]``, with ``E = int(embed_dim * alpha)``.
    Attention-weight dropout in ``train`` uses the ``"dropout"`` rng. TU fails for ``first=True`` with
    ``alpha != 1`` (its width check); so do we, with a ValueError.
    """

    embed_dim: int
    num_heads: int
    alpha: float
    num_estimators: int
    gamma: int = 1
    dropout: float = 0.0
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    kdim: int | None = None
    vdim: int | None = None
    batch_first: bool = False
    first: bool = False
    last: bool = False

    def dims(self) -> dict:
        """TU's sizes: ``E, E_in, kdim, vdim`` (extended), ``G``, ``heads`` (total), ``E_out``, ``same``."""
        _check(self.alpha, self.gamma, self.num_estimators)
        kdim = self.embed_dim if self.kdim is None else self.kdim
        vdim = self.embed_dim if self.vdim is None else self.vdim
        aug = 1 if self.first else self.alpha
        d = dict(E=int(self.embed_dim * self.alpha), E_in=int(self.embed_dim * aug), kdim=int(kdim * aug),
                 vdim=int(vdim * aug), G=1 if self.first else self.num_estimators * int(self.gamma),
                 E_out=int(self.embed_dim * (self.num_estimators if self.last else self.alpha)),
                 same=kdim == self.embed_dim and vdim == self.embed_dim)
        d["heads"] = self.num_heads * d["G"]
        if d["E"] % d["heads"]:
            raise ValueError(f"{self.name}: embed_dim * alpha = {d['E']} must be divisible by "
                             f"num_heads * G = {d['heads']}")
        if d["E"] != d["E_in"]:
            raise ValueError(f"{self.name}: first=True needs alpha=1: TU checks the query width {d['E_in']} "
                             f"against embed_dim * alpha = {d['E']}")
        for key in ("E_in", "kdim", "vdim", "E_out"):
            if d[key] % d["G"]:
                raise ValueError(f"{self.name}: {key} = {d[key]} is not divisible by the {d['G']} groups")
        return d

    def _params(self, d: dict) -> dict:
        g, e = d["G"], d["E"]
        p = {}
        if d["same"]:
            shape = (g, 3 * e // g, d["E_in"] // g)
            p["in_proj_weight"] = self.param("in_proj_weight", _xavier_groups, shape)
        else:
            for n, width in (("q", d["E_in"]), ("k", d["kdim"]), ("v", d["vdim"])):
                shape = (g, e // g, width // g)
                p[f"{n}_proj_weight"] = self.param(f"{n}_proj_weight", _xavier_groups, shape)
        if self.bias:
            p["in_proj_bias"] = self.param("in_proj_bias", nn.initializers.zeros, (3 * e,), jnp.float32)
        if self.add_bias_kv:
            p["bias_k"] = self.param("bias_k", _xavier_normal_bias, (1, 1, e))
            p["bias_v"] = self.param("bias_v", _xavier_normal_bias, (1, 1, e))
        p["out_proj_weight"] = self.param("out_proj_weight", _xavier_groups, (g, d["E_out"] // g, e // g))
        if self.bias:
            p["out_proj_bias"] = self.param("out_proj_bias", nn.initializers.zeros, (d["E_out"],),
                                            jnp.float32)
        return p

    @nn.compact
    def __call__(self, query, key=None, value=None, *, key_padding_mask=None, attn_mask=None,
                 is_causal: bool = False, train: bool = False):
        key = query if key is None else key
        value = key if value is None else value
        mode = ("self" if query is key else "encdec") if key is value else "general"
        d = self.dims()
        p = self._params(d)
        batched = query.ndim == 3
        q, k, v = (jnp.asarray(t, jnp.float32) for t in (query, key, value))
        if not batched:
            if self.last:
                raise ValueError(f"{self.name}: last=True needs a batched query (TU's rearrange fails)")
            q, k, v = q[:, None], k[:, None], v[:, None]
            mode = "general"  # TU unsqueezes q, k and v separately: the identities are lost
            key_padding_mask = None if key_padding_mask is None else jnp.asarray(key_padding_mask)[None]
        elif self.batch_first:
            q, k, v = (jnp.swapaxes(t, 0, 1) for t in (q, k, v))
        if q.shape[-1] != d["E_in"]:
            raise ValueError(f"{self.name}: expected {d['E_in']} query features, got shape {query.shape}")
        tgt, b, src, h = q.shape[0], q.shape[1], k.shape[0], d["heads"]
        kpm = _canonical_mask(key_padding_mask, "key_padding_mask")
        mask, causal = _attention_mask(_canonical_mask(attn_mask, "attn_mask"), kpm, is_causal,
                                       (b, h, tgt, src), p, self.add_zero_attn)
        q, k, v = _in_projection(p, q, k, v, mode)
        if self.add_bias_kv:
            k = jnp.concatenate([k, jnp.broadcast_to(p["bias_k"], (1, b, d["E"]))], axis=0)
            v = jnp.concatenate([v, jnp.broadcast_to(p["bias_v"], (1, b, d["E"]))], axis=0)
        heads = lambda t: t.reshape(t.shape[0], b, h, -1).transpose(1, 2, 0, 3)  # noqa: E731  l b (h d) -> b h l d
        q, k, v = heads(q), heads(k), heads(v)
        if self.add_zero_attn:
            k, v = (jnp.pad(t, ((0, 0), (0, 0), (0, 1), (0, 0))) for t in (k, v))
        drop = nn.Dropout(self.dropout, deterministic=not train or self.dropout == 0.0)
        out = _sdpa(q, k, v, mask, causal, drop).transpose(2, 0, 1, 3).reshape(tgt, b, d["E"])
        out = packed_linear(out, p["out_proj_weight"], p.get("out_proj_bias"))
        if self.last:
            m = self.num_estimators
            out = out.reshape(tgt, b, m, -1).transpose(0, 2, 1, 3).reshape(tgt, m * b, -1)
        if not batched:
            return out[:, 0]
        return jnp.swapaxes(out, 0, 1) if self.batch_first else out


# ---------------------------------------------------------------------------------------- transformer
def _activation(activation) -> Callable:
    """TU's ``activation``: ``"relu"`` (``F.relu``, default), ``"gelu"`` (erf ``F.gelu``) or a callable."""
    if callable(activation):
        return activation
    if activation == "relu":
        return jax.nn.relu
    if activation == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    raise ValueError(f"`activation` must be 'relu', 'gelu' or a callable, got {activation!r}")


def _check_transformer(layer) -> None:
    if layer.last:
        raise ValueError(f"{type(layer).__name__}: last=True does not run in TU 0.13.0 (the residual adds "
                         f"[L, B, alpha*d_model] to the member-major [M*L, B, d_model]); "
                         f"use a PackedDense head")
    if layer.first and layer.alpha != 1:
        raise ValueError(f"{type(layer).__name__}: first=True needs alpha=1 (TU's attention width check)")


class _PackedTransformerBase(nn.Module):
    """Fields and blocks shared by the packed encoder/decoder layers (TU's ``__init__`` arguments)."""

    d_model: int
    nhead: int
    alpha: float
    num_estimators: int
    gamma: int = 1
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: str | Callable = "relu"
    layer_norm_eps: float = 1e-5
    bias: bool = True
    batch_first: bool = False
    norm_first: bool = False
    first: bool = False
    last: bool = False

    def _attention(self, first: bool) -> PackedMultiheadAttention:
        return PackedMultiheadAttention(self.d_model, self.nhead, self.alpha, self.num_estimators, self.gamma,
                                        dropout=self.dropout, bias=self.bias, batch_first=self.batch_first,
                                        first=first)

    def _feedforward(self) -> None:
        kw = dict(alpha=self.alpha, num_estimators=self.num_estimators, gamma=self.gamma, bias=self.bias)
        self.linear1 = PackedDense(self.d_model, self.dim_feedforward, **kw)
        self.linear2 = PackedDense(self.dim_feedforward, self.d_model, last=self.last, **kw)
        self.dropout_ff = nn.Dropout(self.dropout)

    def _norm(self, first: bool = False, last: bool = False) -> PackedLayerNorm:
        return PackedLayerNorm(self.d_model, self.num_estimators, self.alpha, self.layer_norm_eps,
                               first=first, last=last)

    def _ff_block(self, x, train: bool, dropout: nn.Dropout):
        hidden = self.dropout_ff(_activation(self.activation)(self.linear1(x)), deterministic=not train)
        return dropout(self.linear2(hidden), deterministic=not train)


class PackedTransformerEncoderLayer(_PackedTransformerBase):
    """TU ``PackedTransformerEncoderLayer``: packed self-attention + packed feed-forward, post-norm
    (``norm_first=False``) or pre-norm. Call ``(src, src_mask=None, src_key_padding_mask=None,
    is_causal=False, train=False)``, ``src [L, B, alpha*d_model]`` (``[B, L, .]`` if ``batch_first``) ->
    the same shape. Submodules (TU's names): ``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``.
    ``last=True`` and ``first=True`` with ``alpha != 1`` do not run in TU and are refused."""

    def setup(self):
        _check_transformer(self)
        self.self_attn = self._attention(self.first)
        self._feedforward()
        self.norm1 = self._norm(first=self.first and self.norm_first)
        self.norm2 = self._norm(last=self.last and not self.norm_first)
        self.dropout1, self.dropout2 = nn.Dropout(self.dropout), nn.Dropout(self.dropout)

    def _sa_block(self, x, mask, kpm, is_causal: bool, train: bool):
        x = self.self_attn(x, attn_mask=mask, key_padding_mask=kpm, is_causal=is_causal, train=train)
        return self.dropout1(x, deterministic=not train)

    def __call__(self, src, src_mask=None, src_key_padding_mask=None, is_causal: bool = False,
                 train: bool = False):
        x = jnp.asarray(src, jnp.float32)
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal, train)
            return x + self._ff_block(self.norm2(x), train, self.dropout2)
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal, train))
        return self.norm2(x + self._ff_block(x, train, self.dropout2))


class PackedTransformerDecoderLayer(_PackedTransformerBase):
    """TU ``PackedTransformerDecoderLayer``: packed self-attention, encoder-decoder attention on ``memory``
    and feed-forward, post- or pre-norm. Call ``(tgt, memory, tgt_mask=None, memory_mask=None,
    tgt_key_padding_mask=None, memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False,
    train=False)``; ``tgt [L, B, alpha*d_model]``, ``memory [S, B, alpha*d_model]`` (batch first if
    ``batch_first``). Submodules: ``self_attn``, ``multihead_attn``, ``linear1``, ``linear2``,
    ``norm1``..``norm3``. ``last=True`` and ``first=True`` with ``alpha != 1`` are refused (as above)."""

    def setup(self):
        _check_transformer(self)
        self.self_attn = self._attention(self.first)
        self.multihead_attn = self._attention(False)
        self._feedforward()
        self.norm1 = self._norm(first=self.first and self.norm_first)
        self.norm2 = self._norm()
        self.norm3 = self._norm(last=self.last and not self.norm_first)
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(self.dropout) for _ in range(3))

    def _sa_block(self, x, mask, kpm, is_causal: bool, train: bool):
        x = self.self_attn(x, attn_mask=mask, key_padding_mask=kpm, is_causal=is_causal, train=train)
        return self.dropout1(x, deterministic=not train)

    def _mha_block(self, x, memory, mask, kpm, is_causal: bool, train: bool):
        x = self.multihead_attn(x, memory, attn_mask=mask, key_padding_mask=kpm, is_causal=is_causal,
                                train=train)
        return self.dropout2(x, deterministic=not train)

    def __call__(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                 memory_key_padding_mask=None, tgt_is_causal: bool = False, memory_is_causal: bool = False,
                 train: bool = False):
        x, mem = jnp.asarray(tgt, jnp.float32), jnp.asarray(memory, jnp.float32)
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal, train)
            x = x + self._mha_block(self.norm2(x), mem, memory_mask, memory_key_padding_mask,
                                    memory_is_causal, train)
            return x + self._ff_block(self.norm3(x), train, self.dropout3)
        x = self.norm1(x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal, train))
        mha = self._mha_block(x, mem, memory_mask, memory_key_padding_mask, memory_is_causal, train)
        x = self.norm2(x + mha)
        return self.norm3(x + self._ff_block(x, train, self.dropout3))


def split_members(logits, num_members: int):
    """Member-major ``[M*B, ...]`` (TU's ``(m b)`` layout) -> ``[M, B, ...]``."""
    if logits.shape[0] % num_members:
        raise ValueError(f"leading axis {logits.shape[0]} is not a multiple of num_members={num_members}")
    return logits.reshape(num_members, logits.shape[0] // num_members, *logits.shape[1:])
