"""Mapping family ``wideresnet``: TU's plain ``wideresnet28x10``.

Table from the Flax template (:func:`converters.mappings.template_table`): ``conv1.weight`` (+ bias),
``bn1.*``, ``layer{i}.{j}.{conv1, conv2, bn1, bn2}.*``, ``layer{i}.0.shortcut.0.weight`` (+ bias; no
BatchNorm in a WRN shortcut), ``linear.weight`` / ``.bias``; conv OIHW -> HWIO, linear transposed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converters.mappings import template_torch_to_flax
from converters.mappings._shapes import shape, style_of, template, wrn_widen
from jaxuq.models.wideresnet import wideresnet28x10

__all__ = ["ARCHS", "infer", "torch_to_flax"]


def _wrn(**kw):

    return template(wideresnet28x10, kw)


ARCHS = {"wideresnet28x10": _wrn}
torch_to_flax = template_torch_to_flax


def infer(state_dict: Mapping[str, Any]) -> tuple[str, dict] | None:
    sd = state_dict
    if "conv1.weight" not in sd or "linear.weight" not in sd or "layer1.0.conv1.weight" not in sd:
        return None
    if wrn_widen(sd, "{}.weight") != 10:
        return None
    stem = shape(sd, "conv1.weight")
    groups = stem[0] // shape(sd, "layer1.0.conv1.weight")[1]
    kw = {"in_channels": stem[1] * groups, "num_classes": shape(sd, "linear.weight")[0],
          "conv_bias": "conv1.bias" in sd, "style": style_of(stem)}
    return "wideresnet28x10", kw | ({"groups": groups} if groups != 1 else {})
