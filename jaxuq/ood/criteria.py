"""OOD criteria with torch-uncertainty 0.13.0's names and signs (higher = more OOD).

Every criterion takes logits ``[N, C]`` (a single model) or ``[M, N, C]`` (M members on axis 0;
``M == 1`` counts as a single model) and returns scores ``[N]`` (float32). Probabilities are
``softmax`` in float32; ensembles average probabilities, not logits.

=====================  ==========================================  ===================
name                   score                                       restriction
=====================  ==========================================  ===================
``msp``                ``-max_c mean_m p_mc``
``logit``              ``-max_c mean_m z_mc``                       single models only
``energy``             ``-logsumexp_c(mean_m z_mc)`` (T = 1)        single models only
``entropy``            ``mean_m H(p_m)`` (mean *member* entropy)
``mutual_information`` ``max(H(mean_m p_m) - mean_m H(p_m), 0)``    ensembles only
``variation_ratio``    ``1 - #{m: argmax p_m = argmax p_bar} / M``   ensembles only
``deup``               the DEUP predictor's output, unchanged
=====================  ==========================================  ===================

The string names are TU's. The functions behind ``entropy`` and ``mutual_information`` are
:func:`entropy_score` and :func:`mutual_information_score` (TU's ``EntropyCriterion`` and
``MutualInformationCriterion``): per-sample scores ``[N]``, not the dataset-level metrics
``jaxuq.metrics.entropy`` / ``jaxuq.metrics.mutual_information``.

As in TU, a single-only criterion on an ensemble raises ``NotImplementedError`` and an
ensemble-only criterion on a single model raises ``ValueError``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxuq.metrics.ensemble import variation_ratio_per_sample

__all__ = [
    "CRITERIA",
    "SINGLE_ONLY",
    "ENSEMBLE_ONLY",
    "msp",
    "max_logit",
    "energy",
    "entropy_score",
    "mutual_information_score",
    "variation_ratio",
    "deup",
    "get_criterion",
    "score",
]


def _as_members(logits) -> jax.Array:
    z = jnp.asarray(logits, jnp.float32)
    if z.ndim == 2:
        z = z[None]
    if z.ndim != 3:
        raise ValueError(f"logits must be [N, C] or [M, N, C]; got shape {z.shape}")
    return z


def _entr(p: jax.Array) -> jax.Array:
    """``torch.special.entr``: -p log p, 0 at p = 0."""
    return jnp.where(p > 0, -p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)


def _is_ensemble(z: jax.Array) -> bool:
    return z.shape[0] > 1


def _single_only(name: str, z: jax.Array) -> None:
    if _is_ensemble(z):
        raise NotImplementedError(
            f"{name!r}: logit-based criteria are not implemented for ensembles (got {z.shape[0]} members)."
        )


def _ensemble_only(name: str, z: jax.Array) -> None:
    if not _is_ensemble(z):
        raise ValueError(
            f"{name!r}: you cannot use mutual information or variation ratio with a single model."
        )


def msp(logits) -> jax.Array:
    """Negative maximum of the member-averaged softmax: [N]."""
    p = jax.nn.softmax(_as_members(logits), axis=-1).mean(0)
    return -p.max(-1)


def max_logit(logits) -> jax.Array:
    """Negative max of the member-averaged logits (TU ``logit``); single models only."""
    z = _as_members(logits)
    _single_only("logit", z)
    return -z.mean(0).max(-1)


def energy(logits) -> jax.Array:
    """Negative logsumexp of the member-averaged logits (TU ``energy``); single models only."""
    z = _as_members(logits)
    _single_only("energy", z)
    return -jax.nn.logsumexp(z.mean(0), axis=-1)


def entropy_score(logits) -> jax.Array:
    """TU ``EntropyCriterion``: mean member entropy ``mean_m H(p_m)`` (equals H(p) for one model)."""
    p = jax.nn.softmax(_as_members(logits), axis=-1)
    return _entr(p).sum(-1).mean(0)


def mutual_information_score(logits) -> jax.Array:
    """TU ``MutualInformationCriterion``: ``H(p_bar) - mean_m H(p_m)`` [N], clamped at 0 per sample;
    ensembles only."""
    z = _as_members(logits)
    _ensemble_only("mutual_information", z)
    p = jax.nn.softmax(z, axis=-1)
    mi = _entr(p.mean(0)).sum(-1) - _entr(p).sum(-1).mean(0)
    return jnp.maximum(mi, 0.0)


def variation_ratio(logits) -> jax.Array:
    """``1 - #{m : argmax p_m = argmax p_bar} / M``; ensembles only (argmax ties: first index)."""
    z = _as_members(logits)
    _ensemble_only("variation_ratio", z)
    return variation_ratio_per_sample(jax.nn.softmax(z, axis=-1), probabilistic=False)


def deup(deup_scores) -> jax.Array:
    """TU's ``DEUPCriterion``: the DEUP predictor's output [N] is already the OOD score."""
    s = jnp.asarray(deup_scores, jnp.float32)
    if s.ndim != 1:
        raise ValueError(f"deup scores must be [N]; got shape {s.shape}")
    return s


CRITERIA = {
    "msp": msp,
    "logit": max_logit,
    "max_logit": max_logit,
    "energy": energy,
    "entropy": entropy_score,
    "mutual_information": mutual_information_score,
    "variation_ratio": variation_ratio,
    "deup": deup,
}
SINGLE_ONLY = frozenset({"logit", "max_logit", "energy"})
ENSEMBLE_ONLY = frozenset({"mutual_information", "variation_ratio"})


def get_criterion(name):
    """Return the criterion function for a TU name (a callable is returned unchanged)."""
    if callable(name):
        return name
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(
            "The OOD criterion must be one of 'msp', 'logit', 'energy', 'entropy', "
            f"'mutual_information', 'variation_ratio', or 'deup'. Got ood_criterion={name!r}."
        ) from None


def score(name, inputs) -> jax.Array:
    """``get_criterion(name)(inputs)``: OOD scores [N], higher = more OOD."""
    return get_criterion(name)(inputs)
