"""scio's Tiniest CIFAR-10 classifier (97,530 parameters) in Flax, NHWC.

Input RGB in [0, 1] (pixel / 255), no mean/std. Names mirror the torch state dict / scio's Recorder table:
``conv1`` 3x3 3->48 p1; ``ln1/ln`` per-pixel LayerNorm(48); Blocks ``l1, l2, l3`` (48); ``dsconv`` 4x4/s2/p1
48->80 with 16 groups; ``ln2/ln``; Blocks ``l4, l5, l6`` (80); ``avgpool`` (global mean, a module so
it can be recorded); ``fc`` 80->10.

Block(d): split channels in quarters c0..c3; c1 -> ``dwconv1`` depthwise 3x3 p1; c2 -> ``dwconv2``
depthwise 7x7 p3; c3 -> 3x3 avg-pool (s1, p1, zeros counted) -> ``dwconv3`` depthwise 7x7 dilation 3
p9; concat -> ``ln/ln`` -> ``fc1`` 1x1 d->2d -> split a, b -> ``tanh(exp(a)) * a * b`` -> ``fc2`` 1x1
d->d -> + ``x * rs`` (``rs``: learned per-channel scale, stored [1, 1, 1, d]).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxuq.models._common import conv
from jaxuq.nn import DepthwiseConv2d, LayerNorm

__all__ = ["Tiniest", "tiniest"]


class LayerNorm2d(nn.Module):
    """scio's LayerNorm2d: a LayerNorm over channels applied channels-last (child ``ln``)."""

    @nn.compact
    def __call__(self, x):
        return LayerNorm(epsilon=1e-5, name="ln")(x)


class AvgPool(nn.Module):
    """Global average pool ``[N, H, W, C] -> [N, 1, 1, C]`` (torch ``AdaptiveAvgPool2d(1)``)."""

    @nn.compact
    def __call__(self, x):
        return jnp.mean(x, axis=(1, 2), keepdims=True)


class Block(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, x):
        d4 = self.dim // 4
        rs = self.param("rs", nn.initializers.ones, (1, 1, 1, self.dim), jnp.float32)
        c0, c1, c2, c3 = jnp.split(x, 4, axis=-1)
        # depthwise convs as shifted sums (same variables as a grouped nn.Conv; ~20x faster on CPU)
        c1 = DepthwiseConv2d(d4, 3, padding=1, name="dwconv1")(c1)
        c2 = DepthwiseConv2d(d4, 7, padding=3, name="dwconv2")(c2)
        c3 = nn.avg_pool(c3, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)
        c3 = DepthwiseConv2d(d4, 7, padding=9, dilation=3, name="dwconv3")(c3)
        h = LayerNorm2d(name="ln")(jnp.concatenate([c0, c1, c2, c3], axis=-1))
        h = conv(2 * self.dim, 1, bias=True, name="fc1")(h)
        a, b = jnp.split(h, 2, axis=-1)
        h = jnp.tanh(jnp.exp(a)) * a * b
        h = conv(self.dim, 1, bias=True, name="fc2")(h)
        return h + x * rs


class Tiniest(nn.Module):
    num_classes: int = 10
    in_channels: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        """``x: [N, 32, 32, in_channels]`` in [0, 1] -> logits ``[N, num_classes]``. (No BN/dropout:
        ``train`` changes nothing.)"""
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"tiniest: expected NHWC input with {self.in_channels} channels, got {x.shape}")
        x = conv(48, 3, 1, 1, bias=True, name="conv1")(x)
        x = LayerNorm2d(name="ln1")(x)
        for i in (1, 2, 3):
            x = Block(48, name=f"l{i}")(x)
        x = conv(80, 4, 2, 1, bias=True, groups=16, name="dsconv")(x)
        x = LayerNorm2d(name="ln2")(x)
        for i in (4, 5, 6):
            x = Block(80, name=f"l{i}")(x)
        x = AvgPool(name="avgpool")(x)
        return nn.Dense(self.num_classes, name="fc")(x.reshape(x.shape[0], -1))


def tiniest(num_classes: int = 10, in_channels: int = 3) -> Tiniest:
    return Tiniest(num_classes, in_channels)
