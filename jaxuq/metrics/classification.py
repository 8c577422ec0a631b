"""Classification metrics: accuracy, Brier score, NLL, entropy (TU 0.13.0 definitions, A.1).

All computations are float32 whatever the input dtype. Public functions validate their inputs
(see :mod:`jaxuq._validate`) and call a jitted ``_*_impl`` core that can be used inside
other jitted code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import entr

from jaxuq import _validate

__all__ = ["accuracy", "brier_score", "nll", "entropy", "entropy_per_sample"]

F32 = jnp.float32


def _correct(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """[N] float32 1.0 where argmax(probs) == label (argmax ties go to the first index)."""
    return (jnp.argmax(probs, axis=-1) == labels).astype(F32)


def _brier_per_sample(probs: jax.Array, labels: jax.Array) -> jax.Array:
    probs = probs.astype(F32)
    onehot = jax.nn.one_hot(labels, probs.shape[-1], dtype=F32)
    return jnp.sum(jnp.square(probs - onehot), axis=-1)


def _nll_per_sample(probs: jax.Array, labels: jax.Array) -> jax.Array:
    p_y = jnp.take_along_axis(probs.astype(F32), labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return -jnp.log(p_y)


def entropy_per_sample(probs: jax.Array) -> jax.Array:
    """Shannon entropy (nats) of each row: ``[..., C] -> [...]``, with ``entr(0) = 0``. Jittable."""
    return jnp.sum(entr(probs.astype(F32)), axis=-1)


@jax.jit
def _accuracy_impl(probs, labels):
    return jnp.mean(_correct(probs, labels))


@jax.jit
def _brier_impl(probs, labels):
    return jnp.sum(_brier_per_sample(probs, labels)) / probs.shape[0]


@jax.jit
def _nll_impl(probs, labels):
    return jnp.sum(_nll_per_sample(probs, labels)) / probs.shape[0]


@jax.jit
def _entropy_impl(probs):
    return jnp.sum(entropy_per_sample(probs)) / probs.shape[0]


def accuracy(probs, labels) -> jax.Array:
    """Top-1 accuracy ``mean[argmax p = y]`` (torchmetrics MulticlassAccuracy, micro).

    Args:
      probs: ``[N, C]`` probabilities (rows sum to 1).
      labels: ``[N]`` integer labels in ``[0, C)``.
    Returns:
      float32 scalar in [0, 1].
    """
    return _accuracy_impl(*_validate.probs_labels(probs, labels))


def brier_score(probs, labels) -> jax.Array:
    """Brier score ``mean_i sum_c (p_ic - onehot_ic)^2``, summed over classes (range [0, 2]).

    Args:
      probs: ``[N, C]`` probabilities.
      labels: ``[N]`` integer labels.
    Returns:
      float32 scalar.
    """
    return _brier_impl(*_validate.probs_labels(probs, labels))


def nll(probs, labels) -> jax.Array:
    """Negative log-likelihood ``mean_i -log p_{i, y_i}`` of float32 probabilities, no clamping.

    Like TU's ``CategoricalNLL`` the log is taken of the float32 probabilities, so the result is
    ``+inf`` if any ``p_{i, y_i} == 0``.

    Args:
      probs: ``[N, C]`` probabilities.
      labels: ``[N]`` integer labels.
    Returns:
      float32 scalar.
    """
    return _nll_impl(*_validate.probs_labels(probs, labels))


def entropy(probs) -> jax.Array:
    """Mean Shannon entropy (nats) of the rows of ``probs`` (``test/cls/Entropy``, ``ood/Entropy``).

    For an ensemble pass the member-averaged probabilities (total entropy); for the mean *member*
    entropy use :func:`jaxuq.metrics.ensemble_entropy`.

    Args:
      probs: ``[N, C]`` probabilities.
    Returns:
      float32 scalar.
    """
    return _entropy_impl(_validate.check_probs(probs, "probs", (2,)))
