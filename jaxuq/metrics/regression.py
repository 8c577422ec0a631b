"""TU 0.13.0's regression metrics (``torch_uncertainty/metrics/regression``, torchmetrics' MAE/MSE) as
pure float32 functions, and the additive statistics behind their streaming forms.

Shapes: predictions and targets ``[N]`` or ``[N, D]`` (every element counts, like torchmetrics);
a predictive distribution is ``(family, params)`` with ``params`` TU's head dict (leaves ``[N, D]``;
a deep ensemble's mixture: ``[M, N, D]`` with ``mixture=True``), see :mod:`jaxuq.distributions`.

=========================================  ====================================================
TU                                         jaxuq (``jaxuq.metrics``)
=========================================  ====================================================
``MeanAbsoluteError``, ``MeanSquaredError``  :func:`mean_absolute_error`, :func:`mean_squared_error`
(``squared=False``: RMSE)                  (``squared=False``)
``MeanSquaredLogError``, ``Log10``          :func:`mean_squared_log_error`, :func:`log10_error`
``SILog``, ``ThresholdAccuracy``            :func:`silog`, :func:`threshold_accuracy`
``MeanGTRelativeAbsoluteError``            :func:`relative_absolute_error`
``MeanGTRelativeSquaredError``             :func:`relative_squared_error`
``MeanAbsoluteErrorInverse``               :func:`inverse_absolute_error`
``MeanSquaredErrorInverse``                :func:`inverse_squared_error`
``IntervalCoverage``                       :func:`interval_coverage`
``MeanIntervalWidth``                      :func:`mean_interval_width`
``IntervalScore``                          :func:`interval_score`
``DistributionNLL``                        :func:`distribution_nll`
``QuantileCalibrationError``               :func:`quantile_calibration_error`
=========================================  ====================================================

``DistributionNLL`` is TU's: the joint negative log-density of each sample (``Independent(., 1)``:
summed over D), NaN values skipped (``nansum``), divided by the number of target *elements* N * D.
``QuantileCalibrationError`` counts, for 15 levels ``torch.linspace(0.05, 0.95, 15)``, the targets inside
``[icdf((1 - l) / 2), icdf((1 + l) / 2)]`` (every element), then averages ``|coverage - l|``; it is NaN for
the families without an icdf (Gamma, NIG), as in TU. For a mixture, whose icdf has no closed form, a
target is inside the central interval iff its mixture cdf lies in ``[(1 - l) / 2, (1 + l) / 2]``.

Deviation: TU's ``SILog`` and ``ThresholdAccuracy`` divide by ``target.size(0)``; here by the number of
elements (the same for TU's 1-D use, pixels flattened).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq import distributions as D
from jaxuq.metrics.calibration import torch_linspace

__all__ = [
    "QCELevels", "distribution_nll", "interval_coverage", "interval_score", "inverse_absolute_error",
    "inverse_squared_error", "log10_error", "mean_absolute_error", "mean_interval_width",
    "mean_squared_error", "mean_squared_log_error", "nll_per_sample", "qce_counts", "qce_from_counts",
    "qce_levels",
    "predictive", "quantile_calibration_error", "relative_absolute_error", "relative_squared_error", "silog",
    "threshold_accuracy",
]
MEMBERS = ("mixture", "average")
ESTIMATES = ("mean", "mode")

F32 = jnp.float32
_NORMS = ("l1", "l2", "max")
_UNITS = {"km": 1e-3, "m": 1.0, "mm": 1e3}


def _pair(preds, targets, name: str = "preds"):
    p, t = jnp.asarray(preds, F32), jnp.asarray(targets, F32)
    if p.shape != t.shape:
        raise ValueError(f"`{name}` {p.shape} and `targets` {t.shape} must have the same shape")
    return p, t


# ----------------------------------------------------------------------------- point metrics
def mean_absolute_error(preds, targets):
    """torchmetrics ``MeanAbsoluteError``: ``sum |p - y| / numel``."""
    p, t = _pair(preds, targets)
    return jnp.sum(jnp.abs(p - t)) / t.size


def mean_squared_error(preds, targets, squared: bool = True):
    """torchmetrics ``MeanSquaredError(squared)``: ``sum (p - y)^2 / numel`` (RMSE: its square root)."""
    p, t = _pair(preds, targets)
    mse = jnp.sum((p - t) * (p - t)) / t.size
    return mse if squared else jnp.sqrt(mse)


def mean_squared_log_error(preds, targets, squared: bool = True):
    """TU ``MeanSquaredLogError``: the MSE of ``log p`` and ``log y``."""
    p, t = _pair(preds, targets)
    return mean_squared_error(jnp.log(p), jnp.log(t), squared)


def log10_error(preds, targets):
    """TU ``Log10``: the MAE of ``log10 p`` and ``log10 y``."""
    p, t = _pair(preds, targets)
    return mean_absolute_error(jnp.log10(p), jnp.log10(t))


def silog(preds, targets, sqrt: bool = False, lmbda: float = 1.0):
    """TU ``SILog``: ``mean(d^2) - lmbda mean(d)^2`` with ``d = log p - log y`` (``sqrt``: its root)."""
    p, t = _pair(preds, targets)
    d = jnp.log(p) - jnp.log(t)
    n = t.size
    out = jnp.sum(d**2) / n - lmbda * jnp.sum(d) ** 2 / (n * n)
    return jnp.sqrt(out) if sqrt else out


def threshold_accuracy(preds, targets, power: int, lmbda: float = 1.25):
    """TU ``ThresholdAccuracy`` (delta_k): fraction with ``max(p / y, y / p) < lmbda ** power``."""
    if power < 0:
        raise ValueError(f"Power must be greater than or equal to 0. Got {power}.")
    if lmbda < 1:
        raise ValueError(f"Lambda must be greater than or equal to 1. Got {lmbda}.")
    p, t = _pair(preds, targets)
    return jnp.mean((jnp.maximum(p / t, t / p) < np.float32(lmbda**power)).astype(F32))


def relative_absolute_error(preds, targets):
    """TU ``MeanGTRelativeAbsoluteError``: the MAE of ``p / y`` and 1."""
    p, t = _pair(preds, targets)
    return mean_absolute_error(p / t, jnp.ones_like(t))


def relative_squared_error(preds, targets):
    """TU ``MeanGTRelativeSquaredError``: the MSE of ``p / sqrt(y)`` and ``sqrt(y)``."""
    p, t = _pair(preds, targets)
    return mean_squared_error(p / jnp.sqrt(t), jnp.sqrt(t))


def _unit(unit: str) -> float:
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of 'mm', 'm', 'km'. Got {unit}.")
    return _UNITS[unit]


def inverse_absolute_error(preds, targets, unit: str = "km"):
    """TU ``MeanAbsoluteErrorInverse``: the MAE of ``1 / (p f)`` and ``1 / (y f)`` (``f`` from ``unit``)."""
    f = _unit(unit)
    p, t = _pair(preds, targets)
    return mean_absolute_error(1 / (p * f), 1 / (t * f))


def inverse_squared_error(preds, targets, unit: str = "km", squared: bool = True):
    """TU ``MeanSquaredErrorInverse``: the MSE of ``1 / (p f)`` and ``1 / (y f)``."""
    f = _unit(unit)
    p, t = _pair(preds, targets)
    return mean_squared_error(1 / (p * f), 1 / (t * f), squared)


# ----------------------------------------------------------------------------- intervals
def _intervals(lower, upper, targets=None):
    """TU's ``check_interval_shapes``: same shapes and (when concrete) ``lower <= upper``."""
    lo, hi = jnp.asarray(lower, F32), jnp.asarray(upper, F32)
    if lo.shape != hi.shape:
        raise ValueError(f"Expected `lower` and `upper` to have the same shape, got {lo.shape} and "
                         f"{hi.shape}.")
    t = None if targets is None else jnp.asarray(targets, F32)
    if t is not None and t.shape != lo.shape:
        raise ValueError(f"Expected `target` to have the same shape as the interval bounds, got {t.shape} "
                         f"and {lo.shape}.")
    if not isinstance(lo, jax.core.Tracer) and not isinstance(hi, jax.core.Tracer) and bool(jnp.any(lo > hi)):
        raise ValueError("Expected `lower` to be less than or equal to `upper` elementwise.")
    return lo, hi, t


