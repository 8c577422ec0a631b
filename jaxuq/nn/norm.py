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

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["MC_ACCUMULATE", "BatchNorm", "LayerNorm"]

MC_ACCUMULATE = "mc_batch_norm"  # variables collection of the MC-BatchNorm accumulate flags


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
        axes = tuple(range(x.ndim - 1))
        if ura and self.has_variable(MC_ACCUMULATE, "accumulate"):
            n = x.size // c
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - mean), axis=axes) * (n / max(n - 1, 1))  # torch var(unbiased=True)
            if self.is_mutable_collection("batch_stats") and not self.is_initializing():
                ra_mean.value, ra_var.value = mean, var
        elif ura:
            mean, var = ra_mean.value, ra_var.value
        else:
            n = 1
            for a in axes:
                n *= x.shape[a]
            mean = jnp.mean(xf, axis=axes)
            if self.axis_name is not None:
                mean = jax.lax.pmean(mean, self.axis_name)
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
                n = n * jax.lax.psum(1, self.axis_name)
            if not self.is_initializing():
                unbiased = var * (n / max(n - 1, 1))  # torch: unbiased running variance
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
                ra_var.value = m * ra_var.value + (1.0 - m) * unbiased
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
