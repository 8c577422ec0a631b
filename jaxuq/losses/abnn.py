"""ABNN's fine-tuning loss (TU 0.13.0 ``post_processing/abnn.py``): cross-entropy with per-class
weights, where each of the ``num_models`` fine-tuned copies up-weights its own random subset of
``int(sqrt(C))`` classes by ``random_prior`` (TU: ``weight[randperm(C)[:k]] += random_prior - 1``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq._validate import check_int, check_real

__all__ = ["WeightedCrossEntropy", "abnn_class_weights"]


def abnn_class_weights(key, num_classes: int, num_models: int, random_prior: float, *,
                       chosen=None) -> np.ndarray:
    """``[num_models, C]`` float32 class weights: 1, and ``random_prior`` on ``int(sqrt(C))`` classes
    per model drawn from ``key`` (one permutation per model), or given as ``chosen [num_models, k]``."""
    c = check_int(num_classes, "num_classes", minimum=1)
    m = check_int(num_models, "num_models", minimum=1)
    rp = check_real(random_prior, "random_prior", low=0.0)
    k = int(c**0.5)
    if chosen is None:
        keys = jax.random.split(key, m)
        chosen = np.stack([np.asarray(jax.random.permutation(kk, c))[:k] for kk in keys])
    chosen = np.asarray(chosen)
    if chosen.shape != (m, k) or chosen.min(initial=0) < 0 or chosen.max(initial=0) >= c:
        raise ValueError(f"`chosen` must be [num_models={m}, {k}] class indices in [0, {c}), "
                         f"got {chosen.shape}")
    w = np.ones((m, c), np.float32)
    for i, idx in enumerate(chosen):
        w[i, idx] += np.float32(rp - 1)
    return w


@dataclasses.dataclass(frozen=True)
class WeightedCrossEntropy:
    """torch ``CrossEntropyLoss(weight=w)``: ``sum_i w[y_i] nll_i / sum_i w[y_i]`` (logits [N, C],
    labels [N]); ``weights`` a tuple of C floats (hashable, so it can key a jitted step)."""

    weights: tuple[float, ...]

    def __post_init__(self):
        w = tuple(check_real(v, "weights[i]", low=0.0) for v in self.weights)
        if not w or not math.fsum(w) > 0:
            raise ValueError(f"`weights` must be non-empty with a positive sum, got {self.weights}")
        object.__setattr__(self, "weights", w)

    def __call__(self, logits, labels) -> jax.Array:
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        y = labels.astype(jnp.int32)
        wy = jnp.asarray(self.weights, jnp.float32)[y]
        nll = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
        return jnp.sum(wy * nll) / jnp.sum(wy)
