"""torch's default Conv/Linear initialisation as Flax initialisers (``jaxuq.nn.init``) and
``lenet(torch_init=True)``: same law as torch's ``reset_parameters`` (bounds 1/sqrt(fan_in), uniform)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq.models.lenet import lenet
from jaxuq.models.resnet import resnet
from jaxuq.nn.init import torch_bias_init, torch_kernel_init

# LeNet(1, 10): flax leaf -> fan_in of its layer (in_channels/groups * kh * kw, or in_features)
FAN_IN = {"conv1": 25, "conv2": 150, "fc1": 256, "fc2": 120, "fc3": 84}


def _check_uniform(a: np.ndarray, bound: float, what: str):
    a = np.asarray(a, np.float64).ravel()
    assert np.abs(a).max() <= bound, what
    # U(-b, b): sd b/sqrt(3), max |a| close to b; loose enough for 6 biases, tight enough to catch
    # Flax's lecun-normal kernels (sd 1/sqrt(fan_in) = sqrt(3) x the uniform one) and zero biases
    if a.size >= 100:
        assert abs(a.std() / (bound / math.sqrt(3)) - 1) < 0.15, (what, a.std(), bound)
    assert np.abs(a).max() > 0.5 * bound, what


def test_torch_kernel_init_bound_from_shape():
    k = torch_kernel_init(jax.random.key(0), (5, 5, 6, 16))  # conv HWIO: fan_in 150
    _check_uniform(k, 1 / math.sqrt(150), "conv kernel")
    k = torch_kernel_init(jax.random.key(1), (256, 120))  # dense: fan_in 256
    _check_uniform(k, 1 / math.sqrt(256), "dense kernel")
    b = torch_bias_init(256)(jax.random.key(2), (120,))
    _check_uniform(b, 1 / math.sqrt(256), "bias")


def test_lenet_torch_init_matches_torch_law():
    params = lenet(1, 10, torch_init=True).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    for layer, fan_in in FAN_IN.items():
        for leaf in ("kernel", "bias"):
            _check_uniform(params[layer][leaf], 1 / math.sqrt(fan_in), f"{layer}.{leaf}")


def test_lenet_torch_init_same_bounds_as_torch():
    torch = pytest.importorskip("torch")
    from torch_uncertainty.models.classification import lenet as tu_lenet  # noqa: PLC0415

    torch.manual_seed(0)
    sd = tu_lenet(in_channels=1, num_classes=10).state_dict()
    for layer, fan_in in FAN_IN.items():
        for tkey in ("weight", "bias"):
            t = sd[f"{layer}.{tkey}"].numpy()
            _check_uniform(t, 1 / math.sqrt(fan_in), f"torch {layer}.{tkey}")  # the law we copy


def test_lenet_default_init_unchanged():
    """``torch_init=False`` keeps Flax's initialisers (zero biases)."""
    params = lenet(1, 10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    assert all(not np.any(np.asarray(params[k]["bias"])) for k in FAN_IN)


def test_resnet_torch_init_follows_torch_law():
    """``resnet(torch_init=True)`` (the plain form, as TU's ensemble forms) draws the stem conv and the
    head from torch's law; the default keeps Flax's (lecun-normal kernels fail the uniform check)."""

    x = jnp.zeros((1, 8, 8, 3))
    params = resnet(3, 10, 18, style="cifar", width_multiplier=0.25, torch_init=True).init(
        jax.random.key(0), x)["params"]
    _check_uniform(params["conv1"]["kernel"], 1 / math.sqrt(27), "conv1.kernel")
    _check_uniform(params["linear"]["kernel"], 1 / math.sqrt(128), "linear.kernel")
    _check_uniform(params["linear"]["bias"], 1 / math.sqrt(128), "linear.bias")
    flax_params = resnet(3, 10, 18, style="cifar", width_multiplier=0.25).init(jax.random.key(0), x)["params"]
    with pytest.raises(AssertionError):
        _check_uniform(flax_params["linear"]["kernel"], 1 / math.sqrt(128), "flax linear.kernel")
