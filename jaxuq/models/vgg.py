"""TU 0.13.0's VGG (``torch_uncertainty/models/classification/vgg/``) in Flax, NHWC: ``vgg`` and
``packed_vgg`` (arch 11/13/16/19), one graph over the layer :class:`~jaxuq.models._kinds.Kind`.

- ``features``: for each entry of TU's config, a 3x3/p1 conv (with bias) -> norm -> ReLU, or a 2x2/s2
  max-pool for ``"M"``. The first conv has no groups (packed: a ``first`` PackedConv); ``norm="none"``
  (TU's default ``nn.Identity``) or ``"batchnorm"``. Submodules ``features_{i}`` with TU's Sequential
  index ``i`` (conv, norm, ReLU, pool each take one).
- ``avgpool``: AdaptiveAvgPool2d to 7x7 (``style="imagenet"``, TU's default) or 1x1 (``"cifar"``), flattened
  in torch's NCHW order.
- ``cls_head``: ``cls_head_0`` (512*s -> 4096) -> ReLU -> Dropout -> ``cls_head_3`` (4096 -> 4096) -> ReLU
  -> Dropout -> ``cls_head_6`` (4096 -> C; packed: ``last``, logits ``[(M B), C]``).
- Initialisation (TU's ``_init_weights``): conv kernels N(0, 2/fan_out) (``kaiming_normal_(mode="fan_out")``),
  linear kernels N(0, 0.01^2), biases 0. The packed layers keep their own torch-default law (TU re-draws
  them with the VGG law): a fresh ``packed_vgg`` differs in distribution from TU's (documented).
- TU's packed VGG puts ``BatchNorm2d(v)`` after convs of ``int(alpha*v)`` channels, which fails in TU for
  ``alpha != 1``: refused here.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxuq.models._kinds import Kind, count, validated
from jaxuq.nn import BatchNorm, Dropout, adaptive_avg_pool2d, max_pool2d

__all__ = ["PackedVGG", "VGG", "VGG_CONFIGS", "packed_vgg", "vgg"]

VGG_CONFIGS: dict[int, list] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}
_CONV_INIT = dict(kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                  bias_init=nn.initializers.zeros)
_DENSE_INIT = dict(kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros)


class VGG(nn.Module):
    in_channels: int
    num_classes: int
    arch: int
    norm: str = "none"
    groups: int = 1
    dropout_rate: float = 0.5
    style: str = "imagenet"

    def kind(self) -> Kind:
        return Kind("std")

    @nn.compact
    def __call__(self, x, train: bool = False):
        """``x: [B, H, W, in_channels]`` -> logits ``[B, C]`` (packed: ``[(M B), C]``)."""
        kind = self.kind()
        _check(self, kind)
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"vgg: expected NHWC input with {self.in_channels} channels, got {x.shape}")
        out, cin, i = x, self.in_channels, 0
        for v in VGG_CONFIGS[self.arch]:
            if v == "M":
                out, i = max_pool2d(out, 2, 2), i + 1
                continue
            first = i == 0
            groups = self.groups if (kind.name == "packed" or not first) else 1
            out = kind.conv(cin, v, 3, 1, 1, bias=True, groups=groups, first=first, name=f"features_{i}",
                            **_CONV_INIT)(out)
            if self.norm == "batchnorm":
                out = BatchNorm(name=f"features_{i + 1}")(out, use_running_average=not train)
            out, cin, i = nn.relu(out), v, i + 3
        side = 7 if self.style == "imagenet" else 1
        out = adaptive_avg_pool2d(out, (side, side))
        out = jnp.transpose(out, (0, 3, 1, 2)).reshape(out.shape[0], -1)  # torch's NCHW flatten
        sizes = ((512 * side * side, 4096), (4096, 4096), (4096, self.num_classes))
        for j, (n_in, n_out) in enumerate(sizes):
            if j:
                out = Dropout(self.dropout_rate, name=f"cls_head_{3 * j - 1}")(nn.relu(out), train)
            out = kind.dense(n_in, n_out, last=j == 2, name=f"cls_head_{3 * j}", **_DENSE_INIT)(out)
        return out


class PackedVGG(VGG):
    """TU ``packed_vgg``: logits ``[(M B), C]``."""

    num_estimators: int = 1
    alpha: float = 2.0
    gamma: int = 1
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        return Kind("packed", self.num_estimators, alpha=self.alpha, gamma=self.gamma)


def _check(model: VGG, kind: Kind) -> None:
    if model.arch not in VGG_CONFIGS:
        raise ValueError(f"Unknown VGG arch {model.arch}.")
    if model.norm not in ("none", "batchnorm"):
        raise ValueError(f"vgg: norm must be 'none' or 'batchnorm', got {model.norm!r}")
    if model.style not in ("imagenet", "cifar"):
        raise ValueError(f"vgg: style must be 'imagenet' or 'cifar', got {model.style!r}")
    if kind.name == "packed" and model.norm == "batchnorm" and kind.alpha != 1:
        raise ValueError("packed_vgg: TU's BatchNorm2d(v) does not fit the packed widths int(alpha*v) "
                         f"(alpha={kind.alpha}); use norm='none' or alpha=1")


def vgg(in_channels: int, num_classes: int, arch: int, norm: str = "none", groups: int = 1,
        dropout_rate: float = 0.5, style: str = "imagenet") -> VGG:
    """TU ``vgg`` (same arguments; ``norm`` by name; TU's unused ``num_estimators`` is not taken)."""
    return VGG(in_channels, num_classes, int(arch), norm, groups, dropout_rate, style)


def packed_vgg(in_channels: int, num_classes: int, arch: int, alpha: float, num_estimators: int, gamma: int,
               norm: str = "none", groups: int = 1, dropout_rate: float = 0.5,
               style: str = "imagenet") -> PackedVGG:
    """TU ``packed_vgg`` (same arguments and defaults; ``norm`` by name)."""
    return validated(PackedVGG(
        in_channels, num_classes, int(arch), norm, groups, dropout_rate, style,
        num_estimators=count(num_estimators, "num_estimators"), alpha=alpha, gamma=count(gamma, "gamma")))
