"""Bayesian Binning into Quantiles (Naeini et al. 2015) with torch-uncertainty 0.13.0's semantics
(``BBQScaler``).

Per class (one-vs-rest; binary: one), for every bin count ``b = 2 .. max_bins``: the edges are
``torch.quantile(p, torch.linspace(0, 1, b + 1))`` (linear interpolation), de-duplicated, with the
outer two replaced by ``-1e-5`` and ``1 + 1e-5``; a scheme whose edges equal an earlier one's (to 9
decimals) is skipped. Each scheme's samples are bucketed (``bucketize(p, edges) - 1``, clamped), its
bins' positive frequencies are its predictions and its score is the Beta-binomial log marginal
likelihood with the prior ``N' = prior_weight`` spread over its bins (``alpha = N'/b * mid``,
``beta = N'/b * (1 - mid)``). The schemes are averaged with weights ``softmax(scores)``; schemes below
``model_pruning`` are dropped (the kept weights are not renormalised, as in TU).

The fit runs on host in numpy float32, reproducing torch's float32 arithmetic where it decides the
bins (:mod:`jaxuq.calibration.reductions`): ``torch.quantile`` and ``torch.linspace`` are bit-exact, so
the edges equal TU's bit for bit, and the scores' float32 sums follow torch's summation order.
``lgamma`` is float64 rounded to float32 where torch uses SLEEF's 1-ulp ``lgammaf``, and the weights'
``softmax`` is float64 rounded where torch has its own ``exp``: both agree with torch to about an ulp
(measured in ``tests/test_calibration_binning.py``). :func:`bbq_apply` is jittable: the schemes are
padded to one ``[C, S, B]`` array (padding has weight 0 and is never selected).

Deviation (pinned by ``test_bbq_empty_bin_is_not_nan``): a bin with no calibration sample gets TU's
``0 / 0 = NaN`` frequency, which turns every prediction falling there into NaN; jaxuq uses the bin's
prior mean (its midpoint) instead. This needs more quantiles than samples between two values
(``max_bins`` close to N); TU's values are unchanged otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln

from jaxuq._validate import check_int, check_real
from jaxuq.calibration.binning import (
    check_fit_probs,
    class_count,
    logits_to_probs,
    one_vs_rest,
    renormalise,
    through_probs,
)
from jaxuq.calibration.reductions import torch_quantile, torch_sum
from jaxuq.metrics.calibration import torch_linspace

__all__ = ["bbq_fit", "bbq_apply", "bbq_fit_probs", "bbq_apply_probs"]

F32 = np.float32


def _log_score(idx: np.ndarray, edges: np.ndarray, y: np.ndarray, prior_weight: float):
    """TU's ``compute_log_score``: bins' positive frequencies ``[b]`` and the log marginal likelihood."""
    b = edges.shape[0] - 1
    n = np.bincount(idx, minlength=b).astype(F32)
    pos = np.bincount(idx, weights=y, minlength=b).astype(F32)
    neg = (n - pos).astype(F32)
    prior = F32(prior_weight / b)
    mid = ((edges[:-1] + edges[1:]) / F32(2)).astype(F32)
    alpha, beta = (prior * mid).astype(F32), (prior * (F32(1) - mid)).astype(F32)
    lg = lambda v: gammaln(np.asarray(v, np.float64)).astype(F32)  # noqa: E731
    terms = lg(prior) - lg(n + prior) + lg(pos + alpha) - lg(alpha) + lg(neg + beta) - lg(beta)
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = np.where(n > 0, pos / n, mid).astype(F32)  # empty bin: prior mean (TU: NaN)
    return freq, torch_sum(terms)


def _schemes(p: np.ndarray, y: np.ndarray, max_bins: int, prior_weight: float):
    """All distinct equal-frequency schemes of one class: ``[(edges, freq, score)]``."""
    out, seen = [], set()
    for b in range(2, max_bins + 1):
        edges = np.unique(torch_quantile(p, torch_linspace(b + 1)))
        if edges.shape[0] < 2:
            continue
        edges[0], edges[-1] = F32(-1e-5), F32(1.0 + 1e-5)
        key = tuple(edges.round(9))
        if key in seen:
            continue
        seen.add(key)
        idx = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, edges.shape[0] - 2)
        out.append((edges, *_log_score(idx, edges, y, prior_weight)))
    if not out:  # constant probabilities: TU's single fallback bin
        out.append((np.array([-1e-5, 1.0 - 1e-5], F32), np.array([y.mean()], F32), F32(0)))
    return out


def _posterior(schemes, model_pruning: float | None):
    """Kept schemes and their weights ``softmax(scores)`` (float32), pruned below ``model_pruning``."""
    scores = np.array([sc for _, _, sc in schemes], np.float64)
    w = np.exp(scores - scores.max())
    w = (w / w.sum()).astype(F32)
    keep = np.ones(w.shape, bool) if model_pruning is None else w >= F32(model_pruning)
    if not keep.any():
        raise ValueError(f"`model_pruning`={model_pruning} removes every binning scheme; lower it")
    return [s for s, k in zip(schemes, keep) if k], w[keep]


def _pack(per_class) -> dict:
    """Pad ``[(schemes, weights)]`` per class to ``edges [K, S, B+1]`` (+inf padding), ``freq [K, S, B]``,
    ``weights [K, S]`` (0 padding) and ``num_bins [K, S]``."""
    s_max = max(len(w) for _, w in per_class)
    b_max = max(e.shape[0] - 1 for sch, _ in per_class for e, _, _ in sch)
    k = len(per_class)
    edges = np.full((k, s_max, b_max + 1), np.inf, F32)
    freq = np.zeros((k, s_max, b_max), F32)
    weights = np.zeros((k, s_max), F32)
    nbins = np.ones((k, s_max), np.int32)
    for c, (sch, w) in enumerate(per_class):
        weights[c, : len(w)] = w
        for j, (e, f, _) in enumerate(sch):
            edges[c, j, : e.shape[0]], freq[c, j, : f.shape[0]], nbins[c, j] = e, f, f.shape[0]
    return {"edges": edges, "freq": freq, "weights": weights, "num_bins": nbins}


def bbq_fit_probs(probs, labels, *, max_bins: int = 15, prior_weight: float = 2.0,
                  model_pruning: float | None = 1e-9) -> dict:
    """Fit TU's ``BBQScaler`` on probabilities (host; numpy).

    Args:
      probs: ``[N, C]`` probabilities, or binary ``[N]`` positive-class probabilities.
      labels: ``[N]`` int class indices (binary: 0/1).
      max_bins: the largest bin count tried (schemes ``2 .. max_bins``), an int >= 2.
      prior_weight: the prior's equivalent sample size ``N'`` (> 0).
      model_pruning: drop schemes whose weight is below it (``None``: keep all); in [0, 1).
    Returns:
      ``{"edges": [C, S, B + 1], "freq": [C, S, B], "weights": [C, S], "num_bins": [C, S]}`` (binary:
      no class axis). Scheme ``j`` of class ``c`` has ``num_bins[c, j]`` bins; padding has weight 0.
    """
    max_bins = check_int(max_bins, "max_bins", 2)
    prior_weight = check_real(prior_weight, "prior_weight", low=0.0, low_open=True)
    if model_pruning is not None:
        model_pruning = check_real(model_pruning, "model_pruning", low=0.0, high=1.0)
    p, y, k = check_fit_probs(probs, labels)
    cols, targets = (np.asarray(a) for a in one_vs_rest(p, y, k))
    per_class = [
        _posterior(_schemes(cols[:, c], targets[:, c], max_bins, prior_weight), model_pruning)
        for c in range(cols.shape[1])
    ]
    out = jax.tree.map(jnp.asarray, _pack(per_class))
    return jax.tree.map(lambda a: a[0], out) if k == 1 else out


def _average(p: jax.Array, edges, freq, weights, nbins) -> jax.Array:
    """One class: ``sum_j w_j freq_j[bin_j(p)]``, accumulated scheme by scheme in TU's order."""
    acc = jnp.zeros_like(p)
    for j in range(weights.shape[0]):
        idx = jnp.clip(jnp.searchsorted(edges[j], p, side="left") - 1, 0, nbins[j] - 1)
        acc = acc + weights[j] * freq[j][idx]
    return acc


