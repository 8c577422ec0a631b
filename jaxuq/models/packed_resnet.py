"""Packed-Ensembles ResNet, TU 0.13.0 ``packed_resnet`` (``models/classification/resnet/packed.py``).

Exact graph of TU 0.13.0 (NHWC):
- stem: PackedConv(in -> 64, first=True) (3x3/s1/p1 for ``style="cifar"``, 7x7/s2/p3 + maxpool 3/2/1
  for ``"imagenet"``) -> BatchNorm(int(64*alpha)) -> relu;
- BasicBlock: conv1 (gamma=1) -> bn1 -> Dropout2d -> relu -> conv2 (gamma) -> bn2 -> + shortcut -> relu;
  Bottleneck: conv1 1x1 (gamma=1) -> bn1 -> relu -> conv2 3x3 (gamma, stride) -> bn2 -> Dropout2d -> relu
  -> conv3 1x1 (gamma) -> bn3 -> + shortcut -> relu; shortcut = PackedConv 1x1 (gamma, stride) + BN when
  the stride or width changes. BN is a plain per-channel BatchNorm over ``int(alpha*planes)`` channels.
- head: mean over H, W -> Dropout -> PackedDense(planes*8*expansion, C, last=True).
Output logits ``[M*B, C]`` member-major. Submodules mirror torch names (``layer1_0.conv1.conv``,
``layer2_0.shortcut_0.conv``, ``layer2_0.shortcut_1``, ``linear``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxuq.nn.dropout import Dropout
from jaxuq.nn.norm import BatchNorm
from jaxuq.nn.packed import PackedConv, PackedDense

__all__ = ["PackedResNet", "RESNET_BLOCKS", "packed_resnet"]

RESNET_BLOCKS: dict[int, list[int]] = {
    18: [2, 2, 2, 2], 20: [3, 3, 3], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 44: [7, 7, 7], 56: [9, 9, 9],
    101: [3, 4, 23, 3], 110: [18, 18, 18], 152: [3, 8, 36, 3], 1202: [200, 200, 200],
}
_BASIC = (18, 20, 34, 44, 56, 110, 1202)


def default_norm() -> Callable[..., nn.Module]:
    """Torch-parity BatchNorm (``jaxuq.nn.BatchNorm``: unbiased running variance, torch momentum 0.1)."""
    return BatchNorm


class _Block(nn.Module):
    """Fields shared by the packed BasicBlock and Bottleneck."""

    in_planes: int
    planes: int
    stride: int
    alpha: float
    num_estimators: int
    gamma: int
    conv_bias: bool
    dropout_rate: float
    groups: int
    norm: Callable


class _BasicBlock(_Block):
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        kw = _packed_kwargs(self)
        ura = not train
        out = PackedConv(self.in_planes, self.planes, 3, stride=self.stride, padding=1, name="conv1", **kw)(x)
        out = self.norm(name="bn1")(out, use_running_average=ura)
        out = nn.relu(Dropout(self.dropout_rate, broadcast_dims=(1, 2), name="dropout")(out, train))
        out = PackedConv(self.planes, self.planes, 3, gamma=self.gamma, padding=1, name="conv2", **kw)(out)
        out = self.norm(name="bn2")(out, use_running_average=ura)
        return nn.relu(out + _shortcut(self, x, ura))


class _Bottleneck(_Block):
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        kw = _packed_kwargs(self)
        ura = not train
        out = PackedConv(self.in_planes, self.planes, 1, gamma=1, name="conv1", **kw)(x)
        out = nn.relu(self.norm(name="bn1")(out, use_running_average=ura))
        out = PackedConv(self.planes, self.planes, 3, gamma=self.gamma, stride=self.stride, padding=1,
                         name="conv2", **kw)(out)
        out = self.norm(name="bn2")(out, use_running_average=ura)
        out = nn.relu(Dropout(self.dropout_rate, broadcast_dims=(1, 2), name="dropout")(out, train))
        out = PackedConv(self.planes, self.expansion * self.planes, 1, gamma=self.gamma, name="conv3",
                         **kw)(out)
        out = self.norm(name="bn3")(out, use_running_average=ura)
        return nn.relu(out + _shortcut(self, x, ura))


def _packed_kwargs(block) -> dict:
    """The PackedConv arguments every conv of a block shares."""
    return dict(alpha=block.alpha, num_estimators=block.num_estimators, groups=block.groups,
                bias=block.conv_bias)


def _shortcut(block, x, ura: bool):
    """Called inside ``block``'s compact ``__call__``: the modules become ``block``'s children."""
    out_planes = block.expansion * block.planes
    if block.stride != 1 or block.in_planes != out_planes:
        sc = PackedConv(block.in_planes, out_planes, 1, gamma=block.gamma, stride=block.stride,
                        name="shortcut_0", **_packed_kwargs(block))(x)
        return block.norm(name="shortcut_1")(sc, use_running_average=ura)
    return x


class PackedResNet(nn.Module):
    in_channels: int
    num_classes: int
    num_blocks: Sequence[int]
    bottleneck: bool
    num_estimators: int
    alpha: float = 2.0
    gamma: int = 1
    conv_bias: bool = False
    dropout_rate: float = 0.0
    groups: int = 1
    style: str = "imagenet"
    in_planes: int = 64
    linear_implementation: str = "conv1d"
    norm: Callable | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        """``x: [B, H, W, in_channels]`` (NHWC) -> logits ``[M*B, num_classes]``."""
        norm = self.norm or default_norm()
        block = _Bottleneck if self.bottleneck else _BasicBlock
        kw = dict(alpha=self.alpha, num_estimators=self.num_estimators)
        k, s, p = (7, 2, 3) if self.style == "imagenet" else (3, 1, 1)
        out = PackedConv(self.in_channels, self.in_planes, k, stride=s, padding=p, gamma=1,
                         groups=self.groups,
                         bias=self.conv_bias, first=True, name="conv1", **kw)(x)
        out = nn.relu(norm(name="bn1")(out, use_running_average=not train))
        if self.style == "imagenet":
            out = nn.max_pool(out, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        in_planes = self.in_planes
        for li, n in enumerate(self.num_blocks):
            planes = self.in_planes * (2**li)
            for bi in range(n):
                stride = (1 if li == 0 else 2) if bi == 0 else 1
                out = block(in_planes, planes, stride, self.alpha, self.num_estimators, self.gamma,
                            self.conv_bias, self.dropout_rate, self.groups, norm,
                            name=f"layer{li + 1}_{bi}")(out, train)
                in_planes = planes * block.expansion
        out = jnp.mean(out, axis=(1, 2))
        out = Dropout(self.dropout_rate, name="final_dropout")(out, train)
        mult = 8 if len(self.num_blocks) == 4 else 4
        return PackedDense(self.in_planes * mult * block.expansion, self.num_classes, last=True,
                           implementation=self.linear_implementation, name="linear", **kw)(out)


def packed_resnet(
    in_channels: int,
    num_classes: int,
    arch: int,
    num_estimators: int,
    alpha: float,
    gamma: int,
    conv_bias: bool = False,
    width_multiplier: float = 1.0,
    groups: int = 1,
    dropout_rate: float = 0.0,
    style: str = "imagenet",
    linear_implementation: str = "conv1d",
    norm: Callable | None = None,
) -> PackedResNet:
    """TU ``packed_resnet`` (same arguments; ``norm`` defaults to ``jaxuq.nn.BatchNorm``, torch parity).

    ``x: [B, H, W, in_channels]`` NHWC -> logits ``[num_estimators * B, num_classes]`` member-major;
    ``train=True`` needs ``mutable=["batch_stats"]``. ``style`` may be TU's ``ResNetStyle`` or a string.
    """
    if arch not in RESNET_BLOCKS:
        raise ValueError(f"Unknown ResNet architecture. Got {arch}.")
    style = getattr(style, "value", style)
    if style not in ("imagenet", "cifar"):
        raise ValueError(f"style must be 'imagenet' or 'cifar', got {style!r}")
    in_planes = 16 if arch in (20, 44, 56, 110, 1202) else 64
    return PackedResNet(
        in_channels, num_classes, tuple(RESNET_BLOCKS[arch]), arch not in _BASIC, int(num_estimators), alpha,
        int(gamma), conv_bias, dropout_rate, groups, style, int(in_planes * width_multiplier),
        linear_implementation, norm,
    )
