"""Mapping family ``packed``: TU Packed-Ensembles checkpoints (``packed_lenet``, ``packed_resnet``,
``packed_wideresnet28x10``, ``packed_vgg``).

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
``packed_resnet(in_channels, num_classes, arch, num_estimators, alpha, gamma, style, ...)``,
``packed_wideresnet28x10(in_channels, num_classes, num_estimators, alpha, gamma, ...)``,
``packed_vgg(in_channels, num_classes, arch, alpha, num_estimators, gamma, ...)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from converters.mappings import Table, apply_table, flax_leaf_to_torch, template_table
from converters.mappings._shapes import shape, style_of, template, wrn_widen

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


def _packed_wrn(**kw):
    from jaxuq.models.wideresnet import packed_wideresnet28x10  # noqa: PLC0415

    return template(packed_wideresnet28x10, kw)


def _packed_vgg(**kw):
    from jaxuq.models.vgg import packed_vgg  # noqa: PLC0415

    return template(packed_vgg, kw)


ARCHS = {"packed_lenet": _packed_lenet, "packed_resnet": _packed_resnet,
         "packed_wideresnet28x10": _packed_wrn, "packed_vgg": _packed_vgg}


def build(model_name: str, state_dict: Mapping[str, Any], /, *, source: str = "<state_dict>", **kwargs):
    """``(module, variables)``: ``model_name`` (``packed_lenet`` / ``packed_resnet``) built with TU's
    ``kwargs``, loaded strictly from ``state_dict``."""
    if model_name not in ARCHS:
        raise ValueError(f"unknown packed model {model_name!r}; known: {sorted(ARCHS)}")
    module, template = _template(model_name, kwargs)
    return module, torch_to_flax(state_dict, template, source)


def infer(state_dict: Mapping[str, Any]) -> tuple[str, dict] | None:
    """Recognise a TU ``packed_resnet`` / ``packed_wideresnet28x10`` (their heads use gamma=1, so
    ``linear.weight`` is ``(M, C, ...)``) or ``packed_vgg`` (assuming gamma=1: its head is ``(M*gamma,
    C/gamma, ...)``, so M and gamma are confounded; pass ``--arch`` for gamma > 1). ``packed_lenet`` is not
    inferable (M and gamma are confounded): pass ``--arch``."""
    if "features.0.conv.weight" in state_dict:
        return _infer_vgg(state_dict)
    if "conv1.conv.weight" not in state_dict or "linear.weight" not in state_dict:
        return None
    w = np.shape(state_dict["linear.weight"])
    stem = np.shape(state_dict["conv1.conv.weight"])
    if len(w) != 3 or len(stem) != 4:
        return None
    if wrn_widen(state_dict, "{}.conv.weight") == 10:
        return _infer_wrn(state_dict)
    return _infer_resnet(state_dict)


def _gamma(sd: Mapping[str, Any], m: int) -> int:
    """The largest gamma a block's grouped conv actually uses (after TU's reduction)."""
    gamma = 1
    for k, v in sd.items():
        if re.match(r"layer\d+\.\d+\.(conv2|conv3)\.conv\.weight$", k):
            src = _input_channels(sd, k)
            if src:
                gamma = max(gamma, src // np.shape(v)[1] // m)
    return gamma


def _alpha(width: int, nominal: int):
    alpha = width / nominal
    return int(alpha) if float(alpha).is_integer() else float(alpha)


def _infer_resnet(state_dict: Mapping[str, Any]) -> tuple[str, dict] | None:
    w = np.shape(state_dict["linear.weight"])
    stem = np.shape(state_dict["conv1.conv.weight"])
    m, c = int(w[0]), int(w[1])
    blocks = [
        len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")}) for i in (1, 2, 3, 4)
    ]
    bottleneck = any(k.endswith("conv3.conv.weight") for k in state_dict)
    from jaxuq.models.resnet import BASIC_ARCHS as _BASIC  # noqa: PLC0415
    from jaxuq.models.resnet import RESNET_BLOCKS  # noqa: PLC0415

    blocks = [b for b in blocks if b]
    arch = next((a for a, nb in RESNET_BLOCKS.items() if nb == blocks and (a not in _BASIC) == bottleneck),
                None)
    if arch is None:
        return None
    in_planes = 16 if arch in (20, 44, 56, 110, 1202) else 64
    kw = dict(in_channels=int(stem[1]), num_classes=c, arch=arch, num_estimators=m,
              alpha=_alpha(stem[0], in_planes), gamma=_gamma(state_dict, m), style=style_of(stem),
              conv_bias="conv1.conv.bias" in state_dict)
    return "packed_resnet", kw


def _infer_wrn(sd: Mapping[str, Any]) -> tuple[str, dict]:
    m, c = shape(sd, "linear.weight")[:2]
    stem = shape(sd, "conv1.conv.weight")
    kw = dict(in_channels=stem[1], num_classes=c, num_estimators=m, alpha=_alpha(stem[0], 16),
              gamma=_gamma(sd, m), conv_bias="conv1.conv.bias" in sd, style=style_of(stem))
    return "packed_wideresnet28x10", kw


def _infer_vgg(sd: Mapping[str, Any]) -> tuple[str, dict] | None:
    from converters.mappings.vgg import vgg_kwargs  # noqa: PLC0415

    if "cls_head.6.weight" not in sd or len(shape(sd, "cls_head.0.weight")) != 3:
        return None
    alpha = _alpha(shape(sd, "features.0.conv.weight")[0], 64)
    kw = vgg_kwargs(sd, ".conv.weight", shape(sd, "cls_head.0.weight"), alpha)
    if kw is None:
        return None
    m, c = shape(sd, "cls_head.6.weight")[:2]
    return "packed_vgg", {"in_channels": kw.pop("in_channels"), "num_classes": c, **kw, "alpha": alpha,
                          "num_estimators": m, "gamma": 1}


def _input_channels(sd: Mapping[str, Any], key: str) -> int | None:
    """Number of input channels of the conv ``key`` = the width of the BN feeding it."""
    m = re.match(r"(layer\d+)\.(\d+)\.(conv2|conv3)\.conv\.weight$", key)
    layer, idx, which = m.groups()
    bn = f"{layer}.{idx}.{'bn1' if which == 'conv2' else 'bn2'}.weight"
    return int(np.shape(sd[bn])[0]) if bn in sd else None


def torch_reference(arch: str, /, **kwargs):
    """TU's torch module with the same state-dict keys (for ``jaxuq-convert convert --verify``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown packed arch {arch!r}")
    from converters.torch_refs import torch_model  # noqa: PLC0415

    return torch_model(arch, **kwargs)
