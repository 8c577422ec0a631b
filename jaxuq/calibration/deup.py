"""DEUP (Direct Epistemic Uncertainty Prediction, Lahlou et al. 2023) as TU 0.13.0 implements it.

On calibration logits ``[N, C]`` and labels ``[N]``:

1. features ``[logits, max p, entropy]`` (``C + 2`` dims; entropy ``-sum p log clamp(p, 1e-8)``);
   targets: per-sample cross-entropy;
2. ``num_folds`` (5) *contiguous* folds (the first ``N mod K`` folds get one extra sample): for
   each fold a fresh MLP ``Linear(C+2, H) - ReLU - Linear(H, 1) - Softplus`` is trained with
   Adam (lr 1e-3) for ``max_epochs`` (40) full-batch MSE steps on the other folds, and predicts
   the held-out fold (out-of-fold, OOF, predictions);
3. a final predictor is trained the same way on all features with the OOF predictions as
   targets. Its output ``g(x) >= 0`` is the ``deup`` OOD score (higher = more likely wrong/OOD).

Initial weights follow torch's ``nn.Linear`` default, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for
weights and biases, drawn from a ``jax.random`` key; ``init_params`` (a list of ``num_folds + 1``
parameter dicts) overrides them, e.g. with weights copied from torch for a parity test.
Regression (``task="regression"``: features = the prediction, squared-error targets) is
supported for outputs ``[N]`` / ``[N, 1]``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxuq._validate import check_labels

__all__ = ["deup_features", "deup_errors", "init_mlp", "mlp_apply", "deup_fit", "deup_score"]


def deup_features(outputs) -> jax.Array:
    """TU ``_outputs_to_features``: [N, C] logits -> [N, C + 2]; regression [N] -> [N, 1]."""
    out = jnp.asarray(outputs, jnp.float32)
    if out.ndim == 1:
        return out[:, None]
    if out.ndim == 2 and out.shape[1] == 1:
        return out
    p = jax.nn.softmax(out, -1)
    ent = -(p * jnp.log(jnp.maximum(p, 1e-8))).sum(-1, keepdims=True)
    return jnp.concatenate([out, p.max(-1, keepdims=True), ent], -1)


def deup_errors(outputs, labels, task: str = "classification") -> jax.Array:
    """Per-sample errors: cross-entropy (classification; integer labels in [0, C), checked) or
    squared error (regression)."""
    out = jnp.asarray(outputs, jnp.float32)
    if task == "regression":
        pred = out.reshape(out.shape[0])
        return (pred - jnp.asarray(labels, jnp.float32).reshape(-1)) ** 2
    if out.ndim == 1 or out.shape[1] == 1:
        s = jax.nn.sigmoid(out.reshape(-1))
        out = jnp.stack([1 - s, s], -1)  # TU feeds these probabilities to cross_entropy as logits
    logp = jax.nn.log_softmax(out, -1)
    y = check_labels(labels, logp.shape[0], logp.shape[1])  # no silent wrap / truncation
    return -jnp.take_along_axis(logp, y[:, None], -1)[:, 0]


def init_mlp(key, in_features: int, hidden_dim: int) -> dict:
    """torch ``nn.Linear`` default init; weights stored torch-style ``(out, in)``."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    b1 = 1.0 / np.sqrt(in_features)
    b2 = 1.0 / np.sqrt(hidden_dim)
    u = partial(jax.random.uniform, dtype=jnp.float32)
    return {
        "w1": u(k1, (hidden_dim, in_features), minval=-b1, maxval=b1),
        "b1": u(k2, (hidden_dim,), minval=-b1, maxval=b1),
        "w2": u(k3, (1, hidden_dim), minval=-b2, maxval=b2),
        "b2": u(k4, (1,), minval=-b2, maxval=b2),
    }


def mlp_apply(params: dict, x: jax.Array) -> jax.Array:
    """``Softplus(Linear(ReLU(Linear(x))))`` squeezed: [N, F] -> [N]."""
    h = jax.nn.relu(x @ params["w1"].T + params["b1"])
    return jax.nn.softplus(h @ params["w2"].T + params["b2"])[:, 0]


@partial(jax.jit, static_argnames=("steps", "lr"))
def _train(params, x, y, mask, steps: int, lr: float):
    """``steps`` full-batch Adam steps of MSE over rows where ``mask`` (fixed shapes, jit once)."""
    opt = optax.adam(lr)  # torch Adam defaults: betas (0.9, 0.999), eps 1e-8

    def loss(p):
        r = (mlp_apply(p, x) - y) ** 2
        return jnp.sum(jnp.where(mask, r, 0.0)) / jnp.sum(mask)

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


def _fold_sizes(n: int, k: int) -> list[int]:
    sizes = [n // k] * k
    for i in range(n % k):
        sizes[i] += 1
    return sizes


def deup_fit(
    outputs,
    labels,
    *,
    task: str = "classification",
    num_folds: int = 5,
    hidden_dim: int = 64,
    max_epochs: int = 40,
    lr: float = 1e-3,
    key=None,
    init_params: list[dict] | None = None,
) -> dict:
    """Fit DEUP on calibration outputs ``[N, C]`` (or ``[N]`` regression) and labels ``[N]``.

    Returns ``{"predictor": params, "oof": [N] OOF targets, "errors": [N], "task": task}``.
    """
    if task not in {"classification", "regression"}:
        raise ValueError(f"task must be 'classification' or 'regression'. Got {task}.")
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2. Got {num_folds}.")
    if hidden_dim < 1:
        raise ValueError(f"hidden_dim must be >= 1. Got {hidden_dim}.")
    feats = deup_features(outputs)
    n = feats.shape[0]
    if n < num_folds:
        raise ValueError(f"DEUP needs at least num_folds={num_folds} calibration samples; got {n}")
    if not bool(jnp.all(jnp.isfinite(feats))):
        raise ValueError("DEUP: outputs contain NaN or inf")
    errors = deup_errors(outputs, labels, task)
    if init_params is None:
        if key is None:
            key = jax.random.key(0)
        keys = jax.random.split(key, num_folds + 1)
        init_params = [init_mlp(k, feats.shape[1], hidden_dim) for k in keys]
    if len(init_params) != num_folds + 1:
        raise ValueError(
            f"init_params must hold num_folds + 1 = {num_folds + 1} MLPs; got {len(init_params)}"
        )
    init_params = [{k: jnp.asarray(v, jnp.float32) for k, v in p.items()} for p in init_params]

    oof = jnp.zeros((n,), jnp.float32)
    start = 0
    for fold, size in enumerate(_fold_sizes(n, num_folds)):
        val = (jnp.arange(n) >= start) & (jnp.arange(n) < start + size)
        p = _train(init_params[fold], feats, errors, ~val, max_epochs, lr)
        oof = jnp.where(val, mlp_apply(p, feats), oof)
        start += size
    final = _train(init_params[-1], feats, oof, jnp.ones((n,), bool), max_epochs, lr)
    return {"predictor": final, "oof": oof, "errors": errors, "task": task}


def deup_score(params: dict, outputs) -> jax.Array:
    """DEUP epistemic score ``g(x) >= 0`` [N] for model outputs (the ``deup`` OOD criterion)."""
    return mlp_apply(params["predictor"], deup_features(outputs))
