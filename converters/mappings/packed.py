"""Mapping family ``packed``: TU Packed-Ensembles checkpoints (``packed_lenet``, ``packed_resnet``).

The explicit table (torch key -> Flax path + transform) is generated from the Flax template of the
model with one rule per leaf kind, then applied strictly with :func:`converters.mappings.apply_table`:

================================================  =====================================  =================
Flax leaf                                         torch key                              transform
================================================  =====================================  =================
``params/<p>/conv/kernel`` [kh, kw, I/G, O]       ``<p>.conv.weight`` (O, I/G, kh, kw)   ``oihw->hwio``
``params/<p>/conv/bias``                          ``<p>.conv.bias``                      id
``params/<packed linear>/kernel`` [G, o, i]       ``<p>.weight`` (G, o, i)               id
``params/<bn>/scale``, ``bias``                   ``<p>.weight``, ``<p>.bias``           id
``batch_stats/<bn>/mean``, ``var``                ``<p>.running_mean``, ``running_var``  id
--                                                ``<p>.num_batches_tracked``            consumed
================================================  =====================================  =================

Path rule: Flax module names ``layer1_0`` / ``shortcut_1`` are torch's ``layer1.0`` / ``shortcut.1``
(``<name>_<int>`` -> ``<name>.<int>``). A grouped conv keeps torch's contiguous group layout, so the
plain OIHW -> HWIO transpose gives the ``feature_group_count`` kernel.
Architectures and kwargs (TU's): ``packed_lenet(in_channels, num_classes, num_estimators, alpha, gamma)``,
``packed_resnet(in_channels, num_classes, arch, num_estimators, alpha, gamma, style, ...)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from converters.mappings import Table, apply_table, flax_leaf_to_torch, template_table

__all__ = ["ARCHS", "build", "flax_leaf_to_torch", "infer", "table", "torch_reference", "torch_to_flax"]


def _template(model_name: str, kwargs: dict):
    # not converters.mappings.build_template: its positional ``arch`` collides with TU's ``arch=18`` kwarg
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    module, shape = ARCHS[model_name](**kwargs)
    return module, jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape, jnp.float32)))


def table(model_name: str, /, **kwargs) -> Table:
    """The explicit mapping table of ``model_name`` built with ``kwargs``."""
    return template_table(_template(model_name, kwargs)[1])


def torch_to_flax(state_dict: Mapping[str, Any], template: Any, source: str = "<state_dict>"):
    """Strict conversion of a TU packed state dict into ``template``'s variables (float32 numpy)."""
    return apply_table(state_dict, template_table(template), template, source)


def _packed_lenet(**kw):
    from jaxuq.models.lenet import packed_lenet  # noqa: PLC0415

    return packed_lenet(**kw), (1, 28, 28, kw.get("in_channels", 1))


def _packed_resnet(**kw):
    from jaxuq.models.resnet import packed_resnet  # noqa: PLC0415

    size = 32 if str(kw.get("style", "imagenet")) in ("cifar", "ResNetStyle.CIFAR") else 64
    return packed_resnet(**kw), (1, size, size, kw["in_channels"])


ARCHS = {"packed_lenet": _packed_lenet, "packed_resnet": _packed_resnet}


def build(model_name: str, state_dict: Mapping[str, Any], /, *, source: str = "<state_dict>", **kwargs):
    """``(module, variables)``: ``model_name`` (``packed_lenet`` / ``packed_resnet``) built with TU's
    ``kwargs``, loaded strictly from ``state_dict``."""
    if model_name not in ARCHS:
        raise ValueError(f"unknown packed model {model_name!r}; known: {sorted(ARCHS)}")
    module, template = _template(model_name, kwargs)
    return module, torch_to_flax(state_dict, template, source)


def infer(state_dict: Mapping[str, Any]) -> tuple[str, dict] | None:
    """Recognise a TU ``packed_resnet`` (``linear.weight`` is (M, C, 512*alpha*expansion/M) since TU's
    head uses gamma=1). ``packed_lenet`` is not inferable (M and gamma are confounded): pass ``--arch``."""
    if "conv1.conv.weight" not in state_dict or "linear.weight" not in state_dict:
        return None
    w = np.shape(state_dict["linear.weight"])
    stem = np.shape(state_dict["conv1.conv.weight"])
    if len(w) != 3 or len(stem) != 4:
        return None
    m, c = int(w[0]), int(w[1])
    blocks = [
        len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")}) for i in (1, 2, 3, 4)
    ]
    bottleneck = any(k.endswith("conv3.conv.weight") for k in state_dict)
    from jaxuq.models.resnet import BASIC_ARCHS as _BASIC
    from jaxuq.models.resnet import RESNET_BLOCKS  # noqa: PLC0415

    blocks = [b for b in blocks if b]
    arch = next((a for a, nb in RESNET_BLOCKS.items() if nb == blocks and (a not in _BASIC) == bottleneck),
                None)
    if arch is None:
        return None
    in_planes = 16 if arch in (20, 44, 56, 110, 1202) else 64
    alpha = stem[0] / in_planes
    alpha = int(alpha) if float(alpha).is_integer() else float(alpha)
    gamma = 1
    for k, v in state_dict.items():  # the largest gamma a grouped conv actually uses (after reduction)
        if re.match(r"layer\d+\.\d+\.(conv2|conv3)\.conv\.weight$", k):
            ipg = np.shape(v)[1]
            src = _input_channels(state_dict, k)
            if src:
                gamma = max(gamma, src // ipg // m)
    style = "cifar" if stem[2] == 3 else "imagenet"
    kw = dict(in_channels=int(stem[1]), num_classes=c, arch=arch, num_estimators=m, alpha=alpha,
              gamma=int(gamma), style=style, conv_bias="conv1.conv.bias" in state_dict)
    return "packed_resnet", kw


def _input_channels(sd: Mapping[str, Any], key: str) -> int | None:
    """Number of input channels of the conv ``key`` = the width of the BN feeding it."""
    m = re.match(r"(layer\d+)\.(\d+)\.(conv2|conv3)\.conv\.weight$", key)
    layer, idx, which = m.groups()
    bn = f"{layer}.{idx}.{'bn1' if which == 'conv2' else 'bn2'}.weight"
    return int(np.shape(sd[bn])[0]) if bn in sd else None


def torch_reference(arch: str, /, **kwargs):
    """TU's torch module with the same state-dict keys (for ``jaxuq-convert convert --verify``)."""
    if arch == "packed_lenet":
        from torch_uncertainty.models.classification.lenet import packed_lenet  # noqa: PLC0415

        return packed_lenet(**kwargs)
    if arch == "packed_resnet":
        from torch_uncertainty.models.classification.resnet.packed import packed_resnet  # noqa: PLC0415

        return packed_resnet(**kwargs)
    raise ValueError(f"unknown packed arch {arch!r}")