def interval_coverage(lower, upper, targets):
    """TU ``IntervalCoverage`` (PICP): fraction of targets in ``[lower, upper]``."""
    lo, hi, t = _intervals(lower, upper, targets)
    return jnp.sum((t >= lo) & (t <= hi)).astype(F32) / t.size


def mean_interval_width(lower, upper):
    """TU ``MeanIntervalWidth`` (MPIW): ``mean(upper - lower)``."""
    lo, hi, _ = _intervals(lower, upper)
    return jnp.sum(hi - lo) / lo.size


def interval_score(lower, upper, targets, coverage: float):
    """TU ``IntervalScore(coverage)`` (Winkler): width + ``2 / alpha`` x the miss,
    ``alpha = 1 - coverage``."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in the open interval (0, 1), got {coverage}.")
    lo, hi, t = _intervals(lower, upper, targets)
    alpha = 1.0 - coverage
    score = (hi - lo) + (2.0 / alpha) * (jnp.maximum(lo - t, 0.0) + jnp.maximum(t - hi, 0.0))
    return jnp.sum(score) / t.size


# ----------------------------------------------------------------------------- distributions
def nll_per_sample(family: str, params: dict, targets, mixture: bool = False):
    """``[N]``: ``-log p(y_n)`` of the ``Independent`` distribution (or the members' uniform mixture)."""
    if mixture:
        return -D.mixture_log_prob(family, params, targets)
    return -jnp.sum(D.log_prob(family, params, targets), axis=-1)


def distribution_nll(family: str, params: dict, targets, mixture: bool = False):
    """TU ``DistributionNLL(reduction="mean")``: ``nansum_n NLL_n / numel(targets)``."""
    y = jnp.asarray(targets, F32)
    return jnp.nansum(nll_per_sample(family, params, y, mixture)) / y.size


class QCELevels(NamedTuple):
    """The confidence levels and their central-interval probabilities, torch's float32 values."""

    levels: np.ndarray  # [K] torch.linspace(0.05, 0.95, K)
    lower: np.ndarray  # [K] (1 - l) / 2
    upper: np.ndarray  # [K] (1 + l) / 2


@functools.cache
def qce_levels(num_bins: int = 15) -> QCELevels:
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"Expected `num_bins` to be at least 1, but got {num_bins}.")
    lv = torch_linspace(num_bins, 0.05, 0.95)
    one = np.float32(1)
    return QCELevels(lv, (one - lv) / np.float32(2), (one + lv) / np.float32(2))


