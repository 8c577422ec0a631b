"""TU 0.13.0 ``resnet`` (``torch_uncertainty/models/classification/resnet/std.py``) in Flax, NHWC.

- Blocks: BasicBlock for arch 18/20/34/44/56/110/1202, Bottleneck (expansion 4, stride on the 3x3) for
  50/101/152. ``in_planes`` = 16 for 20/44/56/110/1202 else 64, times ``width_multiplier`` (``int()``).
  Three-stage archs (20/44/56/110/1202) have no layer4.
- Stem: ``style="cifar"`` 3x3/s1/p1 conv; ``"imagenet"`` (default) 7x7/s2/p3 conv + max-pool 3/2/1
  (-inf padding). Then bn1 -> relu. The stem conv never uses groups.
- BasicBlock: conv1 3x3(s) -> bn1 -> Dropout2d -> relu -> conv2 3x3 -> bn2 -> + shortcut -> relu.
  Bottleneck: conv1 1x1 -> bn1 -> relu -> conv2 3x3(s) -> bn2 -> Dropout2d -> relu -> conv3 1x1 -> bn3
  -> + shortcut -> relu. Shortcut ``shortcut_0`` (1x1 conv, stride) + ``shortcut_1`` (BN) when the stride
  or the width changes. Every conv has ``use_bias=conv_bias``.
- Head: mean over H, W -> Dropout -> ``linear``.
Submodule names mirror torch: ``conv1, bn1, layer{i}_{j}/{conv1,bn1,...,shortcut_0,shortcut_1}, linear``.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxuq.models._common import activation as _act
from jaxuq.models._common import conv
from jaxuq.nn import BatchNorm, Conv, Dropout, max_pool2d

__all__ = ["RESNET_BLOCKS", "BASIC_ARCHS", "ResNet", "resnet"]

RESNET_BLOCKS: dict[int, list[int]] = {
    18: [2, 2, 2, 2], 20: [3, 3, 3], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 44: [7, 7, 7], 56: [9, 9, 9],
    101: [3, 4, 23, 3], 110: [18, 18, 18], 152: [3, 8, 36, 3], 1202: [200, 200, 200],
}
BASIC_ARCHS = (18, 20, 34, 44, 56, 110, 1202)
SMALL_PLANES_ARCHS = (20, 44, 56, 110, 1202)


class _Block(nn.Module):
    """Fields shared by BasicBlock and Bottleneck."""

    in_planes: int
    planes: int
    stride: int
    dropout_rate: float
    groups: int
    conv_bias: bool
    activation: str = "relu"


class BasicBlock(_Block):
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        act, ura = _act(self.activation), not train
        out = conv(self.planes, 3, self.stride, 1, bias=self.conv_bias, groups=self.groups, name="conv1")(x)
        out = BatchNorm(name="bn1")(out, use_running_average=ura)
        out = act(Dropout(self.dropout_rate, broadcast_dims=(1, 2), name="dropout")(out, train))
        out = conv(self.planes, 3, 1, 1, bias=self.conv_bias, groups=self.groups, name="conv2")(out)
        out = BatchNorm(name="bn2")(out, use_running_average=ura)
        return act(out + _shortcut(self, x, ura))


class Bottleneck(_Block):
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        act, ura = _act(self.activation), not train
        out = conv(self.planes, 1, bias=self.conv_bias, groups=self.groups, name="conv1")(x)
        out = act(BatchNorm(name="bn1")(out, use_running_average=ura))
        out = conv(self.planes, 3, self.stride, 1, bias=self.conv_bias, groups=self.groups, name="conv2")(out)
        out = BatchNorm(name="bn2")(out, use_running_average=ura)
        out = act(Dropout(self.dropout_rate, broadcast_dims=(1, 2), name="dropout")(out, train))
        out = conv(self.planes * 4, 1, bias=self.conv_bias, groups=self.groups, name="conv3")(out)
        out = BatchNorm(name="bn3")(out, use_running_average=ura)
        return act(out + _shortcut(self, x, ura))


def _shortcut(block, x, ura: bool):
    """Called inside ``block``'s compact ``__call__``: the modules become ``block``'s children."""
    out_planes = block.expansion * block.planes
    if block.stride != 1 or block.in_planes != out_planes:
        sc = Conv(out_planes, (1, 1), strides=(block.stride, block.stride), padding="VALID",
                  feature_group_count=block.groups, use_bias=block.conv_bias, name="shortcut_0")(x)
        return BatchNorm(name="shortcut_1")(sc, use_running_average=ura)
    return x


class ResNet(nn.Module):
    in_channels: int
    num_classes: int
    arch: int
    conv_bias: bool = False
    dropout_rate: float = 0.0
    width_multiplier: float = 1.0
    groups: int = 1
    style: str = "imagenet"
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, train: bool = False):
        """``x: [N, H, W, in_channels]`` -> logits ``[N, num_classes]``."""
        if self.arch not in RESNET_BLOCKS:
            raise ValueError(f"Unknown ResNet architecture. Got {self.arch}.")
        if self.style not in ("imagenet", "cifar"):
            raise ValueError(f"resnet: style must be 'imagenet' or 'cifar', got {self.style!r}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"resnet: expected NHWC input with {self.in_channels} channels, got {x.shape}")
        act = _act(self.activation)
        block_cls = BasicBlock if self.arch in BASIC_ARCHS else Bottleneck
        base = int((16 if self.arch in SMALL_PLANES_ARCHS else 64) * self.width_multiplier)
        if self.style == "imagenet":
            out = conv(base, 7, 2, 3, bias=self.conv_bias, name="conv1")(x)
        else:
            out = conv(base, 3, 1, 1, bias=self.conv_bias, name="conv1")(x)
        out = act(BatchNorm(name="bn1")(out, use_running_average=not train))
        if self.style == "imagenet":
            out = max_pool2d(out, 3, 2, 1)
        in_planes = base
        for li, n in enumerate(RESNET_BLOCKS[self.arch]):
            planes = base * 2**li
            for bi in range(n):
                stride = (1 if li == 0 else 2) if bi == 0 else 1
                out = block_cls(in_planes, planes, stride, self.dropout_rate, self.groups, self.conv_bias,
                                self.activation, name=f"layer{li + 1}_{bi}")(out, train)
                in_planes = planes * block_cls.expansion
        out = jnp.mean(out, axis=(1, 2))
        out = Dropout(self.dropout_rate, name="final_dropout")(out, train)
        return nn.Dense(self.num_classes, name="linear")(out)


def resnet(in_channels: int, num_classes: int, arch: int, conv_bias: bool = False, dropout_rate: float = 0.0,
           width_multiplier: float = 1.0, groups: int = 1, style: str = "imagenet",
           activation: str = "relu") -> ResNet:
    """TU ``resnet`` (same arguments; ``style`` as a string, ``activation`` by name)."""
    if arch not in RESNET_BLOCKS:
        raise ValueError(f"Unknown ResNet architecture. Got {arch}.")
    return ResNet(in_channels, num_classes, int(arch), conv_bias, dropout_rate, width_multiplier, groups,
                  str(style), activation)
