"""Temperature, vector and matrix scaling with torch-uncertainty 0.13.0's semantics.

Each scaler is a pair of pure functions::

    params = temperature_fit(logits, labels)          # logits [N, C], labels [N] int
    scaled = temperature_apply(params, logits)        # [..., C] -> [..., C]

``method="tu"`` (default) reproduces TU: one ``torch.optim.LBFGS(lr=0.1, max_iter)`` step
without line search on the mean cross-entropy, started from ``inv_T = 1/init_temperature``
(vector: ``inv_T = 1/init`` per class; matrix: ``W = I/init``, ``b = 0``). It does not
converge fully (TU's doc: T = 5.7311 where the CE optimum is 5.7421 on a 2000-sample test).
``method="exact"`` minimises the same loss to convergence with optax's L-BFGS and a zoom
(strong-Wolfe) line search: use it when you want the maximum-likelihood temperature rather
than TU's number.

Temperatures stay positive: when TU's fit ends at ``1/T <= 0`` (logits worse than chance, where a
negative T would reverse every prediction) the fit is redone on ``log(1/T)`` with a ``RuntimeWarning``
(a deviation from TU, which returns the negative T). Labels are checked before any cast (float labels,
int64 beyond int32 are refused); the apply functions refuse NaN logits and a different class count.

Binary inputs (logits ``[N]`` or ``[N, 1]``) become the 2-class logits
``log[1 - sigmoid(z), sigmoid(z)]`` with the probability clamped to ``[eps, 1 - eps]``, as in TU.
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import optax

from jaxuq._validate import check_int, check_labels, check_real, finite_logits
from jaxuq.calibration.lbfgs import lbfgs_torch
from jaxuq.losses import cross_entropy

__all__ = [
    "cross_entropy",
    "prepare_logits",
    "temperature_fit",
    "temperature_apply",
    "vector_fit",
    "vector_apply",
    "matrix_fit",
    "matrix_apply",
    "minimize_exact",
]


def prepare_logits(logits, labels, eps: float = 1e-8) -> tuple[jax.Array, jax.Array]:
    """Validate and convert inputs like TU's ``Scaler._extract_data``.

    Returns float32 logits [N, C] (binary -> 2-class log-probabilities) and int32 labels [N].
    Labels must be integers in ``[0, C)`` (checked before any cast: float labels and int64 values
    beyond int32 are refused, never truncated or wrapped; :func:`jaxuq._validate.check_labels`).
    """
    logits = jnp.asarray(logits, jnp.float32)
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.ndim == 1:
        p = jnp.clip(jax.nn.sigmoid(logits), eps, 1 - eps)
        logits = jnp.log(jnp.stack([1 - p, p], axis=-1))
    logits = finite_logits(logits, "logits")
    return logits, check_labels(labels, logits.shape[0], logits.shape[1])


def minimize_exact(fun, x0, *, max_steps: int = 500, tol: float = 1e-6) -> jax.Array:
    """Minimise ``fun(x)`` to convergence with optax L-BFGS + zoom line search (float32)."""
    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(fun)

    def step(carry):
        x, state, _ = carry
        value, grad = vg(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        x = optax.apply_updates(x, updates)
        return x, state, optax.tree.norm(grad)

    def cond(carry):
        _, state, gnorm = carry
        count = optax.tree.get(state, "count")
        return (count == 0) | ((count < max_steps) & (gnorm >= tol))

    x0 = jnp.asarray(x0, jnp.float32)
    x, _, _ = jax.lax.while_loop(cond, step, (x0, opt.init(x0), jnp.float32(jnp.inf)))
    return x


def _minimize(loss_of_flat, x0, method: str, lr: float, max_iter: int):
    if method == "tu":
        return lbfgs_torch(loss_of_flat, x0, lr=lr, max_iter=max_iter).x
    if method == "exact":
        return minimize_exact(loss_of_flat, x0)
    raise ValueError(f"method must be 'tu' (torch LBFGS, TU parity) or 'exact'; got {method!r}")


@partial(jax.jit, static_argnames=("scale", "method", "lr", "max_iter", "penalty"))
def _fit_flat(scale, logits, labels, x0, method, lr, max_iter, penalty=None):
    """Minimise ``cross_entropy(scale(x, logits), labels)`` over the flat parameters ``x`` [P];
    ``penalty`` (a hashable callable, static) maps ``(ce, x)`` to the regularised loss."""

    def loss(x):
        ce = cross_entropy(scale(x, logits), labels)
        return ce if penalty is None else penalty(ce, x)

    return _minimize(loss, x0, method, lr, max_iter)


def _fit(scale, init_of, logits, labels, *, init: float, lr: float, max_iter: int, method: str, eps: float,
         positive: bool = False, penalty=None):
    """The fit shared by the three scalers: validate, convert, start from ``init_of(C)`` [P], minimise.

    ``positive``: the parameters are inverse temperatures and must stay > 0; a TU-exact fit that ends
    at <= 0 (worse-than-chance logits) is redone on ``log`` of them, with a ``RuntimeWarning``.

    Returns the fitted flat parameters [P] and the number of classes C.
    """
    for value, name in ((init, "init_temperature"), (lr, "lr"), (eps, "eps")):
        check_real(value, name)  # TypeError / NaN / inf first; TU's range messages below
    check_int(max_iter, "max_iter")
    if not init > 0:
        raise ValueError(f"Initial temperature value must be positive. Got {init}.")
    if lr <= 0:
        raise ValueError(f"Learning rate must be strictly positive. Got {lr}.")
    if max_iter <= 0:
        raise ValueError(f"Max iterations must be strictly positive. Got {max_iter}.")
    check_real(eps, "eps", low=0.0, low_open=True, high=0.5)
    z, y = prepare_logits(logits, labels, eps)
    x0 = init_of(z.shape[1])
    x = _fit_flat(scale, z, y, x0, method, float(lr), int(max_iter), penalty)
    if positive and not bool(jnp.all(x > 0)):
        warnings.warn(
            f"the {method!r} fit gave inverse temperature(s) <= 0 (min {float(x.min()):.4g}): the logits are "
            "worse than chance and a negative temperature would reverse every prediction. Refitting "
            "1/T = exp(s) so that T > 0 (jaxuq deviation from torch-uncertainty, which keeps T < 0).",
            RuntimeWarning, stacklevel=3,
        )
        x = jnp.exp(_fit_flat(_scale_log, z, y, jnp.log(x0), method, float(lr), int(max_iter)))
    return x, z.shape[1]


# ----------------------------------------------------------------------------- temperature / vector
def _scale_flat(x, z):  # temperature: x [1]; vector: x [C]; broadcasts over z [N, C]
    return z * x


def _scale_log(s, z):  # the same with inv_T = exp(s) > 0
    return z * jnp.exp(s)


def temperature_fit(
    logits,
    labels,
    *,
    init_temperature: float = 1.0,
    lr: float = 0.1,
    max_iter: int = 100,
    method: str = "tu",
    eps: float = 1e-8,
) -> dict:
    """Fit TU's ``TemperatureScaler``: ``{"inv_temperature": [1], "temperature": [1]}``.

    Args:
      logits: [N, C] float (or [N] / [N, 1] binary logits).
      labels: [N] int class indices.
      init_temperature, lr, max_iter: TU's defaults (1, 0.1, 100).
      method: "tu" (torch-LBFGS port, parity with TU) or "exact" (converged optimum).
    """
    inv, _ = _fit(_scale_flat, lambda c: jnp.full((1,), 1.0 / init_temperature, jnp.float32), logits, labels,
               init=init_temperature, lr=lr, max_iter=max_iter, method=method, eps=eps, positive=True)
    return {"inv_temperature": inv, "temperature": 1.0 / inv}


def temperature_apply(params: dict, logits: jax.Array) -> jax.Array:
    """Scaled logits ``inv_T * z``: [..., C] -> [..., C] (``inv_T`` [1], or [C] for vector scaling).

    Raises ``ValueError`` for NaN/inf logits (when not traced) or a class count other than ``inv_T``'s.
    """
    inv = jnp.asarray(params["inv_temperature"], jnp.float32)
    c = None if inv.size == 1 else inv.shape[-1]
    return inv * finite_logits(logits, num_classes=c, ndims=None)


def vector_fit(
    logits,
    labels,
    *,
    init_temperature: float = 1.0,
    lr: float = 0.1,
    max_iter: int = 200,
    method: str = "tu",
    eps: float = 1e-8,
) -> dict:
    """Fit TU's ``VectorScaler``: per-class ``inv_temperature`` [C] (output ``inv_T * z``).

    Same arguments as :func:`temperature_fit`; TU's default ``max_iter`` is 200 here.
    """
    inv, _ = _fit(_scale_flat, lambda c: jnp.full((c,), 1.0 / init_temperature, jnp.float32), logits, labels,
               init=init_temperature, lr=lr, max_iter=max_iter, method=method, eps=eps, positive=True)
    return {"inv_temperature": inv, "temperature": 1.0 / inv}


vector_apply = temperature_apply  # the same ``inv_T * z``, with ``inv_T`` [C]


# ----------------------------------------------------------------------------- matrix
def _matrix_out(w, b, z):
    return z @ w.T + b  # torch.nn.functional.linear


def _matrix_flat(x, z):  # torch flattens the parameters in order: weight (row-major) [C*C], bias [C]
    c = z.shape[-1]
    return _matrix_out(x[: c * c].reshape(c, c), x[c * c :], z)


def matrix_fit(
    logits,
    labels,
    *,
    init_weight_temperature: float = 1.0,
    init_bias_temperature: float | None = None,
    lr: float = 0.1,
    max_iter: int = 200,
    method: str = "tu",
    eps: float = 1e-8,
) -> dict:
    """Fit TU's ``MatrixScaler``: ``{"weight": [C, C], "bias": [C]}``, output ``z @ W.T + b``.

    Init: ``W = I / init_weight_temperature``; ``b = 0`` (or ``1 / init_bias_temperature``).
    """

    def init_of(c):
        w0 = jnp.eye(c, dtype=jnp.float32) / init_weight_temperature
        b0 = (jnp.zeros((c,), jnp.float32) if init_bias_temperature is None
              else jnp.ones((c,), jnp.float32) / init_bias_temperature)
        return jnp.concatenate([w0.ravel(), b0])

    x, c = _fit(_matrix_flat, init_of, logits, labels, init=init_weight_temperature, lr=lr,
                max_iter=max_iter, method=method, eps=eps)
    return {"weight": x[: c * c].reshape(c, c), "bias": x[c * c :]}


def matrix_apply(params: dict, logits: jax.Array) -> jax.Array:
    """Affine logits ``z @ W.T + b``: [..., C] -> [..., C] (validated like :func:`temperature_apply`)."""
    w = params["weight"]
    return _matrix_out(w, params["bias"], finite_logits(logits, num_classes=w.shape[-1], ndims=None))
