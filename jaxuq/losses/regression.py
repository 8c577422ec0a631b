"""TU 0.13.0's regression losses (``torch_uncertainty/losses/regression.py``) as frozen, hashable
dataclasses: ``loss(outputs, targets) -> float32`` (``[N]`` for ``reduction="none"``), usable as
``TrainConfig(loss_fn=...)``.

``outputs`` is what the model returns: the head's parameter dict ``{name: [N, D]}`` (probabilistic
losses) or predictions ``[N, D]``. ``targets`` are ``[N, D]``, or ``[N]`` when ``D = 1`` (TU's routine
unsqueezes one-dimensional targets the same way); another shape is a ``ValueError``.

- :class:`DistributionNLLLoss` (``dist_family``): ``-log p(y)`` of TU's ``Independent(dist, 1)`` (summed
  over the D outputs), NaN-safe like TU (``nanmean`` / ``nansum``).
- :class:`DERLoss` (``reg_weight``): the NIG NLL plus ``reg_weight * |y - loc|_1 * (2 lmbda + alpha)``.
- :class:`BetaNLL` (``beta``): torch's ``GaussianNLLLoss`` (variance clamped at 1e-6 with the gradient
  passed through, as torch's in-place clamp) times ``stop_gradient(variance) ** beta``; called with a
  Normal head's dict (``variance = scale ** 2``) or as TU, ``(mean, targets, variance)``.
- :class:`PinballLoss` (``quantile`` in (0, 1), or a tuple of them for ``[N, K]`` quantile outputs).

Deviations (TU is wrong; ``tests/test_regression_losses.py`` pins each): TU's ``DERLoss`` adds the
``[N]`` NLL to an ``[N, 1]`` regulariser, an ``[N, N]`` matrix whose mean is right but whose
``"sum"`` is N times the per-sample sum and whose ``"none"`` is that matrix; here the per-sample loss
is ``[N]`` (the regulariser summed over the D outputs) for every reduction.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxuq import distributions as D
from jaxuq.losses.classification import _real, _reduce, _reduction

__all__ = ["BetaNLL", "DERLoss", "DistributionNLLLoss", "PinballLoss", "regression_targets"]


def regression_targets(targets, shape: tuple[int, ...], name: str = "targets"):
    """float32 targets of the outputs' ``shape`` ``[N, ..., D]``: as they are, or ``[N, ...]`` unsqueezed
    when ``D == 1``; else ``ValueError`` (``TypeError`` for non-float targets)."""
    t = jnp.asarray(targets)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be float regression targets, got dtype {t.dtype}")
    shape = tuple(shape)
    if t.shape == shape[:-1] and shape[-1] == 1:
        t = t[..., None]
    if t.shape != shape:
        one = f" or {list(shape[:-1])}" if shape[-1] == 1 else ""
        raise ValueError(f"`{name}` must be {list(shape)}{one} to match the outputs, got shape {t.shape}")
    return t.astype(jnp.float32)


def _params(family: str, outputs, targets):
    if not isinstance(outputs, dict):
        raise TypeError(f"a {family!r} loss needs the head's parameter dict, got {type(outputs).__name__}")
    if set(outputs) != set(D.PARAMS[family]):
        raise ValueError(f"a {family!r} head returns {D.PARAMS[family]}, got the keys {tuple(outputs)}")
    p = {k: jnp.asarray(v, jnp.float32) for k, v in outputs.items()}
    loc = p[D.PARAMS[family][0]]
    return p, regression_targets(targets, loc.shape)


def _nan_reduce(loss, reduction: str):
    if reduction == "mean":
        return jnp.nanmean(loss)
    if reduction == "sum":
        return jnp.nansum(loss)
    return loss


@dataclasses.dataclass(frozen=True)
class DistributionNLLLoss:
    """TU ``DistributionNLLLoss`` under its routine's ``dist_family``: per sample
    ``-sum_d log p(y_d)``, ``nanmean`` / ``nansum`` / ``[N]``."""

    dist_family: str
    reduction: str | None = "mean"

    def __post_init__(self):
        D.check_family(self.dist_family)
        object.__setattr__(self, "reduction", _reduction(self.reduction))

    def per_sample(self, outputs, targets):
        p, y = _params(self.dist_family, outputs, targets)
        return -jnp.sum(D.log_prob(self.dist_family, p, y), axis=-1)

    def __call__(self, outputs, targets):
        return _nan_reduce(self.per_sample(outputs, targets), self.reduction)


@dataclasses.dataclass(frozen=True)
class DERLoss:
    """TU ``DERLoss(reg_weight)`` on a Normal-Inverse-Gamma head: per sample
    ``-log p_NIG(y) + reg_weight * sum_d |y - loc|_1 (2 lmbda_d + alpha_d)``."""

    reg_weight: float
    reduction: str | None = "mean"

    def __post_init__(self):
        w = _real("reg_weight", self.reg_weight, low=0.0,
                  message=f"The regularization weight should be non-negative, but got {self.reg_weight}.")
        object.__setattr__(self, "reg_weight", w)
        object.__setattr__(self, "reduction", _reduction(self.reduction))

    def __call__(self, outputs, targets):
        p, y = _params("nig", outputs, targets)
        nll = -jnp.sum(D.log_prob("nig", p, y), axis=-1)
        l1 = jnp.sum(jnp.abs(y - p["loc"]), axis=-1, keepdims=True)
        reg = jnp.sum(l1 * (2 * p["lmbda"] + p["alpha"]), axis=-1)
        return _reduce(nll + self.reg_weight * reg, self.reduction)


@dataclasses.dataclass(frozen=True)
class BetaNLL:
    """TU ``BetaNLL(beta)``: ``GaussianNLLLoss(mean, y, var) * stop_gradient(var) ** beta`` per element."""

    beta: float = 0.5
    reduction: str | None = "mean"

    def __post_init__(self):
        b = _real("beta", self.beta, low=0.0, high=1.0,
                  message=f"The beta parameter should be in range [0, 1], but got {self.beta}.")
        object.__setattr__(self, "beta", b)
        object.__setattr__(self, "reduction", _reduction(self.reduction, allow_none=False))

    def __call__(self, outputs, targets, variance=None):
        if isinstance(outputs, dict):
            if variance is not None:
                raise ValueError("give the variance through the Normal head's `scale` or `variance=`, "
                                 "not both")
            p, y = _params("normal", outputs, targets)
            mean, var = p["loc"], p["scale"] ** 2
        else:
            if variance is None:
                raise ValueError("BetaNLL needs `variance` (or a Normal head's dict as `outputs`)")
            mean, var = jnp.asarray(outputs, jnp.float32), jnp.asarray(variance, jnp.float32)
            y = regression_targets(targets, mean.shape)
            if var.shape != mean.shape:
                raise ValueError(f"`variance` must have the shape of the mean {mean.shape}, got {var.shape}")
        clamped = var + jax.lax.stop_gradient(jnp.maximum(var, 1e-6) - var)  # torch: in-place, no_grad
        nll = 0.5 * (jnp.log(clamped) + (mean - y) ** 2 / clamped)
        return _reduce(nll * jax.lax.stop_gradient(var) ** self.beta, self.reduction)


@dataclasses.dataclass(frozen=True)
class PinballLoss:
    """TU ``PinballLoss(quantile)``: ``max(q r, (q - 1) r)``, ``r = y - prediction``. A tuple of K
    quantiles takes predictions ``[N, K]`` (column k for quantile k) and targets ``[N]``."""

    quantile: float | tuple[float, ...] = 0.5
    reduction: str | None = "mean"

    def __post_init__(self):
        qs = self.quantile if isinstance(self.quantile, tuple | list) else (self.quantile,)
        msg = "The quantile parameter should be in (0, 1), but got {}."
        checked = tuple(_real("quantile", q, low=None, message=msg.format(q)) for q in qs)
        if not qs or not all(0 < q < 1 for q in checked):
            raise ValueError(msg.format(self.quantile))
        several = isinstance(self.quantile, tuple | list)
        object.__setattr__(self, "quantile", checked if several else checked[0])
        object.__setattr__(self, "reduction", _reduction(self.reduction, allow_none=False))

    def __call__(self, predictions, targets):
        pred = jnp.asarray(predictions, jnp.float32)
        q = jnp.asarray(self.quantile, jnp.float32)
        if isinstance(self.quantile, tuple):
            if pred.ndim != 2 or pred.shape[-1] != len(self.quantile):
                k = len(self.quantile)
                raise ValueError(f"{k} quantiles need predictions [N, {k}], got {pred.shape}")
            y = regression_targets(targets, pred.shape[:1] + (1,))
        else:
            y = regression_targets(targets, pred.shape)
        residual = y - pred
        return _reduce(jnp.maximum(q * residual, (q - 1) * residual), self.reduction)
