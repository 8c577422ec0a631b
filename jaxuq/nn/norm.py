"""Normalisation layers with PyTorch semantics (NHWC / channels-last).

``BatchNorm`` matches ``torch.nn.BatchNorm2d`` (and ``BatchNorm1d``) bit-for-bit in structure:

- eval (``use_running_average=True``): ``y = (x - running_mean) / sqrt(running_var + eps) * scale + bias``;
- train: normalise with the batch mean and the *biased* batch variance (two-pass, fp32), and update
  ``running = momentum * running + (1 - momentum) * batch`` with the *unbiased* batch variance
  ``var * n / (n - 1)`` (``n`` = number of reduced elements, i.e. B*H*W) — torch's rule. Flax's
  ``nn.BatchNorm`` stores the biased variance, hence this layer. ``momentum=0.9`` here is torch's
  ``momentum=0.1``.

Variables: ``params/{scale, bias}`` [C], ``batch_stats/{mean, var}`` [C] (init 1, 0, 0, 1 as torch).
The running statistics are not updated while the module is being initialised (like Flax).

MC-BatchNorm (TU ``MCBatchNorm2d`` with ``accumulate=True``): in eval mode, when the variables carry a flag
``MC_ACCUMULATE/<layer path>/accumulate`` (set by ``jaxuq.calibration.mc_batch_norm``), the layer
normalises with the current batch's mean and *unbiased* variance and, if ``batch_stats`` is mutable,
stores them as its statistics (a replacement, not a running average).
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxuq.nn.conv import _like

__all__ = ["MC_ACCUMULATE", "BatchNorm", "LayerNorm"]

MC_ACCUMULATE = "mc_batch_norm"  # variables collection of the MC-BatchNorm accumulate flags


# --------------------------------------------------------------------------------------------------------
# Per-channel sums over the batch (and spatial) axes as matrix products on CPU.
#
# XLA:CPU reduces an NHWC tensor over its leading axes (keeping C, the minor axis) at ~140 M elements/s:
# in ResNet-18 training (batch 128, 32x32) the BatchNorm statistics and their gradients took 2.3 s of a
# 4.0 s step. The same sums as products with vectors of ones run on the matrix kernels (a 2.4 s step), in
# two levels (more precise than XLA:CPU's own reduction: TU's one-step BatchNorm ResNet parity went from
# 2e-5 to 2e-7). ``_channel_sum`` and ``_channel_broadcast`` are each other's transposes (custom VJPs),
# so autodiff of the layer emits only these sums too; off CPU they are ``jnp.sum`` / ``jnp.broadcast_to``.
# --------------------------------------------------------------------------------------------------------


def _colsum(z, block: int = 256):
    """``z [..., C]`` -> ``[C]`` in two levels (blocks of <= 256 rows, then the block sums), each a matrix
    product: relative error 1e-6 for 128x32x32x64 inputs where one long product gives 1.2e-5."""
    c = z.shape[-1]
    m = z.size // c
    while m % block:
        block //= 2
    blocks = z.reshape(m // block, block, c)
    ones = jnp.ones((m // block, block), z.dtype)
    part = jax.lax.dot_general(blocks, ones, (((1,), (1,)), ((0,), (0,))))  # [m / block, C]
    return jnp.dot(jnp.ones((m // block,), z.dtype), part)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _sum_to_channels(z, shape):
    return _colsum(z)


def _sum_fwd(z, shape):
    return _colsum(z), None


def _sum_bwd(shape, _, ct):
    return (jnp.broadcast_to(ct, shape),)


_sum_to_channels.defvjp(_sum_fwd, _sum_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _broadcast_channels(v, shape):
    return jnp.broadcast_to(v, shape)


def _bcast_fwd(v, shape):
    return jnp.broadcast_to(v, shape), v


def _bcast_bwd(shape, v, ct):
    return (_like(_colsum(ct), v),)


_broadcast_channels.defvjp(_bcast_fwd, _bcast_bwd)


def _channel_sum(z):
    """``z [..., C]`` summed over every axis but the last."""
    if jax.default_backend() == "cpu":
        return _sum_to_channels(z, z.shape)
    return jnp.sum(z, axis=tuple(range(z.ndim - 1)))


def _channel_broadcast(v, shape):
    """``v [C]`` broadcast to ``shape [..., C]``."""
    if jax.default_backend() == "cpu":
        return _broadcast_channels(v, tuple(shape))
    return jnp.broadcast_to(v, shape)


class BatchNorm(nn.Module):
    """Torch-parity BatchNorm over the last axis. Input ``x: [..., C]`` (e.g. ``[N, H, W, C]``).

    Attributes: ``use_running_average`` (may be given at call time instead), ``momentum`` (Flax decay:
    0.9 == torch 0.1), ``epsilon`` (1e-5), ``use_scale``/``use_bias`` (torch ``affine``), ``axis_name``
    (cross-device batch statistics under ``pmap``/``shard_map``: the batch is the union of shards).
    """

    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    axis_name: str | None = None
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        ura = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32) if self.use_scale else None
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32) if self.use_bias else None

        xf = x.astype(jnp.float32)
        n = x.size // c
        if ura and self.has_variable(MC_ACCUMULATE, "accumulate"):
            mean = _channel_sum(xf) / n
            var = _channel_sum(jnp.square(xf - mean)) / max(n - 1, 1)  # torch var(unbiased=True)
            if self.is_mutable_collection("batch_stats") and not self.is_initializing():
                ra_mean.value, ra_var.value = mean, var
        elif ura:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean = _channel_sum(xf) / n
            if self.axis_name is not None:
                mean = jax.lax.pmean(mean, self.axis_name)
            centred = xf - _channel_broadcast(mean, xf.shape)
            var = _channel_sum(jnp.square(centred)) / n
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
                n = n * jax.lax.psum(1, self.axis_name)
            if not self.is_initializing():
                unbiased = var * (n / max(n - 1, 1))  # torch: unbiased running variance
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * jax.lax.stop_gradient(mean)
                ra_var.value = m * ra_var.value + (1.0 - m) * jax.lax.stop_gradient(unbiased)
            factor = jax.lax.rsqrt(var + self.epsilon) * (scale if scale is not None else 1.0)
            y = centred * _channel_broadcast(factor, xf.shape)
            if bias is not None:
                y = y + _channel_broadcast(bias, xf.shape)
            return y.astype(self.dtype or x.dtype)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        if scale is not None:
            y = y * scale
        if bias is not None:
            y = y + bias
        return y.astype(self.dtype or x.dtype)


class LayerNorm(nn.Module):
    """``torch.nn.LayerNorm(C)`` over the last axis (two-pass biased variance, eps 1e-5).

    Variables ``params/{scale, bias}`` [C] (torch ``weight``/``bias``)."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(x.dtype)