def qce_counts(family: str, params: dict, targets, num_bins: int = 15, mixture: bool = False, mask=None):
    """``(covered [K] int32, total int32)``: per level, the target elements inside the central interval
    (``mask [N]``: the rows that count). Families without an icdf give zeros (QCE NaN)."""
    y = jnp.asarray(targets, F32)
    valid = jnp.ones(y.shape, bool) if mask is None else jnp.broadcast_to(
        jnp.reshape(mask, mask.shape + (1,) * (y.ndim - 1)), y.shape)
    if not D.has_icdf(family):
        return jnp.zeros((num_bins,), jnp.int32), jnp.zeros((), jnp.int32)
    lv = qce_levels(num_bins)
    if mixture:
        u = D.mixture_cdf(family, params, y)[None]
        lead = (-1,) + (1,) * y.ndim
        inside = (u >= lv.lower.reshape(lead)) & (u <= lv.upper.reshape(lead))
    else:
        bounds = [(D.icdf(family, params, lo), D.icdf(family, params, hi))
                  for lo, hi in zip(lv.lower, lv.upper, strict=True)]
        inside = jnp.stack([(y >= lo) & (y <= hi) for lo, hi in bounds])
    covered = jnp.sum((inside & valid[None]).reshape(num_bins, -1), axis=1).astype(jnp.int32)
    return covered, jnp.sum(valid).astype(jnp.int32)


def qce_from_counts(family: str, covered, total, num_bins: int = 15, norm: str = "l1"):
    """TU ``QuantileCalibrationError.compute`` from the counts (NaN without an icdf or any target)."""
    if norm not in _NORMS:
        raise ValueError(f"Expected `norm` to be one of ('l1', 'l2', 'max'), but got {norm}.")
    if not D.has_icdf(family):
        return jnp.float32(jnp.nan)
    gap = jnp.abs(covered.astype(F32) / total.astype(F32) - jnp.asarray(qce_levels(num_bins).levels))
    value = {"l1": lambda: jnp.mean(gap), "l2": lambda: jnp.sqrt(jnp.mean(gap**2)),
             "max": lambda: jnp.max(gap)}
    return jnp.where(total > 0, value[norm](), jnp.nan)


def quantile_calibration_error(family: str, params: dict, targets, num_bins: int = 15, norm: str = "l1",
                               mixture: bool = False):
    """TU ``QuantileCalibrationError(num_bins, norm)`` of ``(family, params)`` on ``targets`` (the shape of
    the parameters; a mixture: ``[N, D]`` with ``[M, N, D]`` parameters)."""
    covered, total = qce_counts(family, params, targets, num_bins, mixture)
    return qce_from_counts(family, covered, total, num_bins, norm)


def predictive(outputs, family: str | None = None, estimate: str = "mean", members: str = "mixture",
               stacked: bool = False):
    """What TU's ``RegressionRoutine.evaluation_forward`` makes of a model's outputs: ``(point [N, D],
    params, mixture)``.

    ``outputs``: predictions ``[N, D]`` (``family`` None) or a head's dict; ``stacked``: leaves ``[M, N, D]``
    (a deep ensemble, a members-in-batch model or a sampler). Point predictions are averaged over members.
    A distribution's point estimate is its ``estimate`` ("mean" or "mode"); members are combined as their
    uniform ``"mixture"`` (the ensemble's predictive distribution; point estimate: the members' mean; no
    closed-form mode) or as TU 0.13.0 does, ``"average"``: one distribution with the members' averaged
    parameters. ``params`` is None for point regression; ``mixture`` tells whether it keeps the member axis.
    """
    if estimate not in ESTIMATES or members not in MEMBERS:
        raise ValueError(f"`estimate` must be one of {ESTIMATES} and `members` one of {MEMBERS}, got "
                         f"{estimate!r}, {members!r}")
    if family is None:
        return (jnp.mean(outputs, axis=0) if stacked else outputs), None, False
    p = outputs
    if stacked and (members == "average" or jax.tree.leaves(p)[0].shape[0] == 1):
        p, stacked = jax.tree.map(lambda a: jnp.mean(a, axis=0), p), False
    if not stacked:
        return (D.mean if estimate == "mean" else D.mode)(family, p), p, False
    if estimate == "mode":
        raise ValueError("a mixture has no closed-form mode: use estimate='mean', or members='average' (TU's "
                         "averaged parameters)")
    return jnp.mean(D.mean(family, p), axis=0), p, True