def bbq_apply_probs(params: dict, probs) -> jax.Array:
    """Calibrated probabilities: the weighted average of the schemes' bin frequencies per class,
    multi-class rows renormalised. ``[N, C]`` -> ``[N, C]``; binary ``[N]`` -> ``[N]``. Jittable."""
    e, f, w, nb = (jnp.asarray(params[k]) for k in ("edges", "freq", "weights", "num_bins"))
    p = jnp.asarray(probs, jnp.float32)
    if w.ndim == 1:
        return _average(p, e, f, w, nb)
    cols = jax.vmap(_average, in_axes=(1, 0, 0, 0, 0), out_axes=1)(p, e, f, w, nb)
    return renormalise(cols, None, torch_sum)  # TU normalises in torch


def bbq_fit(logits, labels, *, max_bins: int = 15, prior_weight: float = 2.0,
            model_pruning: float | None = 1e-9) -> dict:
    """Fit TU's ``BBQScaler``: softmax (binary ``[N]``/``[N, 1]``: sigmoid) of ``logits`` ``[N, C]``,
    then :func:`bbq_fit_probs`. ``labels``: ``[N]`` int."""
    return bbq_fit_probs(logits_to_probs(logits), labels, max_bins=max_bins, prior_weight=prior_weight,
                         model_pruning=model_pruning)


def bbq_apply(params: dict, logits, *, eps: float = 1e-6) -> jax.Array:
    """TU's ``BBQScaler.forward``: calibrated pseudo-logits ``[N, C]`` (``log p``; binary: ``logit p`` in
    the logits' shape), probabilities clamped to ``[eps, 1 - eps]``. Jittable."""
    return through_probs(bbq_apply_probs, params, logits, class_count(jnp.asarray(params["weights"]), 1), eps)
