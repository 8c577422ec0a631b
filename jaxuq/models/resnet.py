"""TU 0.13.0's ResNets in Flax, NHWC: ``resnet`` (``models/classification/resnet/std.py``) and its
ensemble forms ``batched_resnet``, ``masked_resnet``, ``mimo_resnet``, ``packed_resnet`` (``batched.py``,
``masked.py``, ``mimo.py``, ``packed.py``), one graph parameterised by the layer
:class:`~jaxuq.models._kinds.Kind`.

- Blocks: BasicBlock for arch 18/20/34/44/56/110/1202, Bottleneck (expansion 4, stride on the 3x3) for
  50/101/152. ``in_planes`` = 16 for 20/44/56/110/1202 else 64, times ``width_multiplier`` (``int()``).
  Three-stage archs (20/44/56/110/1202) have no layer4.
- Stem: ``style="cifar"`` 3x3/s1/p1 conv; ``"imagenet"`` (default) 7x7/s2/p3 conv + max-pool 3/2/1
  (-inf padding). Then bn1 -> relu. The stem differs per form, as in TU (``_STEM``): std/mimo a plain
  conv without groups and with ``conv_bias``; batched a BatchConv with groups and no bias (TU builds
  its imagenet stem for 3 input channels whatever ``in_channels`` is: other values are refused);
  masked a plain conv with groups and no bias; packed a ``first`` PackedConv with groups and ``conv_bias``.
- BasicBlock: conv1 3x3(s) -> bn1 -> Dropout2d -> relu -> conv2 3x3 -> bn2 -> + shortcut -> relu.
  Bottleneck: conv1 1x1 -> bn1 -> relu -> conv2 3x3(s) -> bn2 -> Dropout2d -> relu -> conv3 1x1 -> bn3
  -> + shortcut -> relu. Shortcut ``shortcut_0`` (1x1 conv, stride) + ``shortcut_1`` (BN) when the stride
  or the width changes (batched BasicBlock: a plain conv, as TU). Packed: conv1 uses gamma=1, BN widths
  are ``int(alpha * planes)``.
- Head: mean over H, W -> Dropout -> ``linear`` (packed: ``last``, gamma=1).
- Ensembles in the batch: batched/masked repeat the input M times at eval (and in training when
  ``repeat_strategy="legacy"``); MIMO stacks the members' inputs into ``M * in_channels`` channels and
  splits its ``M * num_classes`` outputs. Output ``[(M B), C]`` member-major (``members_in_batch``).
Submodule names mirror torch: ``conv1, bn1, layer{i}_{j}/{conv1,bn1,...,shortcut_0,shortcut_1}, linear``.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxuq.models._common import activation as _act
from jaxuq.models._kinds import Kind, count, validated
from jaxuq.nn import BatchNorm, Dropout, max_pool2d

__all__ = ["RESNET_BLOCKS", "BASIC_ARCHS", "BatchedResNet", "MIMOResNet", "MaskedResNet", "PackedResNet",
           "ResNet", "batched_resnet", "masked_resnet", "mimo_resnet", "packed_resnet", "resnet"]

RESNET_BLOCKS: dict[int, list[int]] = {
    18: [2, 2, 2, 2], 20: [3, 3, 3], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 44: [7, 7, 7], 56: [9, 9, 9],
    101: [3, 4, 23, 3], 110: [18, 18, 18], 152: [3, 8, 36, 3], 1202: [200, 200, 200],
}
BASIC_ARCHS = (18, 20, 34, 44, 56, 110, 1202)
SMALL_PLANES_ARCHS = (20, 44, 56, 110, 1202)
_STD = Kind("std", torch_init=False)
# kind -> (stem built with the kind's layer?, stem uses `groups`?, stem uses `conv_bias`?)
_STEM = {"std": (False, False, True), "mimo": (False, False, True), "batched": (True, True, False),
         "masked": (False, True, False), "packed": (True, True, True)}


class _Block(nn.Module):
    """Fields shared by BasicBlock and Bottleneck; ``index``: the masked-layer rank of its first conv."""

    in_planes: int
    planes: int
    stride: int
    dropout_rate: float
    groups: int
    conv_bias: bool
    activation: str = "relu"
    kind: Kind = _STD
    index: int = 0

    def conv(self, cin, cout, k, stride=1, pad=0, *, name, offset, **kw):
        return self.kind.conv(cin, cout, k, stride, pad, bias=self.conv_bias, groups=self.groups, name=name,
                              index=self.index + offset, **kw)

    @classmethod
    def num_convs(cls, has_shortcut: bool) -> int:
        return (2 if cls.expansion == 1 else 3) + int(has_shortcut)


class BasicBlock(_Block):
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        act, ura = _act(self.activation), not train
        out = self.conv(self.in_planes, self.planes, 3, self.stride, 1, gamma=1, name="conv1", offset=0)(x)
        out = BatchNorm(name="bn1")(out, use_running_average=ura)
        out = act(Dropout(self.dropout_rate, broadcast_dims=(1, 2), name="dropout")(out, train))
        out = self.conv(self.planes, self.planes, 3, 1, 1, name="conv2", offset=1)(out)
        out = BatchNorm(name="bn2")(out, use_running_average=ura)
        return act(out + _shortcut(self, x, ura, offset=2))


class Bottleneck(_Block):
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        act, ura = _act(self.activation), not train
        out = self.conv(self.in_planes, self.planes, 1, gamma=1, name="conv1", offset=0)(x)
        out = act(BatchNorm(name="bn1")(out, use_running_average=ura))
        out = self.conv(self.planes, self.planes, 3, self.stride, 1, name="conv2", offset=1)(out)
        out = BatchNorm(name="bn2")(out, use_running_average=ura)
        out = act(Dropout(self.dropout_rate, broadcast_dims=(1, 2), name="dropout")(out, train))
        out = self.conv(self.planes, self.planes * 4, 1, name="conv3", offset=2)(out)
        out = BatchNorm(name="bn3")(out, use_running_average=ura)
        return act(out + _shortcut(self, x, ura, offset=3))


def _has_shortcut(block_cls, in_planes: int, planes: int, stride: int) -> bool:
    return stride != 1 or in_planes != block_cls.expansion * planes


def _shortcut(block, x, ura: bool, offset: int):
    """Called inside ``block``'s compact ``__call__``: the modules become ``block``'s children."""
    out_planes = block.expansion * block.planes
    if not _has_shortcut(type(block), block.in_planes, block.planes, block.stride):
        return x
    plain = block.kind.name == "batched" and block.expansion == 1  # TU: nn.Conv2d in the batched BasicBlock
    sc = block.conv(block.in_planes, out_planes, 1, block.stride, plain=plain, name="shortcut_0",
                    offset=offset)(x)
    return BatchNorm(name="shortcut_1")(sc, use_running_average=ura)


class ResNet(nn.Module):
    """TU ``resnet``: ``x [B, H, W, in_channels]`` -> logits ``[B, num_classes]``."""

    in_channels: int
    num_classes: int
    arch: int
    conv_bias: bool = False
    dropout_rate: float = 0.0
    width_multiplier: float = 1.0
    groups: int = 1
    style: str = "imagenet"
    activation: str = "relu"
    torch_init: bool = False  # the plain form: Flax's initialisers (True: torch's default law, as TU)

    def kind(self) -> Kind:
        return _STD if not self.torch_init else Kind("std", torch_init=True)

    def _stem(self, kind: Kind, base: int, x):
        own, use_groups, use_bias = _STEM[kind.name]
        k, s, p = (7, 2, 3) if self.style == "imagenet" else (3, 1, 1)
        cin = x.shape[-1]
        return kind.conv(cin, base, k, s, p, bias=self.conv_bias and use_bias, name="conv1", plain=not own,
                         groups=self.groups if use_groups else 1, gamma=1, first=True)(x)

    @nn.compact
    def __call__(self, x, train: bool = False):
        """``x: [B, H, W, in_channels]`` (NHWC) -> logits ``[B, C]`` (ensemble forms: ``[(M B), C]``)."""
        _check_arch(self.arch, self.style)
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"resnet: expected NHWC input with {self.in_channels} channels, got {x.shape}")
        kind, act = self.kind(), _act(self.activation)
        block_cls = BasicBlock if self.arch in BASIC_ARCHS else Bottleneck
        base = int((16 if self.arch in SMALL_PLANES_ARCHS else 64) * self.width_multiplier)
        out = self._stem(kind, base, kind.inputs(x, train))
        out = act(BatchNorm(name="bn1")(out, use_running_average=not train))
        if self.style == "imagenet":
            out = max_pool2d(out, 3, 2, 1)
        in_planes, index = base, 0
        for li, n in enumerate(RESNET_BLOCKS[self.arch]):
            planes = base * 2**li
            for bi in range(n):
                stride = (1 if li == 0 else 2) if bi == 0 else 1
                out = block_cls(in_planes, planes, stride, self.dropout_rate, self.groups, self.conv_bias,
                                self.activation, kind, index, name=f"layer{li + 1}_{bi}")(out, train)
                index += block_cls.num_convs(_has_shortcut(block_cls, in_planes, planes, stride))
                in_planes = planes * block_cls.expansion
        out = jnp.mean(out, axis=(1, 2))
        out = Dropout(self.dropout_rate, name="final_dropout")(out, train)
        mult = 8 if len(RESNET_BLOCKS[self.arch]) == 4 else 4
        head = kind.dense(base * mult * block_cls.expansion, self.num_classes * kind.fold, name="linear",
                          last=True, gamma=1, index=index)
        return kind.outputs(head(out))


class BatchedResNet(ResNet):
    """TU ``batched_resnet`` (BatchEnsemble): logits ``[(M B), C]``."""

    num_estimators: int = 1
    repeat_strategy: str = "paper"
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        return Kind("batched", self.num_estimators, repeat_training_inputs=self.repeat_strategy == "legacy")


class MaskedResNet(ResNet):
    """TU ``masked_resnet`` (Masksembles): logits ``[(M B), C]``; masks from ``seed`` (module doc of
    :mod:`jaxuq.nn.masksembles`)."""

    num_estimators: int = 1
    scale: float = 2.0
    repeat_strategy: str = "paper"
    seed: int = 0
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        return Kind("masked", self.num_estimators, scale=self.scale, seed=self.seed,
                    repeat_training_inputs=self.repeat_strategy == "legacy")


class MIMOResNet(ResNet):
    """TU ``mimo_resnet``: eval ``x [B, ...]``, train ``x [(M B), ...]``
    (:class:`jaxuq.data.formats.MIMOBatchFormat`) -> logits ``[(M B), C]``."""

    num_estimators: int = 1
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        return Kind("mimo", self.num_estimators)


class PackedResNet(ResNet):
    """TU ``packed_resnet`` (Packed-Ensembles): logits ``[(M B), C]``."""

    num_estimators: int = 1
    alpha: float = 2.0
    gamma: int = 1
    linear_implementation: str = "conv1d"
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        return Kind("packed", self.num_estimators, alpha=self.alpha, gamma=self.gamma,
                    linear_implementation=self.linear_implementation)


def _check_arch(arch, style) -> None:
    if arch not in RESNET_BLOCKS:
        raise ValueError(f"Unknown ResNet architecture. Got {arch}.")
    if style not in ("imagenet", "cifar"):
        raise ValueError(f"resnet: style must be 'imagenet' or 'cifar', got {style!r}")


def _style(style) -> str:
    """TU's ``ResNetStyle`` or a string -> ``"imagenet"`` / ``"cifar"`` (validated)."""
    style = str(getattr(style, "value", style))
    if style not in ("imagenet", "cifar"):
        raise ValueError(f"style must be 'imagenet' or 'cifar', got {style!r}")
    return style


