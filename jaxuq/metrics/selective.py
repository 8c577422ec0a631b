"""Selective-classification metrics (TU A.3) and their SCOD variants (TU A.4).

Risk curve: sort samples by confidence **descending**; ``r_k = cumsum(err)_k / k``, coverage k/N.

* ``aurc``   = trapz(r, k/N) / (1 - 1/N)  (NaN if N < 2)
* ``augrc``  = same with ``r_k * k/N``
* ``cov_at_risk(risk=0.05)`` = (largest k with r_k <= risk) / N (NaN if none): ``Cov_5Risk``
* ``risk_at_cov(cov=0.8)``   = r[ceil(N * cov) - 1]: ``Risk_80Cov``

Ties (deviation from TU, which lets its unstable sort order decide): a group of tied
confidences is accepted or rejected as a whole. The cumulative loss is exact at each distinct
threshold and linearly interpolated inside a tied group (``jaxuq.metrics._ties``),
which makes ``r`` the expectation over random tie-breaking: AURC, AUGRC and Risk@Cov (linear in
``r``) are the expected values; Cov@Risk only considers coverages at distinct thresholds (a group
end). The values do not depend on sample order; on tie-free input they equal TU's.

SCOD (selective classification with OOD data): acceptance score ``-ood_score`` and loss
``(1 - c) * err`` for ID samples, ``c`` for OOD samples (``c = ood_cost = 0.5``), then the same
four formulas (``ood/SCOD_AURC``, ...).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxuq import _validate
from jaxuq.metrics import _ties
from jaxuq.metrics.calibration import top_label

__all__ = [
    "aurc",
    "augrc",
    "cov_at_risk",
    "risk_at_cov",
    "risk_curve",
    "risk_curve_groups",
    "scod_losses",
    "scod_metrics",
    "selective_from_scores",
    "selective_from_groups",
]

F32 = jnp.float32


def risk_curve_groups(g: _ties.Groups, which: int = 0):
    """Tie-aware selective risk from :func:`jaxuq.metrics._ties.rank_sort` (payload ``which`` =
    loss).

    Returns ``(r, at_threshold)``: float32 ``r_k = L_k / k`` ``[N]`` (``L`` the tie-aware
    cumulative loss, acceptance by descending score) and bool ``[N]``, True where coverage ``k/N``
    is reachable by a threshold (a group end). Jittable.
    """
    idx = jnp.arange(g.end.shape[0], dtype=jnp.int32)
    return _ties.tied_cumsum(g, which) / (idx + 1).astype(F32), g.end == idx


def risk_curve(scores: jax.Array, losses: jax.Array):
    """:func:`risk_curve_groups` of ``scores [N]`` (higher = accepted first) and ``losses [N]``."""
    return risk_curve_groups(_ties.rank_sort(scores, losses.astype(F32)))


def _trapz_unit(y: jax.Array) -> jax.Array:
    n = y.shape[0]
    if n < 2:
        return jnp.float32(jnp.nan)
    cov = jnp.arange(1, n + 1, dtype=F32) / n
    area = jnp.sum((cov[1:] - cov[:-1]) * (y[1:] + y[:-1]) / 2.0)
    return area / (1.0 - 1.0 / n)


def _aurc_from_risk(r):
    return _trapz_unit(r)


def _augrc_from_risk(r):
    n = r.shape[0]
    cov = jnp.arange(1, n + 1, dtype=F32) / n
    return _trapz_unit(r * cov)


def _cov_at_risk_from_risk(r, at_threshold, risk: float):
    n = r.shape[0]
    ok = (r <= jnp.float32(risk)) & at_threshold
    last = n - 1 - jnp.argmax(ok[::-1])
    return jnp.where(jnp.any(ok), (last + 1).astype(F32) / n, jnp.nan)


def _risk_at_cov_from_risk(r, cov: float):
    n = r.shape[0]
    k = math.ceil(n * cov) - 1
    return r[k]


def selective_from_groups(g: _ties.Groups, which: int = 0, *, risk: float = 0.05, cov: float = 0.8) -> dict:
    """All four selective metrics from :func:`jaxuq.metrics._ties.rank_sort` groups (payload
    ``which`` = loss). Jittable. Returns a dict of float32 scalars keyed ``AURC, AUGRC,
    Cov_5Risk, Risk_80Cov`` (the names assume the default thresholds)."""
    r, at_threshold = risk_curve_groups(g, which)
    return {
        "AURC": _aurc_from_risk(r),
        "AUGRC": _augrc_from_risk(r),
        "Cov_5Risk": _cov_at_risk_from_risk(r, at_threshold, risk),
        "Risk_80Cov": _risk_at_cov_from_risk(r, cov),
    }


def selective_from_scores(scores, losses, *, risk: float = 0.05, cov: float = 0.8) -> dict:
    """:func:`selective_from_groups` of ``scores [N]`` (higher = accepted first), ``losses [N]``."""
    return selective_from_groups(_ties.rank_sort(scores, losses.astype(F32)), risk=risk, cov=cov)


@functools.partial(jax.jit, static_argnames=("key", "risk", "cov"))
def _selective_impl(probs, labels, key: str, risk: float = 0.05, cov: float = 0.8):
    conf, acc = top_label(probs, labels)
    return selective_from_scores(conf, 1.0 - acc, risk=risk, cov=cov)[key]


def aurc(probs, labels) -> jax.Array:
    """Area under the risk-coverage curve (score = max p, error = [argmax p != y]).

    Args:
      probs: ``[N, C]`` probabilities.
      labels: ``[N]`` integer labels.
    Returns:
      float32 scalar (NaN if N < 2).
    """
    return _selective_impl(*_validate.probs_labels(probs, labels), key="AURC")


def augrc(probs, labels) -> jax.Array:
    """Area under the generalised risk-coverage curve (``r_k * k/N``), TU's ``AUGRC``.

    Args:
      probs: ``[N, C]`` probabilities.
      labels: ``[N]`` integer labels.
    Returns:
      float32 scalar (NaN if N < 2).
    """
    return _selective_impl(*_validate.probs_labels(probs, labels), key="AUGRC")


def cov_at_risk(probs, labels, risk: float = 0.05) -> jax.Array:
    """Largest coverage whose selective risk is <= ``risk`` (TU ``CovAtxRisk``; NaN if none).

    Args:
      probs: ``[N, C]`` probabilities.
      labels: ``[N]`` integer labels.
      risk: risk threshold in [0, 1] (0.05 gives ``Cov_5Risk``).
    Returns:
      float32 scalar.
    """
    risk = _validate.check_fraction(risk, "risk")
    return _selective_impl(*_validate.probs_labels(probs, labels), key="Cov_5Risk", risk=risk)


def risk_at_cov(probs, labels, cov: float = 0.8) -> jax.Array:
    """Selective risk at coverage ``cov``: ``r[ceil(N * cov) - 1]`` (TU ``RiskAtxCov``).

    Args:
      probs: ``[N, C]`` probabilities.
      labels: ``[N]`` integer labels.
      cov: coverage in (0, 1] (0.8 gives ``Risk_80Cov``).
    Returns:
      float32 scalar.
    """
    cov = _validate.check_fraction(cov, "cov", open_left=True)
    return _selective_impl(*_validate.probs_labels(probs, labels), key="Risk_80Cov", cov=cov)


def scod_losses(errors: jax.Array, is_ood: jax.Array, ood_cost: float = 0.5) -> jax.Array:
    """SCOD loss ``[N]``: ``c`` for OOD samples, ``(1 - c) * err`` for ID samples. Jittable."""
    c = jnp.float32(ood_cost)
    return jnp.where(is_ood.astype(bool), c, (1.0 - c) * errors.astype(F32))


@functools.partial(jax.jit, static_argnames=("ood_cost",))
def _scod_impl(ood_scores, errors, is_ood, ood_cost: float = 0.5):
    return selective_from_scores(-ood_scores.astype(F32), scod_losses(errors, is_ood, ood_cost))


def scod_metrics(ood_scores, errors, is_ood, ood_cost: float = 0.5) -> dict:
    """SCOD metrics (``SCOD_AURC``, ``SCOD_AUGRC``, ``SCOD_Cov_5Risk``, ``SCOD_Risk_80Cov``).

    Args:
      ood_scores: ``[N]`` finite OOD scores (higher = more OOD), ID and OOD samples together.
      errors: ``[N]`` 0/1 misclassification of ID samples (ignored for OOD samples).
      is_ood: ``[N]`` 0/1 OOD indicator.
      ood_cost: cost ``c`` of accepting an OOD sample (TU's ``scod_ood_cost``).
    Returns:
      dict of float32 scalars keyed ``SCOD_AURC``, ``SCOD_AUGRC``, ``SCOD_Cov_5Risk``,
      ``SCOD_Risk_80Cov``.
    """
    pending = []
    ood_scores = _validate.check_scores(ood_scores, "ood_scores", pending)
    n = ood_scores.shape[0]
    errors = _validate.check_binary(errors, n, "errors", both_classes=False, pending=pending)
    is_ood = _validate.check_binary(is_ood, n, "is_ood", both_classes=False, pending=pending)
    _validate.resolve(pending)
    ood_cost = _validate.check_fraction(ood_cost, "ood_cost")
    out = _scod_impl(ood_scores, errors, is_ood, ood_cost=ood_cost)
    return {f"SCOD_{k}": v for k, v in out.items()}
