"""TU 0.13.0's Wide-ResNet-28x10 (``torch_uncertainty/models/classification/wideresnet/``) in Flax,
NHWC, in its five forms ``wideresnet28x10``, ``batched_``, ``masked_``, ``mimo_`` and
``packed_wideresnet28x10``: one graph over the layer :class:`~jaxuq.models._kinds.Kind`.

- Stages ``[16, 16k, 32k, 64k]`` (k = ``widen_factor`` = 10), ``(depth - 4) / 6`` blocks per stage (4 for 28).
- Stem: 3x3/s1/p1 conv (``style="cifar"``) or 7x7/s2/p3 conv + max-pool 3/2/1 (``"imagenet"``, TU's
  default) -> bn1 -> act. Per form, as TU (``_STEM``): std/mimo a plain conv with groups, batched a
  BatchConv with groups, masked a plain conv without groups, packed a ``first`` PackedConv; all with
  ``conv_bias``.
- Block: conv1 3x3 -> Dropout2d -> bn1 -> act -> conv2 3x3 (stride) -> + shortcut -> bn2 -> act, the
  shortcut a lone 1x1 conv (``shortcut_0``, no BatchNorm) when the stride or the width changes. Packed:
  every conv uses ``gamma``, BN widths ``int(alpha * planes)``.
- Head: mean over H, W -> Dropout -> ``linear`` (packed: ``last``, gamma 1).
Outputs as :mod:`jaxuq.models.resnet`: ``[B, C]`` (std) or ``[(M B), C]`` member-major.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxuq.models._common import activation as _act
from jaxuq.models._kinds import Kind, count, validated
from jaxuq.models.resnet import _repeat, _style
from jaxuq.nn import BatchNorm, Dropout, max_pool2d

__all__ = ["BatchedWideResNet", "MIMOWideResNet", "MaskedWideResNet", "PackedWideResNet", "WideResNet",
           "batched_wideresnet28x10", "masked_wideresnet28x10", "mimo_wideresnet28x10",
           "packed_wideresnet28x10", "wideresnet28x10"]

# kind -> (stem built with the kind's layer?, stem uses `groups`?)
_STEM = {"std": (False, True), "mimo": (False, True), "batched": (True, True), "masked": (False, False),
         "packed": (True, True)}


class WideBasicBlock(nn.Module):
    in_planes: int
    planes: int
    dropout_rate: float
    stride: int
    groups: int
    conv_bias: bool
    activation: str = "relu"
    kind: Kind = Kind()
    index: int = 0  # masked-layer rank of conv1 (TU's construction order: conv1, conv2, shortcut)

    @nn.compact
    def __call__(self, x, train: bool = False):
        act, ura, k = _act(self.activation), not train, self.kind
        kw = dict(bias=self.conv_bias, groups=self.groups)
        out = k.conv(self.in_planes, self.planes, 3, 1, 1, name="conv1", index=self.index, **kw)(x)
        out = Dropout(self.dropout_rate, broadcast_dims=(1, 2), name="dropout")(out, train)
        out = act(BatchNorm(name="bn1")(out, use_running_average=ura))
        out = k.conv(self.planes, self.planes, 3, self.stride, 1, name="conv2", index=self.index + 1,
                     **kw)(out)
        if self.stride != 1 or self.in_planes != self.planes:
            x = k.conv(self.in_planes, self.planes, 1, self.stride, name="shortcut_0", index=self.index + 2,
                       **kw)(x)
        return act(BatchNorm(name="bn2")(out + x, use_running_average=ura))


class WideResNet(nn.Module):
    """TU ``wideresnet28x10`` (``depth``/``widen_factor`` as TU's ``_WideResNet``)."""

    in_channels: int
    num_classes: int
    conv_bias: bool = True
    dropout_rate: float = 0.3
    groups: int = 1
    style: str = "imagenet"
    activation: str = "relu"
    depth: int = 28
    widen_factor: int = 10

    def kind(self) -> Kind:
        return Kind("std")

    @nn.compact
    def __call__(self, x, train: bool = False):
        """``x: [B, H, W, in_channels]`` (NHWC) -> logits ``[B, C]`` (ensemble forms: ``[(M B), C]``)."""
        if (self.depth - 4) % 6:
            raise ValueError(f"Wide-resnet depth should be 6n+4. Got {self.depth}.")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"wideresnet: expected NHWC input with {self.in_channels} channels, "
                             f"got {x.shape}")
        kind, act, style = self.kind(), _act(self.activation), _style(self.style)
        stages = [16, 16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor]
        x = kind.inputs(x, train)
        own, use_groups = _STEM[kind.name]
        k, s, p = (7, 2, 3) if style == "imagenet" else (3, 1, 1)
        out = kind.conv(x.shape[-1], stages[0], k, s, p, bias=self.conv_bias, plain=not own, first=True,
                        groups=self.groups if use_groups else 1, name="conv1")(x)
        out = act(BatchNorm(name="bn1")(out, use_running_average=not train))
        if style == "imagenet":
            out = max_pool2d(out, 3, 2, 1)
        in_planes, index = stages[0], 0
        for li, planes in enumerate(stages[1:]):
            for bi in range((self.depth - 4) // 6):
                stride = (1 if li == 0 else 2) if bi == 0 else 1
                out = WideBasicBlock(in_planes, planes, self.dropout_rate, stride, self.groups,
                                     self.conv_bias, self.activation, kind, index,
                                     name=f"layer{li + 1}_{bi}")(out, train)
                index += 3 if (stride != 1 or in_planes != planes) else 2
                in_planes = planes
        out = jnp.mean(out, axis=(1, 2))
        out = Dropout(self.dropout_rate, name="final_dropout")(out, train)
        head = kind.dense(stages[3], self.num_classes * kind.fold, name="linear", last=True, gamma=1,
                          index=index)
        return kind.outputs(head(out))


class BatchedWideResNet(WideResNet):
    num_estimators: int = 1
    repeat_strategy: str = "paper"
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        return Kind("batched", self.num_estimators, repeat_training_inputs=self.repeat_strategy == "legacy")


class MaskedWideResNet(WideResNet):
    num_estimators: int = 1
    scale: float = 2.0
    repeat_strategy: str = "paper"
    seed: int = 0
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        return Kind("masked", self.num_estimators, scale=self.scale, seed=self.seed,
                    repeat_training_inputs=self.repeat_strategy == "legacy")


class MIMOWideResNet(WideResNet):
    num_estimators: int = 1
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        return Kind("mimo", self.num_estimators)


class PackedWideResNet(WideResNet):
    num_estimators: int = 1
    alpha: float = 2.0
    gamma: int = 1
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        return Kind("packed", self.num_estimators, alpha=self.alpha, gamma=self.gamma,
                    linear_implementation="einsum")


def wideresnet28x10(in_channels: int, num_classes: int, conv_bias: bool = True, dropout_rate: float = 0.3,
                    groups: int = 1, style: str = "imagenet", activation: str = "relu") -> WideResNet:
    """TU ``wideresnet28x10`` (same arguments; ``activation`` by name)."""
    return WideResNet(in_channels, num_classes, conv_bias, dropout_rate, groups, _style(style), activation)


def batched_wideresnet28x10(in_channels: int, num_classes: int, num_estimators: int, conv_bias: bool = True,
                            dropout_rate: float = 0.3, groups: int = 1, style: str = "imagenet",
                            repeat_strategy: str = "paper") -> BatchedWideResNet:
    """TU ``batched_wideresnet28x10`` (same arguments and defaults)."""
    return validated(BatchedWideResNet(
        in_channels, num_classes, conv_bias, dropout_rate, groups, _style(style),
        num_estimators=count(num_estimators, "num_estimators"), repeat_strategy=_repeat(repeat_strategy)))


def masked_wideresnet28x10(in_channels: int, num_classes: int, num_estimators: int, scale: float,
                           conv_bias: bool = True, dropout_rate: float = 0.3, groups: int = 1,
                           style: str = "imagenet", repeat_strategy: str = "paper",
                           seed: int = 0) -> MaskedWideResNet:
    """TU ``masked_wideresnet28x10`` (same arguments and defaults) plus the masks' ``seed``."""
    return validated(MaskedWideResNet(
        in_channels, num_classes, conv_bias, dropout_rate, groups, _style(style),
        num_estimators=count(num_estimators, "num_estimators"), scale=scale,
        repeat_strategy=_repeat(repeat_strategy), seed=int(seed)))


def mimo_wideresnet28x10(in_channels: int, num_classes: int, num_estimators: int, conv_bias: bool = True,
                         dropout_rate: float = 0.3, groups: int = 1,
                         style: str = "imagenet") -> MIMOWideResNet:
    """TU ``mimo_wideresnet28x10`` (same arguments and defaults)."""
    return validated(MIMOWideResNet(
        in_channels, num_classes, conv_bias, dropout_rate, groups, _style(style),
        num_estimators=count(num_estimators, "num_estimators")))


def packed_wideresnet28x10(in_channels: int, num_classes: int, num_estimators: int, alpha: float, gamma: int,
                           conv_bias: bool = True, dropout_rate: float = 0.3, groups: int = 1,
                           style: str = "imagenet") -> PackedWideResNet:
    """TU ``packed_wideresnet28x10`` (same arguments and defaults)."""
    return validated(PackedWideResNet(
        in_channels, num_classes, conv_bias, dropout_rate, groups, _style(style),
        num_estimators=count(num_estimators, "num_estimators"), alpha=alpha, gamma=count(gamma, "gamma")))