def _repeat(strategy: str) -> str:
    if strategy not in ("legacy", "paper"):
        raise ValueError(f"Unknown repeat_strategy. Got {strategy}.")
    return strategy


def resnet(in_channels: int, num_classes: int, arch: int, conv_bias: bool = False, dropout_rate: float = 0.0,
           width_multiplier: float = 1.0, groups: int = 1, style: str = "imagenet",
           activation: str = "relu", torch_init: bool = False) -> ResNet:
    """TU ``resnet`` (same arguments; ``style`` as a string, ``activation`` by name). ``torch_init``: draw
    the fresh weights from torch's default law as TU's model does (default: Flax's initialisers, as
    before; the ensemble forms always use TU's law)."""
    _check_arch(arch, _style(style))
    return ResNet(in_channels, num_classes, int(arch), conv_bias, dropout_rate, width_multiplier, groups,
                  _style(style), activation, bool(torch_init))


def batched_resnet(in_channels: int, num_classes: int, arch: int, num_estimators: int, conv_bias: bool = True,
                   dropout_rate: float = 0.0, width_multiplier: float = 1.0, groups: int = 1,
                   style: str = "imagenet", repeat_strategy: str = "paper") -> BatchedResNet:
    """TU ``batched_resnet`` (same arguments and defaults)."""
    style = _style(style)
    _check_arch(arch, style)
    if style == "imagenet" and in_channels != 3:
        raise ValueError(f"batched_resnet: TU 0.13.0 builds the imagenet stem for 3 input channels, got "
                         f"in_channels={in_channels}")
    return validated(BatchedResNet(
        in_channels, num_classes, int(arch), conv_bias, dropout_rate, width_multiplier, groups, style,
        num_estimators=count(num_estimators, "num_estimators"), repeat_strategy=_repeat(repeat_strategy)))


