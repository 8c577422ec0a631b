"""Packed-Ensembles LeNet, TU 0.13.0 ``packed_lenet`` (``torch_uncertainty/models/classification/lenet.py``).

Graph (NHWC): PackedConv(in->6, 5x5, first) -> act -> Dropout2d -> maxpool 2 -> PackedConv(6->16, 5x5)
-> act -> Dropout2d -> maxpool 2 -> AdaptiveAvgPool(4, 4) -> flatten in NCHW order -> PackedDense 256->120
-> act -> Dropout -> PackedDense 120->84 -> act -> Dropout -> PackedDense 84->C (last).
Output: logits ``[M*B, C]`` member-major (rows ``m*B .. m*B+B-1`` are member ``m``).
With ``num_estimators=4, alpha=2`` it has 45,672 parameters, as TU.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxuq.nn.dropout import Dropout
from jaxuq.nn.packed import PackedConv, PackedDense
from jaxuq.nn.pool import adaptive_avg_pool2d

__all__ = ["PackedLeNet", "packed_lenet"]


class PackedLeNet(nn.Module):
    in_channels: int
    num_classes: int
    num_estimators: int = 4
    alpha: float = 2.0
    gamma: int = 1
    activation: Callable = jax.nn.relu
    groups: int = 1
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        """``x: [B, H, W, in_channels]`` (NHWC) -> logits ``[M*B, num_classes]``."""
        kw = dict(alpha=self.alpha, num_estimators=self.num_estimators, gamma=self.gamma)
        act = self.activation
        out = PackedConv(self.in_channels, 6, 5, groups=self.groups, first=True, name="conv1", **kw)(x)
        conv_dropout = Dropout(self.dropout_rate, broadcast_dims=(1, 2), name="conv_dropout")  # used twice
        out = conv_dropout(act(out), train)
        out = nn.max_pool(out, (2, 2), (2, 2))
        out = PackedConv(6, 16, 5, groups=self.groups, name="conv2", **kw)(out)
        out = conv_dropout(act(out), train)
        out = nn.max_pool(out, (2, 2), (2, 2))
        out = adaptive_avg_pool2d(out, (4, 4))
        out = jnp.transpose(out, (0, 3, 1, 2)).reshape(out.shape[0], -1)  # torch flatten order (c, h, w)
        out = act(PackedDense(256, 120, name="fc1", **kw)(out))
        out = Dropout(self.dropout_rate, name="fc_dropout")(out, train)
        out = act(PackedDense(120, 84, name="fc2", **kw)(out))
        out = Dropout(self.dropout_rate, name="last_fc_dropout")(out, train)
        return PackedDense(84, self.num_classes, last=True, name="fc3", **kw)(out)


def packed_lenet(
    in_channels: int = 1,
    num_classes: int = 10,
    num_estimators: int = 4,
    alpha: float = 2.0,
    gamma: int = 1,
    activation: Callable = jax.nn.relu,
    groups: int = 1,
    dropout_rate: float = 0.0,
) -> PackedLeNet:
    """TU ``packed_lenet`` (norm is Identity, as TU's default; TU's BatchNorm option does not fit
    the packed widths and is not offered)."""
    return PackedLeNet(in_channels, num_classes, num_estimators, alpha, int(gamma), activation, groups,
                       dropout_rate)
