"""chenyaofo/pytorch-cifar-models CIFAR ResNet-20/32/44/56 (``cifar10_resnet20`` ... ``cifar100_resnet56``).

The model of TU's temperature-scaling tutorial (``torch.hub.load("chenyaofo/pytorch-cifar-models",
"cifar100_resnet20", pretrained=True)``). Depth ``6n + 2``: conv1 3x3 16 (no bias) -> bn1 -> relu ->
layer1 (n BasicBlocks, 16) -> layer2 (n, 32, s2) -> layer3 (n, 64, s2) -> global average pool -> ``fc``.
BasicBlock = TU's (:class:`jaxuq.models.resnet.BasicBlock`): conv 3x3(s) -> bn -> relu -> conv 3x3 -> bn
-> + shortcut -> relu, with the option-B shortcut 1x1 conv(s) + BN when the stride or width changes.
Torch names: ``layer{i}.{j}.downsample.{0,1}`` here ``layer{i}_{j}/shortcut_{0,1}`` (TU's block); the rest
mirrors torch (``conv1, bn1, layer{i}_{j}/{conv1,bn1,conv2,bn2}, fc``).
Parameters: ResNet-20 272,474 (CIFAR-10) / 278,324 (CIFAR-100).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxuq.models._common import conv
from jaxuq.models.resnet import BasicBlock
from jaxuq.nn import BatchNorm

__all__ = ["DEPTHS", "ChenyaofoResNet", "chenyaofo_resnet"]

DEPTHS = (20, 32, 44, 56)


class ChenyaofoResNet(nn.Module):
    depth: int = 20
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        """``x: [N, H, W, 3]`` (normalised) -> logits ``[N, num_classes]``."""
        if x.shape[-1] != 3:
            raise ValueError(f"chenyaofo_resnet: expected NHWC input with 3 channels, got {x.shape}")
        out = conv(16, 3, 1, 1, bias=False, name="conv1")(x)
        out = nn.relu(BatchNorm(name="bn1")(out, use_running_average=not train))
        in_planes = 16
        for li, planes in enumerate((16, 32, 64)):
            for bi in range((self.depth - 2) // 6):
                stride = 2 if (li > 0 and bi == 0) else 1
                block = BasicBlock(in_planes, planes, stride, 0.0, 1, False, name=f"layer{li + 1}_{bi}")
                out = block(out, train)
                in_planes = planes
        return nn.Dense(self.num_classes, name="fc")(jnp.mean(out, axis=(1, 2)))


def chenyaofo_resnet(depth: int = 20, num_classes: int = 10) -> ChenyaofoResNet:
    """chenyaofo's ``cifar{10,100}_resnet{depth}`` (any ``6n + 2`` depth; published: 20/32/44/56)."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"chenyaofo_resnet: depth must be 6n+2, got {depth}")
    return ChenyaofoResNet(int(depth), int(num_classes))


def _named(depth: int, num_classes: int):
    def make() -> ChenyaofoResNet:
        return chenyaofo_resnet(depth, num_classes)

    make.__name__ = f"cifar{num_classes}_resnet{depth}"
    make.__doc__ = f"chenyaofo's ``cifar{num_classes}_resnet{depth}`` (torch.hub entry point name)."
    return make


for _c in (10, 100):
    for _d in DEPTHS:
        globals()[f"cifar{_c}_resnet{_d}"] = _named(_d, _c)
        __all__.append(f"cifar{_c}_resnet{_d}")
