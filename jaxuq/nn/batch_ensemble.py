"""BatchEnsemble layers (Wen et al., ICLR 2020), exact to TU 0.13.0
(``torch_uncertainty/layers/batch_ensemble.py``).

A BatchEnsemble layer shares one weight ``W`` between ``M`` members and gives member ``m`` a rank-1
"fast weight" ``r_m s_m^T`` and its own bias: ``y = ((x * r_m) W) * s_m + b_m`` (TU's order of
operations). The members live in the batch: TU assigns row ``i`` of a batch of ``B`` rows to member
``i // (B // M)``, and the ``B mod M`` trailing rows again to members ``0, 1, ...`` in that order
(:func:`member_index`). The models repeat the input ``M`` times (``repeat_inputs``) at evaluation, so
the output is ``[(M B), C]`` member-major.

Variables (torch names): ``r_group [M, in]``, ``s_group [M, out]``, ``bias [M, out]`` and the shared
weight in the child ``conv`` (``BatchConv``: kernel ``[kh, kw, in/groups, out]``) or ``linear``
(``BatchDense``: kernel ``[in, out]``), without bias.

Initialisation (TU's ``reset_parameters``): ``r_group``, ``s_group`` ~ N(1, 0.5); the shared weight
with torch's default ``U(+-1/sqrt(fan_in))``; the bias ``U(+-1/sqrt(fan_in))`` with the weight's fan-in.
The law is TU's, the random stream JAX's: a converted checkpoint gives TU's logits, a fresh init draws
different numbers from the same distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxuq.nn.conv import Conv
from jaxuq.nn.init import torch_kernel_init, torch_uniform_init

__all__ = ["BatchConv", "BatchDense", "BatchEnsemble", "fast_weight_init", "member_index", "repeat_inputs"]


def repeat_inputs(x, num_estimators: int):
    """TU's ``repeat(x, "b ... -> (m b) ...")``: ``[B, ...] -> [M*B, ...]`` (``x_0..x_{B-1}`` M times)."""
    return jnp.tile(x, (int(num_estimators),) + (1,) * (x.ndim - 1))


def member_index(batch: int, num_estimators: int) -> np.ndarray:
    """The member of each row of a ``batch``-row input, as TU's BatchEnsemble layers assign it:
    ``[0]*b + [1]*b + ... + [M-1]*b`` (``b = batch // M``) followed by the first ``batch mod M`` of
    those entries again. Raises ``ValueError`` when ``batch < M`` (TU's layers fail there too)."""
    m = int(num_estimators)
    b, extra = divmod(int(batch), m)
    if b == 0:
        raise ValueError(f"a BatchEnsemble layer with num_estimators={m} needs at least {m} rows, "
                         f"got {batch}")
    idx = np.repeat(np.arange(m), b)
    return np.concatenate([idx, idx[:extra]])


def fast_weight_init(key, shape, dtype=jnp.float32):
    """TU's ``normal_(mean=1.0, std=0.5)`` for ``r_group`` / ``s_group``."""
    return 1.0 + 0.5 * jax.random.normal(key, shape, dtype)


def _check(num_estimators: int, name: str) -> None:
    if not isinstance(num_estimators, int | np.integer) or num_estimators <= 0:
        raise ValueError(f"{name}: num_estimators must be an int >= 1, got {num_estimators!r}")


def _fast_weights(module, x, n_in: int, n_out: int, fan_in: int):
    """``(r, s, b)`` gathered per row of ``x`` and shaped to broadcast over its middle axes."""
    m = module.num_estimators
    r = module.param("r_group", fast_weight_init, (m, n_in), jnp.float32)
    s = module.param("s_group", fast_weight_init, (m, n_out), jnp.float32)
    b = module.param("bias", torch_uniform_init(fan_in), (m, n_out), jnp.float32) if module.use_bias else None
    idx = member_index(x.shape[0], m)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2)
    row = lambda p: p[idx].reshape(*shape, p.shape[-1])  # noqa: E731
    return row(r), row(s), (None if b is None else row(b))


class BatchDense(nn.Module):
    """TU ``BatchLinear``: ``x [B, ..., in_features] -> [B, ..., out_features]`` (row ``i`` is member
    :func:`member_index` ``[i]``)."""

    in_features: int
    out_features: int
    num_estimators: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        _check(self.num_estimators, "BatchDense")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.name}: expected {self.in_features} input features, got shape {x.shape}")
        r, s, b = _fast_weights(self, x, self.in_features, self.out_features, self.in_features)
        out = nn.Dense(self.out_features, use_bias=False, kernel_init=torch_kernel_init, name="linear")(x * r)
        out = out * s
        return out if b is None else out + b


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int | np.integer) else tuple(int(a) for a in v)


class BatchConv(nn.Module):
    """TU ``BatchConv2d`` on NHWC: ``x [B, H, W, in_channels] -> [B, H', W', out_channels]``."""

    in_channels: int
    out_channels: int
    kernel_size: int | Sequence[int]
    num_estimators: int
    stride: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        _check(self.num_estimators, "BatchConv")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{self.name}: channels {self.in_channels}->{self.out_channels} not "
                             f"divisible by groups={self.groups}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"{self.name}: expected {self.in_channels} input channels (NHWC), got {x.shape}")
        kh, kw = _pair(self.kernel_size)
        ph, pw = _pair(self.padding)
        fan_in = self.in_channels // self.groups * kh * kw
        r, s, b = _fast_weights(self, x, self.in_channels, self.out_channels, fan_in)
        out = Conv(self.out_channels, (kh, kw), strides=_pair(self.stride), padding=((ph, ph), (pw, pw)),
                   kernel_dilation=_pair(self.dilation), feature_group_count=self.groups, use_bias=False,
                   kernel_init=torch_kernel_init, name="conv")(x * r)
        out = out * s
        return out if b is None else out + b



class BatchEnsemble(nn.Module):
    """TU ``BatchEnsemble`` (``torch_uncertainty/methods/batch_ensemble.py``): repeats the input M times
    (``[B, ...] -> [M*B, ...]``) at evaluation, and in training too with ``repeat_training_inputs`` (then
    train with ``RepeatTarget(M)``), and runs ``core_model`` (built with BatchEnsemble layers; its
    variables live under ``core_model`` as TU's keys ``core_model.*``). Output ``[(M B), ...]``."""

    core_model: nn.Module
    num_estimators: int
    repeat_training_inputs: bool = False
    members_in_batch: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        _check(self.num_estimators, "BatchEnsemble")
        if not train or self.repeat_training_inputs:
            x = repeat_inputs(x, self.num_estimators)
        return self.core_model(x, train)