def masked_resnet(in_channels: int, num_classes: int, arch: int, num_estimators: int, scale: float,
                  width_multiplier: float = 1.0, groups: int = 1, conv_bias: bool = True,
                  dropout_rate: float = 0.0, style: str = "imagenet", repeat_strategy: str = "paper",
                  seed: int = 0) -> MaskedResNet:
    """TU ``masked_resnet`` (same arguments and defaults) plus ``seed``: the masks' generator
    (:mod:`jaxuq.nn.masksembles`; a converted checkpoint carries TU's masks instead)."""
    style = _style(style)
    _check_arch(arch, style)
    return validated(MaskedResNet(
        in_channels, num_classes, int(arch), conv_bias, dropout_rate, width_multiplier, groups, style,
        num_estimators=count(num_estimators, "num_estimators"), scale=scale,
        repeat_strategy=_repeat(repeat_strategy), seed=int(seed)))


def mimo_resnet(in_channels: int, num_classes: int, arch: int, num_estimators: int, conv_bias: bool = True,
                dropout_rate: float = 0.0, width_multiplier: float = 1.0, groups: int = 1,
                style: str = "imagenet") -> MIMOResNet:
    """TU ``mimo_resnet`` (same arguments and defaults)."""
    style = _style(style)
    _check_arch(arch, style)
    return validated(MIMOResNet(
        in_channels, num_classes, int(arch), conv_bias, dropout_rate, width_multiplier, groups, style,
        num_estimators=count(num_estimators, "num_estimators")))


def packed_resnet(in_channels: int, num_classes: int, arch: int, num_estimators: int, alpha: float,
                  gamma: int, conv_bias: bool = False, width_multiplier: float = 1.0, groups: int = 1,
                  dropout_rate: float = 0.0, style: str = "imagenet",
                  linear_implementation: str = "conv1d") -> PackedResNet:
    """TU ``packed_resnet`` (same arguments; ``style`` may be TU's ``ResNetStyle`` or a string).

    ``x: [B, H, W, in_channels]`` NHWC -> logits ``[num_estimators * B, num_classes]`` member-major."""
    style = _style(style)
    _check_arch(arch, style)
    return validated(PackedResNet(
        in_channels, num_classes, int(arch), conv_bias, dropout_rate, width_multiplier, groups, style,
        num_estimators=count(num_estimators, "num_estimators"), alpha=alpha, gamma=count(gamma, "gamma"),
        linear_implementation=linear_implementation))
