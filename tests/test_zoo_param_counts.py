"""Parameter counts of every TU classification model jaxuq registers equal TU 0.13.0's, per form, arch and
style: TU's module is built on torch's ``meta`` device (no memory, no init), jaxuq's variables through
``jax.eval_shape``. TU counts a Masksembles mask as a (``requires_grad=False``) parameter; jaxuq keeps it
as the ``constants`` collection: the trainable counts are compared, and the masks' sizes separately."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from tests.helpers import require

pytestmark = pytest.mark.parity

M = dict(num_estimators=4)
FORMS = {"resnet": {}, "batched_resnet": M, "masked_resnet": {**M, "scale": 2.0}, "mimo_resnet": M,
         "packed_resnet": {**M, "alpha": 2, "gamma": 2}}
WRN = {"wideresnet28x10": {}, "batched_wideresnet28x10": M, "masked_wideresnet28x10": {**M, "scale": 2.0},
       "mimo_wideresnet28x10": M, "packed_wideresnet28x10": {**M, "alpha": 2, "gamma": 2}}


def _cases():
    out = []
    for name, extra in FORMS.items():
        for arch in (18, 34, 50, 101, 152):
            for style in ("cifar", "imagenet"):
                marks = [pytest.mark.slow] if arch >= 101 else []
                kw = dict(in_channels=3, num_classes=10, arch=arch, style=style, **extra)
                out.append(pytest.param(name, kw, marks=marks, id=f"{name}{arch}-{style}"))
    for name, extra in WRN.items():
        for style in ("cifar", "imagenet"):
            out.append(pytest.param(name, dict(in_channels=3, num_classes=10, style=style, **extra),
                                    id=f"{name}-{style}"))
    for arch in (11, 13, 16, 19):
        for style in ("cifar", "imagenet"):
            out.append(pytest.param("vgg", dict(in_channels=3, num_classes=10, arch=arch, style=style),
                                    id=f"vgg{arch}-{style}"))
            out.append(pytest.param("packed_vgg", dict(in_channels=3, num_classes=10, arch=arch, style=style,
                                                       alpha=2, num_estimators=4, gamma=2),
                                    id=f"packed_vgg{arch}-{style}"))
    out += [pytest.param("vgg", dict(in_channels=3, num_classes=10, arch=11, norm="batchnorm", groups=2),
                         id="vgg11-bn-groups"),
            pytest.param("lenet", dict(in_channels=1, num_classes=10), id="lenet"),
            pytest.param("packed_lenet", dict(in_channels=1, num_classes=10, num_estimators=4, alpha=2),
                         id="packed_lenet"),
            pytest.param("batchensemble_lenet", dict(in_channels=1, num_classes=10, num_estimators=4),
                         id="batchensemble_lenet"),
            pytest.param("batchensemble_lenet", dict(in_channels=2, num_classes=7, num_estimators=3, norm="none",
                                                     groups=2), id="batchensemble_lenet-groups")]
    return out


@pytest.mark.parametrize("name,kw", _cases())
def test_param_counts_equal_tu(name, kw):
    torch = require("torch")
    require("torch_uncertainty")
    from converters.torch_refs import torch_model
    from jaxuq import models

    with torch.device("meta"):
        tm = torch_model(name, **kw)
    tu_trainable = sum(p.numel() for p in tm.parameters() if p.requires_grad)
    tu_masks = sum(p.numel() for n, p in tm.named_parameters() if n.endswith("mask.masks"))
    assert tu_trainable + tu_masks == sum(p.numel() for p in tm.parameters())
    module = models.get(name, **kw)
    size = 32 if kw.get("style") == "cifar" else (28 if "lenet" in name else 64)
    v = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, kw["in_channels"]))))
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(v["params"]))
    masks = [x for p, x in jax.tree_util.tree_flatten_with_path(v.get("constants", {}))[0]
             if str(p[-1].key) == "masks"]
    assert n_params == tu_trainable
    assert sum(math.prod(x.shape) for x in masks) == tu_masks
