"""TU 0.13.0 ``lenet`` (``torch_uncertainty/models/classification/lenet.py``) in Flax, NHWC.

Graph: conv1 (in->6, 5x5, groups) -> norm1 -> act -> Dropout2d -> max_pool 2 -> conv2 (6->16, 5x5, groups)
-> norm2 -> act -> Dropout2d -> max_pool 2 -> AdaptiveAvgPool2d((4, 4)) -> flatten in NCHW order (c, h, w)
-> fc1 (256->120) -> act -> Dropout -> fc2 (120->84) -> act -> Dropout -> fc3 (84->C). The dropouts are named
as TU's modules: ``conv_dropout`` (one Dropout2d module called twice), ``fc_dropout``, ``last_fc_dropout``.
``norm="none"`` (TU's ``nn.Identity``, default) or ``"batchnorm"`` (``nn.BatchNorm2d``: ``norm1``/``norm2``).
44,426 parameters for ``lenet(1, 10)``. ``torch_init=True`` draws conv/linear weights and biases from
torch's default law (``kaiming_uniform_(a=sqrt(5))``, bias ``U(+-1/sqrt(fan_in))``, ``jaxuq.nn.init``)
instead of Flax's (lecun-normal kernels, zero biases); the parameter tree is the same.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxuq.models._common import activation as _act
from jaxuq.models._common import conv, torch_inits
from jaxuq.nn import BatchNorm, Dropout, adaptive_avg_pool2d, max_pool2d

__all__ = ["LeNet", "lenet"]


class LeNet(nn.Module):
    in_channels: int
    num_classes: int
    activation: str = "relu"
    norm: str = "none"
    groups: int = 1
    dropout_rate: float = 0.0
    torch_init: bool = False

    def layers(self):
        """``(conv(features, fan_in, name), dense(features, fan_in, name))``: builders of the weight
        layers (TU's ``conv2d_layer``/``linear_layer``), called inside ``__call__``."""
        ti = lambda fan_in: torch_inits(self.torch_init, fan_in)  # noqa: E731
        return (lambda f, fan_in, name: conv(f, 5, bias=True, groups=self.groups, name=name, **ti(fan_in)),
                lambda f, fan_in, name: nn.Dense(f, name=name, **ti(fan_in)))

    @nn.compact
    def __call__(self, x, train: bool = False):
        """``x: [N, H, W, in_channels]`` -> logits ``[N, num_classes]``."""
        if self.norm not in ("none", "batchnorm"):
            raise ValueError(f"lenet: norm must be 'none' or 'batchnorm', got {self.norm!r}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"lenet: expected NHWC input with {self.in_channels} channels, got {x.shape}")
        act, (conv_l, dense_l) = _act(self.activation), self.layers()
        bn = self.norm == "batchnorm"
        conv_dropout = Dropout(self.dropout_rate, broadcast_dims=(1, 2), name="conv_dropout")  # used twice
        out = conv_l(6, self.in_channels // self.groups * 25, "conv1")(x)
        if bn:
            out = BatchNorm(name="norm1")(out, use_running_average=not train)
        out = max_pool2d(conv_dropout(act(out), train), 2)
        out = conv_l(16, 6 // self.groups * 25, "conv2")(out)
        if bn:
            out = BatchNorm(name="norm2")(out, use_running_average=not train)
        out = max_pool2d(conv_dropout(act(out), train), 2)
        out = adaptive_avg_pool2d(out, (4, 4))
        out = jnp.transpose(out, (0, 3, 1, 2)).reshape(out.shape[0], -1)  # torch's NCHW flatten
        out = act(dense_l(120, 256, "fc1")(out))
        out = Dropout(self.dropout_rate, name="fc_dropout")(out, train)
        out = act(dense_l(84, 120, "fc2")(out))
        out = Dropout(self.dropout_rate, name="last_fc_dropout")(out, train)
        return dense_l(self.num_classes, 84, "fc3")(out)


def lenet(in_channels: int, num_classes: int, activation: str = "relu", norm: str = "none", groups: int = 1,
          dropout_rate: float = 0.0, torch_init: bool = False) -> LeNet:
    """TU ``lenet`` (same arguments; ``activation`` by name, ``norm`` in {"none", "batchnorm"});
    ``torch_init``: torch's default initialisation law instead of Flax's."""
    return LeNet(in_channels, num_classes, activation, norm, groups, dropout_rate, torch_init)
