"""torch's default initialisation of ``Conv2d`` / ``Linear`` as Flax initialisers.

torch's ``reset_parameters`` draws the weight with ``kaiming_uniform_(a=sqrt(5))``, i.e.
``U(-b, b)`` with ``b = gain * sqrt(3 / fan_in)`` and ``gain = sqrt(2 / (1 + a^2)) = sqrt(1/3)``, so
``b = 1 / sqrt(fan_in)``; the bias is ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with the weight's
``fan_in`` (``in_channels / groups * kh * kw`` for a conv, ``in_features`` for a linear layer).
The law is torch's; the random stream is JAX's (same distribution, different draws).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["torch_bias_init", "torch_kernel_init", "torch_uniform_init"]


def torch_uniform_init(fan_in: int):
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: torch's default for Conv/Linear weights and biases."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_kernel_init(key, shape, dtype=jnp.float32):
    """torch's ``kaiming_uniform_(a=sqrt(5))`` for a Flax kernel whose last axis is the output:
    conv ``[kh, kw, in/groups, out]`` or dense ``[in, out]`` (``fan_in = prod(shape[:-1])``)."""
    return torch_uniform_init(math.prod(shape[:-1]))(key, shape, dtype)


def torch_bias_init(fan_in: int):
    """torch's default bias init of a layer whose weight has ``fan_in`` inputs per output."""
    return torch_uniform_init(fan_in)
