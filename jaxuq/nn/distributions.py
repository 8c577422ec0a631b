"""TU 0.13.0's distribution heads (``torch_uncertainty/layers/distributions.py``) in Flax.

A head is a base layer with ``P * D`` outputs (``P`` parameters of the family, ``D = event_dim``) whose
output is split on the last axis into TU's parameter dict (:func:`expand`): ``loc = x[..., :D]``,
``scale = clamp(softplus(x[..., D:2D]), min_scale)``, ... (NHWC: the conv heads' channels are the last
axis too, so ``*ConvNd`` splits the same way). Each value is ``[..., D]``; the dict is what
:mod:`jaxuq.distributions` (log-densities, cdf/icdf), the regression losses and metrics take.

=====================================  =========================  ======================================
TU                                     jaxuq                      parameters
=====================================  =========================  ======================================
``NormalLinear``, ``NormalConvNd``     ``DistDense("normal", D)``  loc, scale (``min_scale`` 1e-6)
                                       / ``DistConv("normal", D,   (same for laplace, cauchy)
                                       kernel_size)``
``GammaLinear``, ``GammaConvNd``       family "gamma"             concentration, rate (``min_concentration``,
                                                                  ``min_rate`` 1e-6)
``StudentTLinear``, ``StudentTConvNd``  family "student"           loc, scale, df = clamp(softplus, ``min_df``
                                                                  2) or ``fixed_df`` (then P = 2)
``NormalInverseGammaLinear`` / ``..ConvNd``  family "nig"         loc, lmbda, alpha = 1 + clamp(softplus,
                                                                  ``min_alpha``), beta (minima 1e-6)
=====================================  =========================  ======================================

The base layer is a child named ``base_layer`` (TU's attribute), so a TU state dict's
``<head>.base_layer.weight`` maps to ``<head>/base_layer/kernel``. ``DistDense`` builds it with ``kind``
(any object with TU's layer-kind builder ``dense(cin, cout, name=, last=)``, e.g. the packed, batched or
Bayesian kinds of :mod:`jaxuq.models`), or a torch-initialised ``nn.Dense`` when ``kind`` is None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxuq.distributions import PARAMS, check_family, softplus
from jaxuq.nn.conv import Conv
from jaxuq.nn.init import torch_bias_init, torch_kernel_init

__all__ = ["DIST_ARGS", "DistConv", "DistDense", "check_dist_args", "expand", "num_params"]

#: family -> TU's head arguments and their defaults
DIST_ARGS = {
    "normal": {"min_scale": 1e-6},
    "laplace": {"min_scale": 1e-6},
    "cauchy": {"min_scale": 1e-6},
    "gamma": {"min_concentration": 1e-6, "min_rate": 1e-6},
    "student": {"min_scale": 1e-6, "min_df": 2.0, "fixed_df": None},
    "nig": {"min_lmbda": 1e-6, "min_alpha": 1e-6, "min_beta": 1e-6},
}


def check_dist_args(family: str, dist_args) -> tuple[tuple[str, float | None], ...]:
    """TU's head arguments for ``family`` (its defaults where absent) as a hashable, sorted tuple of
    pairs; ``TypeError`` for an argument the head does not take (TU passes it to the base layer, which
    refuses it), ``ValueError`` for a NaN/inf or a non-positive ``fixed_df``."""
    check_family(family)
    given = dict(dist_args or ())
    unknown = sorted(set(given) - set(DIST_ARGS[family]))
    if unknown:
        raise TypeError(f"the {family!r} head takes {sorted(DIST_ARGS[family])}, got {unknown}")
    out = {**DIST_ARGS[family], **given}
    for k, v in out.items():
        if v is None and k == "fixed_df":
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError(f"`{k}` must be a real number, got {type(v).__name__} {v!r}")
        if not math.isfinite(v):
            raise ValueError(f"`{k}` must be finite, got {v}")
        if k == "fixed_df" and v <= 0:
            raise ValueError(f"`fixed_df` must be > 0, got {v}")
    return tuple(sorted((k, None if v is None else float(v)) for k, v in out.items()))


def num_params(family: str, dist_args=()) -> int:
    """``P``: the head's outputs per event dimension (Student-t with ``fixed_df``: 2)."""
    args = dict(check_dist_args(family, dist_args))
    return len(PARAMS[family]) - (family == "student" and args["fixed_df"] is not None)


