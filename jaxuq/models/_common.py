"""Shared pieces for the model zoo: activations by name, torch-style conv."""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxuq.nn import Conv, ConvMaxPool
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
         dilation: int = 1, name: str, max_pool: int = 0, relu: bool = False, **init) -> Conv:
    """``torch.nn.Conv2d(.., k, stride, padding=pad, groups, bias)`` in NHWC, explicit padding;
    ``init``: optional ``kernel_init`` / ``bias_init`` (see :func:`torch_inits`); ``max_pool``: the output
    (after a ReLU if ``relu``) max-pooled with non-overlapping windows of that size
    (:class:`jaxuq.nn.ConvMaxPool`)."""
    if relu and not max_pool:
        raise ValueError("relu=True needs max_pool (a fused conv -> ReLU -> max_pool block)")
    extra = {"max_pool": max_pool, "relu": relu} if max_pool else {}
    return (ConvMaxPool if max_pool else Conv)(
        features,
        (k, k),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=bias,
        name=name,
        **extra,
        **init,
    )


def torch_inits(enabled: bool, fan_in: int) -> dict:
    """``{kernel_init, bias_init}`` with torch's default Conv/Linear law for a layer with ``fan_in``
    inputs per output (``jaxuq.nn.init``) when ``enabled``, else ``{}`` (Flax's defaults)."""
    if not enabled:
        return {}
    return {"kernel_init": torch_kernel_init, "bias_init": torch_bias_init(fan_in)}
