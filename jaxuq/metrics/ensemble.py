"""Ensemble diversity metrics (TU A.5). Input: member probabilities ``[M, N, C]`` (members on
axis 0, jaxuq's convention; TU's metrics take ``(B, M, C)``).

* ``disagreement``: per sample ``1 - sum_c n_c (n_c - 1) / 2 / (M (M - 1) / 2)`` with ``n_c`` the
  number of member argmaxes equal to ``c`` (fraction of disagreeing member pairs); NaN for M = 1.
* ``ensemble_entropy``: mean over samples of the mean *member* entropy (aleatoric part),
  ``test/ens_Entropy``; not the entropy of the averaged prediction.
* ``mutual_information``: per sample ``H(mean_m p_m) - mean_m H(p_m)``. Like TU we clamp the
  accumulated **sum**: ``max(sum_i MI_i, 0) / N``. Per-sample MI is >= 0 mathematically and only
  goes negative by float32 rounding (~1e-7), so clamping the sum instead of each term changes the
  result by at most that rounding; we match TU (``reduction="none"`` clamps each sample, as TU).
* ``variation_ratio``: TU's ``VariationRatio``; ``probabilistic=True`` (its default):
  ``1 - mean_m p_m[argmax p_bar]``; else ``1 - #{m: argmax p_m = argmax p_bar} / M``. (TU's update
  transposes its input, so it reads ``(M, B, C)`` despite its docstring's ``(B, M, C)``: the same
  layout as here; the OOD criterion transposes before calling it.)

Each takes TU's ``reduction``: ``"mean"`` (default), ``"sum"`` or ``"none"``/None (per sample ``[N]``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxuq import _validate
from jaxuq.metrics.classification import check_reduction, entropy_per_sample, reduce

__all__ = [
    "disagreement",
    "ensemble_entropy",
    "mutual_information",
    "variation_ratio",
    "disagreement_per_sample",
    "mutual_information_per_sample",
    "variation_ratio_per_sample",
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


def variation_ratio_per_sample(member_probs: jax.Array, probabilistic: bool = True) -> jax.Array:
    """``[M, N, C] -> [N]``: ``1 - mean_m p_m[c*]`` (``probabilistic``) or ``1 - #{m: argmax p_m = c*} / M``
    with ``c* = argmax mean_m p_m`` (argmax ties: first index). Jittable."""
    p = member_probs.astype(F32)
    top = jnp.argmax(jnp.mean(p, axis=0), axis=-1)  # [N]
    if probabilistic:
        return 1.0 - jnp.mean(jnp.take_along_axis(p, top[None, :, None], axis=-1)[..., 0], axis=0)
    agree = jnp.sum(jnp.argmax(p, axis=-1) == top[None], axis=0)
    return 1.0 - agree.astype(F32) / p.shape[0]


@functools.partial(jax.jit, static_argnames=("name", "reduction", "probabilistic"))
def _ensemble_any_impl(member_probs, name, reduction, probabilistic=True):
    if name == "disagreement":
        per = disagreement_per_sample(member_probs)
    elif name == "entropy":
        per = jnp.mean(entropy_per_sample(member_probs), axis=0)
    elif name == "variation_ratio":
        per = variation_ratio_per_sample(member_probs, probabilistic)
        return jnp.mean(per) if reduction == "mean" else reduce(per, reduction)  # TU: .mean()
    else:  # TU clamps the accumulated sum (mean, sum) or each sample (none)
        per = mutual_information_per_sample(member_probs)
        return jnp.maximum(reduce(per, "sum" if reduction == "mean" else reduction), 0.0) / (
            per.shape[0] if reduction == "mean" else 1)
    return reduce(per, reduction)


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


def disagreement(member_probs, *, reduction: str | None = "mean") -> jax.Array:
    """Mean fraction of member pairs whose argmax differ (``ens_Disagreement``; TU ``Disagreement``).

    Args:
      member_probs: ``[M, N, C]`` member probabilities.
      reduction: ``"mean"`` (default), ``"sum"``, or ``"none"``/None for the per-sample values ``[N]``.
    Returns:
      float32 scalar (NaN if M = 1; ``[N]`` for ``reduction="none"``).
    """
    return _ensemble_metric(member_probs, "disagreement", reduction, _disagreement_impl)


def ensemble_entropy(member_probs, *, reduction: str | None = "mean") -> jax.Array:
    """Mean member entropy ``mean_i mean_m H(p_{m,i})`` (``ens_Entropy``; TU ``Entropy`` on ``(B, M, C)``).

    Args:
      member_probs: ``[M, N, C]`` member probabilities.
      reduction: ``"mean"`` (default), ``"sum"``, or ``"none"``/None for the per-sample values ``[N]``.
    Returns:
      float32 scalar (``[N]`` for ``reduction="none"``).
    """
    return _ensemble_metric(member_probs, "entropy", reduction, _ens_entropy_impl)


def mutual_information(member_probs, *, reduction: str | None = "mean") -> jax.Array:
    """Mutual information ``max(sum_i MI_i, 0) / N`` (``ens_MI``; TU clamps the sum).

    Args:
      member_probs: ``[M, N, C]`` member probabilities.
      reduction: ``"mean"`` (default), ``"sum"`` (``max(sum_i MI_i, 0)``), or ``"none"``/None for
        ``max(MI_i, 0)`` per sample ``[N]``.
    Returns:
      float32 scalar >= 0 (``[N]`` for ``reduction="none"``).
    """
    return _ensemble_metric(member_probs, "mutual_information", reduction, _mi_impl)


def variation_ratio(member_probs, *, probabilistic: bool = True, reduction: str | None = "mean") -> jax.Array:
    """Variation ratio (TU ``VariationRatio``): how much the members disagree with the ensemble's top
    class ``c* = argmax_c mean_m p_mc``.

    Args:
      member_probs: ``[M, N, C]`` member probabilities.
      probabilistic: ``1 - mean_m p_m[c*]`` (TU's default) if True, else the fraction of members whose
        own argmax is not ``c*`` (the OOD criterion's ``variation_ratio``).
      reduction: ``"mean"`` (default), ``"sum"``, or ``"none"``/None for the per-sample values ``[N]``.
    Returns:
      float32 scalar (``[N]`` for ``reduction="none"``). Jittable.
    """
    if not isinstance(probabilistic, bool):
        raise TypeError(f"`probabilistic` must be a bool, got {type(probabilistic).__name__}")
    reduction = check_reduction(reduction)
    return _ensemble_any_impl(_members(member_probs), "variation_ratio", reduction, probabilistic)


def _ensemble_metric(member_probs, name: str, reduction, default_impl):
    reduction = check_reduction(reduction)
    if reduction == "mean":
        return default_impl(_members(member_probs))  # today's path, unchanged
    return _ensemble_any_impl(_members(member_probs), name, reduction)
