"""Convolutions with torch semantics that are faster than ``lax.conv`` on XLA:CPU for some shapes."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["DepthwiseConv2d"]


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
