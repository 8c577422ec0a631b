"""Shared shape reading for the ``infer`` functions of the ensemble families (not a family: no ARCHS).

Every function takes a prefix-stripped state dict ``{key: array}`` and returns plain Python values;
a missing key raises ``KeyError`` (``mappings.infer`` turns that into "not this family").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxuq.models.resnet import BASIC_ARCHS, RESNET_BLOCKS

__all__ = ["block_counts", "resnet_arch", "shape", "style_of", "template", "wrn_widen"]


def shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(sd[key]))


def block_counts(sd: Mapping[str, Any]) -> list[int]:
    """Blocks per stage: ``[n_1, n_2, ...]`` from the ``layer{i}.{j}.`` keys."""
    counts, li = [], 1
    while any(k.startswith(f"layer{li}.0.") for k in sd):
        counts.append(len({k.split(".")[1] for k in sd if k.startswith(f"layer{li}.")}))
        li += 1
    return counts


def resnet_arch(sd: Mapping[str, Any]) -> int | None:
    """TU's ResNet arch with these block counts and block type (``conv3`` = Bottleneck), or None."""

    counts = block_counts(sd)
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in sd)
    return next((a for a, nb in RESNET_BLOCKS.items()
                 if nb == counts and (a not in BASIC_ARCHS) == bottleneck), None)


def wrn_widen(sd: Mapping[str, Any], conv1_weight: str) -> int | None:
    """The widen factor of a TU Wide-ResNet-28 state dict (3 stages of 4 blocks, shortcuts without
    BatchNorm): layer1's width over the stem's (both times alpha when packed), or None when the keys are
    not such a network. ``conv1_weight``: the weight key pattern of a conv, e.g. ``"{}.conv.weight"``."""
    if block_counts(sd) != [4, 4, 4] or any(".shortcut.1." in k for k in sd):
        return None
    planes = shape(sd, conv1_weight.format("layer1.0.conv1"))[0]
    stem = shape(sd, "bn1.weight")[0]
    return planes // stem if planes % stem == 0 else None


def style_of(kernel_shape: tuple[int, ...]) -> str:
    """``"imagenet"`` for TU's 7x7 stem, ``"cifar"`` for the 3x3 one."""
    return "imagenet" if kernel_shape[-1] == 7 else "cifar"


def template(factory, kw: dict, size_cifar: int = 32, size_imagenet: int = 64):
    """``(module, sample NHWC shape)`` for an ARCHS entry: 32 px for ``style="cifar"``, else 64 px."""
    size = size_cifar if str(kw.get("style", "imagenet")) == "cifar" else size_imagenet
    return factory(**kw), (1, size, size, kw.get("in_channels", 3))

