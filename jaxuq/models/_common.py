"""Shared pieces for the model zoo: activations by name, torch-style conv."""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxuq.nn import Conv
from jaxuq.nn.init import torch_bias_init, torch_kernel_init

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),  # torch default negative_slope
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch default (erf)
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "tanh": jax.numpy.tanh,
    "sigmoid": jax.nn.sigmoid,
}


def activation(name: str | Callable) -> Callable:
    """An activation by torch-functional name (``"relu"``, ``"gelu"``, ...) or a callable."""
    if callable(name):
        return name
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def conv(features: int, k: int, stride: int = 1, pad: int = 0, *, bias: bool, groups: int = 1,
         dilation: int = 1, name: str, **init) -> Conv:
    """``torch.nn.Conv2d(.., k, stride, padding=pad, groups, bias)`` in NHWC, explicit padding;
    ``init``: optional ``kernel_init`` / ``bias_init`` (see :func:`torch_inits`)."""
    return Conv(
        features,
        (k, k),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=bias,
        name=name,
        **init,
    )


def torch_inits(enabled: bool, fan_in: int) -> dict:
    """``{kernel_init, bias_init}`` with torch's default Conv/Linear law for a layer with ``fan_in``
    inputs per output (``jaxuq.nn.init``) when ``enabled``, else ``{}`` (Flax's defaults)."""
    if not enabled:
        return {}
    return {"kernel_init": torch_kernel_init, "bias_init": torch_bias_init(fan_in)}