def _clamp_min(x, low: float):
    """``torch.clamp(x, min=low)`` (gradient passed where ``x >= low``, as torch's backward)."""
    return jnp.where(x >= low, x, jnp.asarray(low, x.dtype))


def expand(family: str, x, event_dim: int, dist_args=()) -> dict:
    """TU's head forward on the base layer's output ``x [..., P * D]`` -> ``{name: [..., D]}``."""
    a, d = dict(check_dist_args(family, dist_args)), int(event_dim)
    if x.shape[-1] != num_params(family, dist_args) * d:
        raise ValueError(f"a {family!r} head with event_dim={d} needs {num_params(family, dist_args) * d} "
                         f"base outputs, got shape {x.shape}")
    part = lambda i: x[..., i * d : (i + 1) * d]  # noqa: E731
    pos = lambda i, low: _clamp_min(softplus(part(i)), low)  # noqa: E731
    if family in ("normal", "laplace", "cauchy"):
        return {"loc": part(0), "scale": pos(1, a["min_scale"])}
    if family == "gamma":
        return {"concentration": pos(0, a["min_concentration"]), "rate": pos(1, a["min_rate"])}
    if family == "student":
        fixed = a["fixed_df"]
        df = pos(2, a["min_df"]) if fixed is None else jnp.full_like(part(0), fixed)
        return {"loc": part(0), "scale": pos(1, a["min_scale"]), "df": df}
    return {"loc": part(0), "lmbda": pos(1, a["min_lmbda"]), "alpha": 1 + pos(2, a["min_alpha"]),
            "beta": pos(3, a["min_beta"])}


class DistDense(nn.Module):
    """TU's ``*Linear`` heads: ``x [..., in] -> {name: [..., event_dim]}`` (``kind.dense`` or ``nn.Dense``
    with torch's init as ``base_layer``; ``in_features``: TU's nominal input width, default the input's; a
    packed kind's ``first`` / ``last`` as TU passes them: ``last``
    gives rows ``[(M B), ...]``)."""

    family: str
    event_dim: int
    dist_args: tuple = ()
    kind: object = None
    in_features: int | None = None
    first: bool = False
    last: bool = True

    @nn.compact
    def __call__(self, x):
        width = num_params(self.family, self.dist_args) * int(self.event_dim)
        cin = x.shape[-1] if self.in_features is None else self.in_features
        if self.kind is None:
            base = nn.Dense(width, kernel_init=torch_kernel_init, bias_init=torch_bias_init(cin),
                            name="base_layer")
        else:
            base = self.kind.dense(cin, width, name="base_layer", first=self.first, last=self.last)
        return expand(self.family, base(x), self.event_dim, self.dist_args)


class DistConv(nn.Module):
    """TU's ``*ConvNd`` heads (``base_layer`` a torch ``Conv{1,2,3}d`` with ``P * D`` output channels,
    NHWC): ``x [B, *spatial, C_in] -> {name: [B, *spatial', event_dim]}``."""

    family: str
    event_dim: int
    kernel_size: int | Sequence[int]
    stride: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    bias: bool = True
    dist_args: tuple = ()

    @nn.compact
    def __call__(self, x):
        nd = x.ndim - 2
        tup = lambda v: tuple(v) if isinstance(v, Sequence) else (int(v),) * nd  # noqa: E731
        k = tup(self.kernel_size)
        fan_in = x.shape[-1] // self.groups * math.prod(k)
        width = num_params(self.family, self.dist_args) * int(self.event_dim)
        base = Conv(width, k, strides=tup(self.stride), padding=tuple((p, p) for p in tup(self.padding)),
                    kernel_dilation=tup(self.dilation), feature_group_count=self.groups, use_bias=self.bias,
                    kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in), name="base_layer")
        return expand(self.family, base(x), self.event_dim, self.dist_args)
