"""Dirichlet calibration (Kull et al. 2019) with torch-uncertainty 0.13.0's semantics (``DirichletScaler``).

Matrix scaling of the log-probabilities: ``out = log_softmax(z) @ W.T + b``, fitted like TU's other
scalers (one ``torch.optim.LBFGS(lr, max_iter)`` step without line search, ported in
:func:`jaxuq.calibration.lbfgs_torch`) on the mean cross-entropy plus TU's two optional penalties::

    loss = CE + lambda_reg * sum_{i != j} W_ij^2 / (C (C - 1)) + mu_reg * mean_i b_i^2

(added in that order, in float32). Init as ``MatrixScaler``: ``W = I / init_weight_temperature``,
``b = 0`` (or ``1 / init_bias_temperature``). Binary logits ``[N]``/``[N, 1]`` become 2-class
log-probabilities first (:func:`jaxuq.calibration.scaling.prepare_logits`), as in TU.
``method="exact"`` minimises the same regularised loss to convergence instead.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxuq._validate import check_real, finite_logits
from jaxuq.calibration.scaling import _fit, _matrix_flat, _matrix_out

__all__ = ["dirichlet_fit", "dirichlet_apply"]


@dataclasses.dataclass(frozen=True)
class _DirichletPenalty:
    """TU's closure: ``loss += lambda * off_diag_sq / (C (C - 1))``, then ``loss += mu * mean(b^2)``."""

    lambda_reg: float | None
    mu_reg: float | None
    num_classes: int

    def __call__(self, loss, x):
        c = self.num_classes
        w, b = x[: c * c].reshape(c, c), x[c * c :]
        if self.lambda_reg is not None:
            off_diag_sq = jnp.sum(w**2) - jnp.sum(jnp.diagonal(w) ** 2)
            loss = loss + self.lambda_reg * off_diag_sq / (c * (c - 1))
        if self.mu_reg is not None:
            loss = loss + self.mu_reg * jnp.mean(b**2)
        return loss


def _dirichlet_flat(x, z):
    return _matrix_flat(x, jax.nn.log_softmax(z, axis=-1))


def dirichlet_fit(
    logits,
    labels,
    *,
    init_weight_temperature: float = 1.0,
    init_bias_temperature: float | None = None,
    lr: float = 0.1,
    max_iter: int = 200,
    lambda_reg: float | None = None,
    mu_reg: float | None = None,
    method: str = "tu",
    eps: float = 1e-8,
) -> dict:
    """Fit TU's ``DirichletScaler``: ``{"weight": [C, C], "bias": [C]}``.

    Args:
      logits: [N, C] float (or [N] / [N, 1] binary logits).
      labels: [N] int class indices.
      init_weight_temperature, init_bias_temperature, lr, max_iter, eps: TU's defaults (1, None, 0.1,
        200, 1e-8).
      lambda_reg, mu_reg: the off-diagonal weight and bias penalties (``None``: off; else >= 0).
      method: "tu" (torch-LBFGS port, parity with TU) or "exact" (converged optimum).
    """
    for value, name in ((lambda_reg, "lambda_reg"), (mu_reg, "mu_reg")):
        if value is not None:
            check_real(value, name, low=0.0)
    if init_bias_temperature is not None:
        check_real(init_bias_temperature, "init_bias_temperature")
        if init_bias_temperature == 0:
            raise ValueError("`init_bias_temperature` must be non-zero (the bias starts at 1 / it)")
    c = 2 if jnp.ndim(logits) == 1 or jnp.shape(logits)[-1] == 1 else int(jnp.shape(logits)[-1])

    def init_of(c):
        w0 = jnp.eye(c, dtype=jnp.float32) / init_weight_temperature
        b0 = (jnp.zeros((c,), jnp.float32) if init_bias_temperature is None
              else jnp.ones((c,), jnp.float32) / init_bias_temperature)
        return jnp.concatenate([w0.ravel(), b0])

    penalty = None
    if lambda_reg is not None or mu_reg is not None:
        penalty = _DirichletPenalty(
            None if lambda_reg is None else float(lambda_reg), None if mu_reg is None else float(mu_reg), c)
    x, c = _fit(_dirichlet_flat, init_of, logits, labels, init=init_weight_temperature, lr=lr,
                max_iter=max_iter, method=method, eps=eps, penalty=penalty)
    return {"weight": x[: c * c].reshape(c, c), "bias": x[c * c :]}


def dirichlet_apply(params: dict, logits) -> jax.Array:
    """Calibrated logits ``log_softmax(z) @ W.T + b``: [..., C] -> [..., C] (TU's ``_scale``). Refuses NaN/inf
    logits (when not traced) and a class count other than the fitted one. Jittable."""
    w = params["weight"]
    z = finite_logits(logits, num_classes=w.shape[-1], ndims=None)
    return _matrix_out(w, params["bias"], jax.nn.log_softmax(z, axis=-1))
