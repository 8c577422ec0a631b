"""Mapping family ``masked``: TU Masksembles checkpoints (``masked_resnet``, ``masked_wideresnet28x10``).

The table is generated from the Flax template (:func:`converters.mappings.template_table`):

==============================================  ======================================  ============
Flax leaf                                       torch key                               transform
==============================================  ======================================  ============
``constants/<p>/mask/masks`` [M, C]             ``<p>.mask.masks`` (M, C), float64 0/1  id (checked)
``params/<p>/conv/kernel``, ``conv/bias``       ``<p>.conv.weight``, ``<p>.conv.bias``  oihw->hwio
``params/<p>/linear/kernel``, ``linear/bias``   ``<p>.linear.weight``, ``.linear.bias`` .T
plain conv / BatchNorm leaves                   as in the ``resnet`` family             --
==============================================  ======================================  ============

The masks come from the checkpoint (TU draws them at construction); a mask of another shape, or with
values other than 0/1, is refused naming the key. ``scale`` is not stored by TU: ``infer`` gives the
roundest value (integers, then halves, then tenths in [1, 6]) for which TU's mask width
``int(C / (scale * (1 - (1 - 1/scale)**M)))`` equals the ones per mask in every layer; it only matters
for masks drawn afresh, never for the converted ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from converters.mappings import template_torch_to_flax
from converters.mappings._shapes import resnet_arch, shape, style_of, template, wrn_widen
from jaxuq.models.resnet import SMALL_PLANES_ARCHS, masked_resnet
from jaxuq.models.wideresnet import masked_wideresnet28x10

__all__ = ["ARCHS", "infer", "infer_scale", "torch_to_flax"]


def _resnet(**kw):

    return template(masked_resnet, kw)


def _wrn(**kw):

    return template(masked_wideresnet28x10, kw)


ARCHS = {"masked_resnet": _resnet, "masked_wideresnet28x10": _wrn}
torch_to_flax = template_torch_to_flax

_SCALES = sorted({k / 10 for k in range(10, 61)}, key=lambda s: (s != int(s), 2 * s != int(2 * s), s))


def infer_scale(masks: list[np.ndarray]) -> float | None:
    """The roundest ``scale`` consistent with every ``[M, C]`` mask (see the module doc), or None."""
    for s in _SCALES:
        ok = True
        for m in masks:
            n, c = m.shape
            ones = np.sum(m, axis=1)
            if not np.all(ones == int(int(c) / (s * (1 - (1 - 1 / s) ** n)))):
                ok = False
                break
        if ok:
            return s
    return None


def infer(state_dict: Mapping[str, Any]) -> tuple[str, dict] | None:
    sd = state_dict
    if "layer1.0.conv1.mask.masks" not in sd or "linear.mask.masks" not in sd:
        return None
    stem = shape(sd, "conv1.weight")
    first = shape(sd, "layer1.0.conv1.conv.weight")
    groups = stem[0] // first[1]
    scale = infer_scale([np.asarray(v) for k, v in sd.items() if k.endswith(".mask.masks")])
    if scale is None:
        return None
    kw = {"in_channels": stem[1], "num_classes": shape(sd, "linear.linear.weight")[0],
          "num_estimators": shape(sd, "linear.mask.masks")[0], "scale": scale,
          "conv_bias": "layer1.0.conv1.conv.bias" in sd, "style": style_of(stem)}
    if groups != 1:
        kw["groups"] = groups
    if wrn_widen(sd, "{}.conv.weight") == 10:
        kw["conv_bias"] = "conv1.bias" in sd  # the WRN stem uses conv_bias, the ResNet stem never
        kw["in_channels"] = stem[1]  # the masked WRN stem has no groups
        return "masked_wideresnet28x10", kw
    arch = resnet_arch(sd)
    if arch is None:
        return None
    kw["in_channels"] = stem[1] * groups  # the masked ResNet stem uses groups

    default = 16 if arch in SMALL_PLANES_ARCHS else 64
    if stem[0] != default:
        kw["width_multiplier"] = stem[0] / default
    return "masked_resnet", {"in_channels": kw.pop("in_channels"), "num_classes": kw.pop("num_classes"),
                             "arch": arch, **kw}
