"""The classic CIFAR ResNet-20/32/44/56/110 (He et al. 2016; akamaster/pytorch_resnet_cifar10) in Flax.

Depth ``6n + 2``: conv1 3x3 16 -> bn1 -> relu -> layer1 (n blocks, 16) -> layer2 (n, 32, s2) -> layer3
(n, 64, s2) -> global average pool -> ``linear``. BasicBlock: conv1 3x3(s) -> bn1 -> relu -> conv2 3x3 ->
bn2 -> + shortcut -> relu. Option-A shortcut when the stride or width changes: ``x[:, ::2, ::2, :]``
then zero-pad the channels by ``planes // 4`` on both sides (no parameters). No conv biases.
Names mirror the torch keys (``conv1, bn1, layer{i}_{j}/{conv1,bn1,conv2,bn2}, linear``).
ResNet-20: 269,722 parameters; ResNet-56: 853,018.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxuq.models._common import conv
from jaxuq.nn import BatchNorm

__all__ = [
    "DEPTHS", "ResNetCifar", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet_cifar",
]

DEPTHS = (20, 32, 44, 56, 110, 1202)


class _Block(nn.Module):
    in_planes: int
    planes: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        ura = not train
        out = conv(self.planes, 3, self.stride, 1, bias=False, name="conv1")(x)
        out = nn.relu(BatchNorm(name="bn1")(out, use_running_average=ura))
        out = conv(self.planes, 3, 1, 1, bias=False, name="conv2")(out)
        out = BatchNorm(name="bn2")(out, use_running_average=ura)
        sc = x
        if self.stride != 1 or self.in_planes != self.planes:
            p = self.planes // 4
            sc = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (p, p)))
        return nn.relu(out + sc)


class ResNetCifar(nn.Module):
    depth: int = 20
    num_classes: int = 10
    in_channels: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        """``x: [N, H, W, in_channels]`` (normalised) -> logits ``[N, num_classes]``."""
        if (self.depth - 2) % 6 != 0 or self.depth < 8:
            raise ValueError(f"resnet_cifar: depth must be 6n+2, got {self.depth}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"resnet_cifar: expected NHWC input with {self.in_channels} channels, got {x.shape}"
            )
        n = (self.depth - 2) // 6
        out = conv(16, 3, 1, 1, bias=False, name="conv1")(x)
        out = nn.relu(BatchNorm(name="bn1")(out, use_running_average=not train))
        in_planes = 16
        for li, planes in enumerate((16, 32, 64)):
            for bi in range(n):
                stride = 2 if (li > 0 and bi == 0) else 1
                out = _Block(in_planes, planes, stride, name=f"layer{li + 1}_{bi}")(out, train)
                in_planes = planes
        out = jnp.mean(out, axis=(1, 2))
        return nn.Dense(self.num_classes, name="linear")(out)


def resnet_cifar(depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    """He et al. CIFAR ResNet of ``depth`` (20, 32, 44, 56, 110, 1202)."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"resnet_cifar: depth must be 6n+2, got {depth}")
    return ResNetCifar(int(depth), num_classes, in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return resnet_cifar(20, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return resnet_cifar(32, num_classes, in_channels)


def resnet44(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return resnet_cifar(44, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return resnet_cifar(56, num_classes, in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return resnet_cifar(110, num_classes, in_channels)
