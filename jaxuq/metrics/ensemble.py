"""Ensemble diversity metrics (TU A.5). Input: member probabilities ``[M, N, C]`` (members on
axis 0, jaxuq's convention; TU's metrics take ``(B, M, C)``).

* ``disagreement``: per sample ``1 - sum_c n_c (n_c - 1) / 2 / (M (M - 1) / 2)`` with ``n_c`` the
  number of member argmaxes equal to ``c`` (fraction of disagreeing member pairs); NaN for M = 1.
* ``ensemble_entropy``: mean over samples of the mean *member* entropy (aleatoric part),
  ``test/ens_Entropy``; not the entropy of the averaged prediction.
* ``mutual_information``: per sample ``H(mean_m p_m) - mean_m H(p_m)``. Like TU we clamp the
  accumulated **sum**: ``max(sum_i MI_i, 0) / N``. Per-sample MI is >= 0 mathematically and only
  goes negative by float32 rounding (~1e-7), so clamping the sum instead of each term changes the
  result by at most that rounding; we match TU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxuq import _validate
from jaxuq.metrics.classification import entropy_per_sample

__all__ = [
    "disagreement",
    "ensemble_entropy",
    "mutual_information",
    "disagreement_per_sample",
    "mutual_information_per_sample",
]

F32 = jnp.float32


def disagreement_per_sample(member_probs: jax.Array) -> jax.Array:
    """``[M, N, C] -> [N]`` fraction of disagreeing member pairs. Jittable."""
    m, _, c = member_probs.shape
    preds = jnp.argmax(member_probs, axis=-1)  # [M, N]
    counts = jnp.sum(jax.nn.one_hot(preds, c, dtype=F32), axis=0)  # [N, C]
    max_counts = m * (m - 1) / 2
    pairs = jnp.sum(counts * (counts - 1) / 2, axis=-1)
    return 1.0 - pairs / jnp.float32(max_counts) if m > 1 else jnp.full(pairs.shape, jnp.nan, F32)


def mutual_information_per_sample(member_probs: jax.Array) -> jax.Array:
    """``[M, N, C] -> [N]`` ``H(mean_m p) - mean_m H(p_m)`` (unclamped). Jittable."""
    p = member_probs.astype(F32)
    return entropy_per_sample(jnp.mean(p, axis=0)) - jnp.mean(entropy_per_sample(p), axis=0)


@jax.jit
def _disagreement_impl(member_probs):
    return jnp.sum(disagreement_per_sample(member_probs)) / member_probs.shape[1]


@jax.jit
def _ens_entropy_impl(member_probs):
    return jnp.sum(jnp.mean(entropy_per_sample(member_probs), axis=0)) / member_probs.shape[1]


@jax.jit
def _mi_impl(member_probs):
    total = jnp.sum(mutual_information_per_sample(member_probs))
    return jnp.maximum(total, 0.0) / member_probs.shape[1]


def _members(member_probs):
    return _validate.check_probs(member_probs, "member_probs", (3,))


def disagreement(member_probs) -> jax.Array:
    """Mean fraction of member pairs whose argmax differ (``ens_Disagreement``).

    Args:
      member_probs: ``[M, N, C]`` member probabilities.
    Returns:
      float32 scalar (NaN if M = 1).
    """
    return _disagreement_impl(_members(member_probs))


def ensemble_entropy(member_probs) -> jax.Array:
    """Mean member entropy ``mean_i mean_m H(p_{m,i})`` (``ens_Entropy``).

    Args:
      member_probs: ``[M, N, C]`` member probabilities.
    Returns:
      float32 scalar.
    """
    return _ens_entropy_impl(_members(member_probs))


def mutual_information(member_probs) -> jax.Array:
    """Mutual information ``max(sum_i MI_i, 0) / N`` (``ens_MI``; TU clamps the sum).

    Args:
      member_probs: ``[M, N, C]`` member probabilities.
    Returns:
      float32 scalar >= 0.
    """
    return _mi_impl(_members(member_probs))
