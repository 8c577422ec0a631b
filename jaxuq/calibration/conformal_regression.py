"""Conformal regression intervals: TU 0.13.0's CQR (``ConformalRegCQR``) and split conformal on absolute
residuals, as pure functions on predictions (host-side calibration, jittable intervals).

CQR (Romano et al., 2019) on a quantile model's ``[N, 2]`` outputs (lower, upper quantiles)::

    q_hat = cqr_quantile(cal_quantiles, cal_targets, alpha)   # TU's q_hat, bit for bit
    intervals = cqr_intervals(test_quantiles, q_hat)          # [N, 2]: [lower - q_hat, upper + q_hat]
    jaxuq.metrics.interval_coverage(intervals[:, 0], intervals[:, 1], test_targets)

Split conformal on point predictions ``[N]``::

    q_hat = split_conformal_quantile(cal_preds, cal_targets, alpha)   # scores |y - f(x)|
    intervals = split_conformal_intervals(test_preds, q_hat)          # [f(x) - q_hat, f(x) + q_hat]

Both quantiles are TU's CQR rule: ``torch.quantile(scores, min(ceil((n + 1)(1 - alpha)) / n, 1),
interpolation="higher")`` (:func:`jaxuq.calibration.conformal.conformal_quantile` with
``correction="cqr"``), which covers ``>= 1 - alpha`` for exchangeable data except when
``(n + 1)(1 - alpha) > n`` (then the largest score, not ``+inf``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq import _validate
from jaxuq.calibration.conformal import conformal_quantile
from jaxuq.metrics.regression import _intervals

__all__ = ["cqr_intervals", "cqr_quantile", "cqr_scores", "split_conformal_intervals",
           "split_conformal_quantile"]


def _quantile_outputs(quantiles, name: str) -> np.ndarray:
    q = _validate.as_array(quantiles, name, (2,))
    if q.shape[1] != 2:
        raise ValueError(f"`{name}` must be [N, 2] (lower, upper quantiles), got {q.shape}")
    _validate.check_finite(q, f"`{name}`")
    return np.asarray(q, np.float32)


def _targets(targets, n: int) -> np.ndarray:
    y = np.asarray(targets, np.float32).reshape(-1)  # TU: target.reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"`targets` must hold {n} values (one per prediction), got {np.shape(targets)}")
    _validate.check_finite(y, "`targets`")
    return y


def cqr_scores(quantiles, targets) -> jax.Array:
    """CQR's conformity scores ``[N]``: ``max(lower - y, y - upper)`` of ``quantiles [N, 2]``."""
    q = _quantile_outputs(quantiles, "quantiles")
    lo, hi, y = _intervals(q[:, 0], q[:, 1], _targets(targets, q.shape[0]))
    return jnp.maximum(lo - y, y - hi)


def cqr_quantile(quantiles, targets, alpha: float) -> jax.Array:
    """TU ``ConformalRegCQR.fit``'s ``q_hat`` from calibration ``quantiles [N, 2]`` and ``targets [N]``."""
    return conformal_quantile(cqr_scores(quantiles, targets), alpha, "cqr")


def cqr_intervals(quantiles, q_hat) -> jax.Array:
    """TU ``ConformalRegCQR.forward``: ``[N, 2]`` = ``[lower - q_hat, upper + q_hat]``."""
    q = jnp.asarray(quantiles, jnp.float32)
    if q.ndim != 2 or q.shape[1] != 2:
        raise ValueError(f"`quantiles` must be [N, 2] (lower, upper quantiles), got {q.shape}")
    return jnp.stack((q[:, 0] - q_hat, q[:, 1] + q_hat), axis=-1)


def split_conformal_quantile(preds, targets, alpha: float) -> jax.Array:
    """Split conformal's ``q_hat``: the quantile (TU's CQR rule) of ``|y - preds|`` on a calibration set
    (``preds [N]`` or ``[N, 1]``)."""
    p = _validate.as_array(preds, "preds", (1, 2)).reshape(-1)
    _validate.check_finite(p, "`preds`")
    y = _targets(targets, p.shape[0])
    return conformal_quantile(jnp.abs(jnp.asarray(y) - jnp.asarray(p, jnp.float32)), alpha, "cqr")


def split_conformal_intervals(preds, q_hat) -> jax.Array:
    """``[N, 2]`` = ``[preds - q_hat, preds + q_hat]`` for point predictions ``preds [N]`` (or ``[N, 1]``)."""
    p = jnp.asarray(preds, jnp.float32).reshape(-1)
    return jnp.stack((p - q_hat, p + q_hat), axis=-1)
