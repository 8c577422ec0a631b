"""Mapping family ``vgg``: TU's plain ``vgg`` (11/13/16/19).

Table from the Flax template (:func:`converters.mappings.template_table`): ``features.{i}.weight`` /
``.bias`` (conv, OIHW -> HWIO), ``features.{i+1}.*`` (BatchNorm with ``norm="batchnorm"``),
``cls_head.{0,3,6}.weight`` / ``.bias`` (linear, transposed); ``i`` is TU's Sequential index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converters.mappings import template_torch_to_flax
from converters.mappings._shapes import shape, template
from jaxuq.models.vgg import VGG_CONFIGS, vgg

__all__ = ["ARCHS", "features", "infer", "torch_to_flax", "vgg_kwargs"]


def _vgg(**kw):

    return template(vgg, kw)


ARCHS = {"vgg": _vgg}
torch_to_flax = template_torch_to_flax


def features(sd: Mapping[str, Any], suffix: str) -> list[int]:
    """Sequential indices of the convs of ``features`` (keys ``features.{i}{suffix}``, 4-d)."""
    idx = {int(k.split(".")[1]) for k in sd if k.startswith("features.") and k.endswith(suffix)}
    return sorted(i for i in idx if len(shape(sd, f"features.{i}{suffix}")) == 4)


def vgg_kwargs(sd: Mapping[str, Any], suffix: str, head: tuple[int, ...], alpha: float = 1.0) -> dict | None:
    """The kwargs TU's ``vgg``/``packed_vgg`` share, from the convs (``suffix``) and the first linear's
    input width ``head[-1]`` (times the packed groups); None when the convs match no arch."""

    convs = features(sd, suffix)
    arch = next((a for a, cfg in VGG_CONFIGS.items() if sum(v != "M" for v in cfg) == len(convs)), None)
    if arch is None:
        return None
    flat = head[-1] * (head[0] if len(head) == 3 else 1)
    kw = {"in_channels": shape(sd, f"features.0{suffix}")[1], "arch": arch,
          "style": "imagenet" if flat == int(512 * 49 * alpha) else "cifar"}
    if f"features.{convs[0] + 1}.running_mean" in sd:
        kw["norm"] = "batchnorm"
    return kw


def infer(state_dict: Mapping[str, Any]) -> tuple[str, dict] | None:
    sd = state_dict
    if "features.0.weight" not in sd or "cls_head.6.weight" not in sd:
        return None
    if len(shape(sd, "cls_head.0.weight")) != 2:
        return None
    kw = vgg_kwargs(sd, ".weight", shape(sd, "cls_head.0.weight"))
    if kw is None:
        return None
    second = features(sd, ".weight")[1]
    groups = 64 // shape(sd, f"features.{second}.weight")[1]
    kw = {"in_channels": kw.pop("in_channels"), "num_classes": shape(sd, "cls_head.6.weight")[0], **kw}
    return "vgg", kw | ({"groups": groups} if groups != 1 else {})
