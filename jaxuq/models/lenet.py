"""TU 0.13.0's LeNets (``torch_uncertainty/models/classification/lenet.py``) in Flax, NHWC: ``lenet``,
``packed_lenet`` and ``batchensemble_lenet``, one graph over the layer :class:`~jaxuq.models._kinds.Kind`.

Graph: conv1 (in->6, 5x5, groups) -> norm1 -> act -> Dropout2d -> max_pool 2 -> conv2 (6->16, 5x5, groups)
-> norm2 -> act -> Dropout2d -> max_pool 2 -> AdaptiveAvgPool2d((4, 4)) -> flatten in NCHW order (c, h, w)
-> fc1 (256->120) -> act -> Dropout -> fc2 (120->84) -> act -> Dropout -> fc3 (84->C). The dropouts are named
as TU's modules: ``conv_dropout`` (one Dropout2d module called twice), ``fc_dropout``, ``last_fc_dropout``.
``norm="none"`` (TU's ``nn.Identity``, default) or ``"batchnorm"`` (``nn.BatchNorm2d``: ``norm1``/``norm2``).

- ``lenet``: 44,426 parameters for ``lenet(1, 10)``. ``torch_init=True`` draws conv/linear weights and
  biases from torch's default law (``kaiming_uniform_(a=sqrt(5))``, bias ``U(+-1/sqrt(fan_in))``,
  ``jaxuq.nn.init``) instead of Flax's (lecun-normal kernels, zero biases); the parameter tree is the same.
- ``packed_lenet``: PackedConv/PackedDense (conv1 ``first``, fc3 ``last``): logits ``[M*B, C]`` member-major;
  45,672 parameters with ``num_estimators=4, alpha=2`` as TU. TU's BatchNorm option does not fit the
  packed widths (it fails in TU) and is refused.
- ``batchensemble_lenet``: TU's ``BatchEnsemble(lenet(...), convert_layers=True)``: every conv/linear
  becomes a BatchConv/BatchDense (with bias), BatchNorm by default, the model under ``core_model`` (torch's
  keys ``core_model.conv1.r_group`` ...) and the input repeated M times at eval (and in training with
  ``repeat_training_inputs``): logits ``[M*B, C]``.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxuq.models._common import activation as _act
from jaxuq.models._kinds import Kind, count, validated
from jaxuq.nn import BatchNorm, Dropout, adaptive_avg_pool2d, max_pool2d
from jaxuq.nn.batch_ensemble import BatchEnsemble

__all__ = ["BatchedLeNet", "LeNet", "PackedLeNet", "batchensemble_lenet", "lenet", "packed_lenet"]


class LeNet(nn.Module):
    in_channels: int
    num_classes: int
    activation: str = "relu"
    norm: str = "none"
    groups: int = 1
    dropout_rate: float = 0.0
    torch_init: bool = False

    def kind(self) -> Kind:
        return Kind("std", torch_init=self.torch_init)

    @nn.compact
    def __call__(self, x, train: bool = False):
        """``x: [N, H, W, in_channels]`` -> logits ``[N, num_classes]`` (packed: ``[M*N, num_classes]``)."""
        if self.norm not in ("none", "batchnorm"):
            raise ValueError(f"lenet: norm must be 'none' or 'batchnorm', got {self.norm!r}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"lenet: expected NHWC input with {self.in_channels} channels, got {x.shape}")
        kind, act = self.kind(), _act(self.activation)
        conv_dropout = Dropout(self.dropout_rate, broadcast_dims=(1, 2), name="conv_dropout")  # used twice
        # conv1 -> ReLU -> max_pool as one fused block (jaxuq.nn.ConvMaxPool) when nothing sits between
        # them (no norm; no dropout, which an eval-time MC Dropout may switch on). Only conv1: its 24x24 maps
        # are a step's largest tensor (8 members of TU's deep-ensemble recipe on one batch of 128: 14 MB),
        # and fusing it made that step ~10 % faster; fusing conv2 as well (member-stacked inputs, a lax.map
        # over members) made it ~20 % slower (1.13 vs 0.92 s per 25 steps); one model is unchanged.
        fuse = (kind.fuses_max_pool and self.norm == "none" and self.activation == "relu"
                and self.dropout_rate == 0)
        out = x
        for i, (cin, cout) in enumerate(((self.in_channels, 6), (6, 16)), start=1):
            pooled = fuse and i == 1
            out = kind.conv(cin, cout, 5, bias=True, groups=self.groups, first=i == 1, name=f"conv{i}",
                            max_pool=2 if pooled else 0, relu=pooled)(out)
            if pooled:
                continue
            if self.norm == "batchnorm":
                out = BatchNorm(name=f"norm{i}")(out, use_running_average=not train)
            out = max_pool2d(conv_dropout(act(out), train), 2)
        out = adaptive_avg_pool2d(out, (4, 4))
        out = jnp.transpose(out, (0, 3, 1, 2)).reshape(out.shape[0], -1)  # torch's NCHW flatten
        out = act(kind.dense(256, 120, name="fc1")(out))
        out = Dropout(self.dropout_rate, name="fc_dropout")(out, train)
        out = act(kind.dense(120, 84, name="fc2")(out))
        out = Dropout(self.dropout_rate, name="last_fc_dropout")(out, train)
        return kind.dense(84, self.num_classes, last=True, name="fc3")(out)


class PackedLeNet(LeNet):
    """TU ``packed_lenet``: logits ``[M*N, num_classes]``."""

    num_estimators: int = 4
    alpha: float = 2.0
    gamma: int = 1
    members_in_batch: ClassVar[bool] = True

    def kind(self) -> Kind:
        if self.norm != "none":
            raise ValueError("packed_lenet: TU's BatchNorm option does not fit the packed widths; "
                             "use norm='none'")
        return Kind("packed", self.num_estimators, alpha=self.alpha, gamma=self.gamma)


class BatchedLeNet(LeNet):
    """The core of ``batchensemble_lenet``: LeNet with BatchEnsemble layers (no input repetition)."""

    num_estimators: int = 4

    def kind(self) -> Kind:
        return Kind("batched", self.num_estimators)


def lenet(in_channels: int, num_classes: int, activation: str = "relu", norm: str = "none", groups: int = 1,
          dropout_rate: float = 0.0, torch_init: bool = False) -> LeNet:
    """TU ``lenet`` (same arguments; ``activation`` by name, ``norm`` in {"none", "batchnorm"});
    ``torch_init``: torch's default initialisation law instead of Flax's."""
    return LeNet(in_channels, num_classes, activation, norm, groups, dropout_rate, torch_init)


def packed_lenet(in_channels: int = 1, num_classes: int = 10, num_estimators: int = 4, alpha: float = 2.0,
                 gamma: int = 1, activation: str = "relu", groups: int = 1,
                 dropout_rate: float = 0.0) -> PackedLeNet:
    """TU ``packed_lenet`` (norm is Identity, TU's default)."""
    return validated(PackedLeNet(
        in_channels, num_classes, activation, "none", groups, dropout_rate,
        num_estimators=count(num_estimators, "num_estimators"), alpha=alpha, gamma=count(gamma, "gamma")))


def batchensemble_lenet(in_channels: int, num_classes: int, num_estimators: int = 4, activation: str = "relu",
                        norm: str = "batchnorm", groups: int = 1, dropout_rate: float = 0.0,
                        repeat_training_inputs: bool = False) -> BatchEnsemble:
    """TU ``batchensemble_lenet`` (same arguments and defaults; ``norm`` by name)."""
    m = count(num_estimators, "num_estimators")
    core = BatchedLeNet(in_channels, num_classes, activation, norm, groups, dropout_rate, num_estimators=m)
    return BatchEnsemble(core, m, repeat_training_inputs)
