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

Initialisation follows torch's defaults (``U(+-1/sqrt(fan_in))`` for weights and biases); the
streams differ from torch's, so parity tests load converted weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxuq.nn.conv import Conv
from jaxuq.nn.init import torch_uniform_init

__all__ = [
    "PackedConv",
    "PackedDense",
    "packed_conv_sizes",
    "packed_dense_sizes",
    "split_members",
    "torch_uniform_init",
]


def _check(alpha: float, gamma: int, num_estimators: int) -> None:
    if alpha is None or alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if int(gamma) != gamma or gamma <= 0:
        raise ValueError(f"gamma must be an int >= 1, got {gamma}")
    if int(num_estimators) != num_estimators or num_estimators <= 0:
        raise ValueError(f"num_estimators must be an int >= 1, got {num_estimators}")


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


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)


class PackedConv(nn.Module):
    """TU ``PackedConv2d`` on NHWC inputs.

    ``in_channels`` / ``out_channels`` are the nominal (per-network, pre-alpha) sizes, exactly as in
    TU; the input must have ``ext_in`` channels. Input ``x: [B, H, W, ext_in]``; output
    ``[B, H', W', ext_out]``, or ``[M*B, H', W', out_channels]`` (member-major) when ``last``.
    """

    in_channels: int
    out_channels: int
    kernel_size: int | Sequence[int]
    alpha: float
    num_estimators: int
    gamma: int = 1
    stride: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    minimum_channels_per_group: int = 64
    bias: bool = True
    first: bool = False
    last: bool = False
    dtype: jnp.dtype | None = None

    def sizes(self) -> tuple[int, int, int]:
        return packed_conv_sizes(
            self.in_channels, self.out_channels, self.alpha, self.num_estimators, self.gamma,
            self.groups, self.minimum_channels_per_group, self.first, self.last,
        )

    @nn.compact
    def __call__(self, x):
        ext_in, ext_out, g = self.sizes()
        if x.shape[-1] != ext_in:
            raise ValueError(f"{self.name}: expected {ext_in} input channels (NHWC), got shape {x.shape}")
        kh, kw = _pair(self.kernel_size)
        ph, pw = _pair(self.padding)
        fan_in = (ext_in // g) * kh * kw
        out = Conv(
            ext_out, (kh, kw), strides=_pair(self.stride), padding=((ph, ph), (pw, pw)),
            kernel_dilation=_pair(self.dilation), feature_group_count=g, use_bias=self.bias,
            dtype=self.dtype, kernel_init=torch_uniform_init(fan_in), bias_init=torch_uniform_init(fan_in),
            name="conv",
        )(x)
        if self.last:
            m = self.num_estimators
            b = out.shape[0]
            out = out.reshape(*out.shape[:-1], m, ext_out // m)
            out = jnp.moveaxis(out, -2, 0).reshape(m * b, *out.shape[1:-2], ext_out // m)
        return out


class PackedDense(nn.Module):
    """TU ``PackedLinear``: ``x: [B, ..., ext_in]`` -> ``[B, ..., ext_out]`` or, if ``last``,
    ``[M*B, ..., out_features]`` member-major (TU's ``"b ... (m h) -> (m b) ... h"``).

    ``implementation`` is accepted for TU compatibility ('einsum', 'conv1d', 'full', 'sparse' are
    the same function); the grouped einsum ``"...gi,goi->...go"`` is always used.
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
        xg = x.reshape(*x.shape[:-1], g, ext_in // g)
        dt = self.dtype or jnp.result_type(x.dtype, jnp.float32)
        out = jnp.einsum("...gi,goi->...go", xg.astype(dt), w.astype(dt)).reshape(*x.shape[:-1], ext_out)
        if self.bias:
            out = out + self.param("bias", torch_uniform_init(fan_in), (ext_out,), jnp.float32).astype(dt)
        if self.last:
            m = self.num_estimators
            out = out.reshape(*out.shape[:-1], m, ext_out // m)
            out = jnp.moveaxis(out, -2, 0).reshape(m * x.shape[0], *x.shape[1:-1], ext_out // m)
        return out


def split_members(logits, num_members: int):
    """Member-major ``[M*B, ...]`` (TU's ``(m b)`` layout) -> ``[M, B, ...]``."""
    if logits.shape[0] % num_members:
        raise ValueError(f"leading axis {logits.shape[0]} is not a multiple of num_members={num_members}")
    return logits.reshape(num_members, logits.shape[0] // num_members, *logits.shape[1:])
