"""Split-conformal classification sets (THR/LAC, APS, RAPS) with TU 0.13.0's semantics.

Pure functions on probabilities ``probs: [N, C]`` (softmax of possibly temperature-scaled logits)::

    q = thr_quantile(cal_probs, cal_labels, alpha)               # TU: torch.quantile, no (n+1)
    sets = thr_sets(test_probs, q)                                # bool [N, C], top-1 always in
    coverage_rate(sets, test_labels), set_size(sets)

or the one-call wrapper ``conformal_fit(logits, labels, method=..., alpha=...)`` /
``conformal_predict(params, logits)``, which also runs TU's temperature scaling first when
``enable_ts`` (TU's default: on for THR and APS, off for RAPS).

Quantile: ``correction="tu"`` reproduces TU, ``torch.quantile(scores, 1 - alpha)`` with linear
interpolation and no finite-sample correction, which can under-cover by up to about 1/n.
``correction="finite_sample"`` uses the ``ceil((n + 1)(1 - alpha))``-th smallest score (the
split-conformal quantile of Vovk / Lei et al.), which guarantees
``P(Y in C(X)) >= 1 - alpha`` for exchangeable data; when ``(n + 1)(1 - alpha) > n`` it is
``+inf`` (every class is included).

APS/RAPS randomisation: TU draws ``U ~ torch.rand``; here the noise is an explicit argument
(``noise`` array or a ``jax.random`` key) so that results are reproducible, and so that a parity
test can feed torch's draws.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq._validate import check_int, check_labels, check_real, finite_logits
from jaxuq.calibration.scaling import temperature_apply, temperature_fit

__all__ = [
    "temperature_apply",
    "conformal_quantile",
    "thr_scores",
    "thr_quantile",
    "thr_sets",
    "aps_scores",
    "aps_all_scores",
    "aps_quantile",
    "aps_sets",
    "coverage_rate",
    "set_size",
    "conformal_fit",
    "conformal_predict",
]


def _check_alpha(alpha: float) -> None:
    if not 0 < check_real(alpha, "alpha") < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")


def conformal_quantile(scores, alpha: float, correction: str = "tu") -> jax.Array:
    """Calibration quantile of non-conformity ``scores`` [n].

    ``correction="tu"``: ``torch.quantile(scores, 1 - alpha)`` (linear interpolation, float32).
    ``correction="finite_sample"``: the ``ceil((n+1)(1-alpha))``-th smallest score, or +inf.
    ``correction="cqr"``: TU's ``ConformalRegCQR``, ``torch.quantile(scores, min(ceil((n+1)(1-alpha)) / n, 1),
    interpolation="higher")`` (level and rank in float32 as torch).
    """
    _check_alpha(alpha)
    s = jnp.sort(jnp.asarray(scores, jnp.float32).ravel())
    n = s.shape[0]
    if n == 0:
        raise ValueError("no calibration scores")
    if correction == "tu":
        q = jnp.float32(1.0 - alpha)  # torch casts q to the input dtype
        pos = q * (n - 1)
        lo = jnp.floor(pos).astype(jnp.int32)
        hi = jnp.minimum(lo + 1, n - 1)
        w = pos - lo
        return s[lo] + w * (s[hi] - s[lo])  # torch.lerp
    if correction == "finite_sample":
        k = math.ceil((n + 1) * (1 - alpha))
        return jnp.float32(jnp.inf) if k > n else s[k - 1]
    if correction == "cqr":
        level = np.float32(min(math.ceil((n + 1) * (1.0 - alpha)) / n, 1.0))
        return s[int(np.ceil(level * np.float32(n - 1)))]
    raise ValueError(f"correction must be 'tu', 'finite_sample' or 'cqr'; got {correction!r}")


# ----------------------------------------------------------------------------- THR / LAC
def thr_scores(probs, labels) -> jax.Array:
    """``1 - p_y`` [N]."""
    probs = jnp.asarray(probs, jnp.float32)
    return 1.0 - jnp.take_along_axis(probs, jnp.asarray(labels)[:, None].astype(jnp.int32), -1)[:, 0]


def thr_quantile(probs, labels, alpha: float, correction: str = "tu") -> jax.Array:
    return conformal_quantile(thr_scores(probs, labels), alpha, correction)


def thr_sets(probs, q_hat) -> jax.Array:
    """``{c : p_c >= 1 - q_hat} U {argmax p}``: bool [N, C]."""
    probs = jnp.asarray(probs, jnp.float32)
    s = probs >= 1.0 - q_hat
    top1 = jax.nn.one_hot(probs.argmax(-1), probs.shape[-1], dtype=bool)
    return s | top1


# ----------------------------------------------------------------------------- APS / RAPS
def _noise(noise, key, shape, randomized: bool):
    if not randomized:
        return jnp.zeros(shape, jnp.float32)
    if noise is not None:
        noise = jnp.asarray(noise, jnp.float32)
        if noise.shape != shape:
            raise ValueError(f"noise must have shape {shape}; got {noise.shape}")
        return noise
    if key is None:
        raise ValueError("randomized APS/RAPS needs `key` (jax.random key) or an explicit `noise` array")
    return jax.random.uniform(key, shape, jnp.float32)


def _sort_sum(probs):
    # torch.sort(descending=True); ties in probs are measure-zero for real softmax outputs
    idx = jnp.argsort(-probs, axis=-1, stable=True)
    ordered = jnp.take_along_axis(probs, idx, -1)
    return idx, ordered, jnp.cumsum(ordered, -1)


def aps_scores(probs, labels, *, randomized=True, noise=None, key=None, penalty=0.0, k_reg=1):
    """APS (RAPS with ``penalty > 0``) score of the true class [N].

    ``cumsum of sorted probs up to the label - U * p_label + max(penalty * (rank - k_reg), 0)``,
    rank 1-based. ``noise``: [N] uniform draws (TU: ``torch.rand(N)``) or ``key``.
    """
    probs = jnp.asarray(probs, jnp.float32)
    labels = jnp.asarray(labels).astype(jnp.int32)
    idx, ordered, cumsum = _sort_sum(probs)
    u = _noise(noise, key, (probs.shape[0],), randomized)
    rank0 = jnp.argmax(idx == labels[:, None], axis=-1)
    cs = jnp.take_along_axis(cumsum, rank0[:, None], -1)[:, 0]
    od = jnp.take_along_axis(ordered, rank0[:, None], -1)[:, 0]
    reg = jnp.maximum(penalty * (rank0 + 1 - k_reg), 0.0)
    return cs - u * od + reg


def aps_all_scores(probs, *, randomized=True, noise=None, key=None, penalty=0.0, k_reg=1):
    """APS/RAPS scores of every class [N, C] (``noise``: [N, C], TU ``torch.rand(probs.shape)``)."""
    probs = jnp.asarray(probs, jnp.float32)
    idx, ordered, cumsum = _sort_sum(probs)
    u = _noise(noise, key, probs.shape, randomized)
    reg = jnp.maximum(penalty * (jnp.arange(1, probs.shape[-1] + 1) - k_reg), 0.0)
    ordered_scores = cumsum - ordered * u + reg
    inv = jnp.argsort(idx, axis=-1)
    return jnp.take_along_axis(ordered_scores, inv, -1)


def aps_quantile(probs, labels, alpha, correction="tu", **kw) -> jax.Array:
    return conformal_quantile(aps_scores(probs, labels, **kw), alpha, correction)


def aps_sets(probs, q_hat, **kw) -> jax.Array:
    """``{c : s(x, c) <= q_hat}``; an empty set falls back to the lowest-score class. bool [N, C]."""
    scores = aps_all_scores(probs, **kw)
    s = scores <= q_hat
    empty = ~s.any(-1, keepdims=True)
    fallback = jax.nn.one_hot(scores.argmin(-1), scores.shape[-1], dtype=bool)
    return s | (empty & fallback)


# ----------------------------------------------------------------------------- metrics
def coverage_rate(sets, labels, *, average: str = "micro", num_classes: int | None = None) -> jax.Array:
    """TU ``CoverageRate``: fraction of samples whose label is in its set.

    ``sets``: [N, C] bool, or TU's normalised set indicator (nonzero = in the set).
    ``average="macro"``: mean of per-class coverages (classes absent from ``labels`` count 0,
    as with torchmetrics' ``_safe_divide``). ``labels`` [N] must lie in ``[0, C)`` for both averages and
    ``num_classes`` (an int >= 2, as TU requires) must equal C; otherwise ``ValueError`` (``TypeError``
    for a non-int ``num_classes``). TU raises on such labels too (an index error).
    """
    if average not in ("macro", "micro"):
        raise ValueError("average must be either 'macro' or 'micro'.")
    sets = jnp.asarray(sets)
    if sets.ndim != 2:
        raise ValueError(f"`sets` must be [N, C], got shape {sets.shape}")
    c = sets.shape[-1]
    if num_classes is not None:  # TU: an integer larger than 1; the sets must have that many columns
        check_int(num_classes, "num_classes", 2)
        if num_classes != c:
            raise ValueError(f"`num_classes` is {num_classes} but `sets` has {c} columns")
    labels = check_labels(labels, sets.shape[0], c)  # micro and macro alike (TU indexes preds[i, y_i])
    covered = jnp.take_along_axis(sets, labels[:, None], -1)[:, 0] != 0
    if average == "micro":
        return covered.mean(dtype=jnp.float32)
    hit = jnp.zeros(c).at[labels].add(covered.astype(jnp.float32))
    tot = jnp.zeros(c).at[labels].add(1.0)
    return jnp.where(tot > 0, hit / jnp.where(tot > 0, tot, 1.0), 0.0).mean()


def set_size(sets, reduction: str = "mean") -> jax.Array:
    """TU ``SetSize``: number of classes in each set (mean / sum / none)."""
    sizes = (jnp.asarray(sets) != 0).sum(-1)
    if reduction == "mean":
        return sizes.mean(dtype=jnp.float32)
    if reduction == "sum":
        return sizes.sum()
    if reduction in ("none", None):
        return sizes
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")


# ----------------------------------------------------------------------------- one-call API
_DEFAULT_TS = {"thr": True, "aps": True, "raps": False}


def _check_raps(penalty, regularization_rank) -> None:
    """TU's RAPS checks: a non-int rank is a TypeError; a rank < 1 or a bad penalty a ValueError."""
    if not (isinstance(penalty, (int, float)) and math.isfinite(penalty) and penalty >= 0):
        raise ValueError(f"penalty should be finite and non-negative. Got {penalty=}.")
    if isinstance(regularization_rank, bool) or not isinstance(regularization_rank, int):
        raise TypeError(f"regularization_rank should be an integer. Got {regularization_rank=}.")
    if regularization_rank < 1:
        raise ValueError(f"regularization_rank should be strictly positive. Got {regularization_rank=}.")


def _check_ts(ts_init_val, ts_lr, ts_max_iter) -> None:
    check_real(ts_init_val, "ts_init_val", low=0.0, low_open=True)
    check_real(ts_lr, "ts_lr", low=0.0, low_open=True)
    check_int(ts_max_iter, "ts_max_iter", 1)


def conformal_fit(
    logits,
    labels,
    *,
    method: str = "thr",
    alpha: float = 0.1,
    correction: str = "tu",
    enable_ts: bool | None = None,
    ts_init_val: float = 1.0,
    ts_lr: float = 0.1,
    ts_max_iter: int = 100,
    randomized: bool = True,
    penalty: float = 0.1,
    regularization_rank: int = 1,
    key=None,
    noise=None,
) -> dict:
    """Fit TU's ``ConformalCls{THR,APS,RAPS}`` on calibration logits [N, C] and labels [N].

    Returns a dict with ``q_hat``, ``num_classes``, the method settings and, with ``enable_ts``, the fitted
    ``temperature`` params (TU fits TS on the same calibration data first).
    """
    method = method.lower()
    if method not in _DEFAULT_TS:
        raise ValueError(f"method must be 'thr', 'aps' or 'raps'; got {method!r}")
    _check_alpha(alpha)
    if method == "raps":
        _check_raps(penalty, regularization_rank)
    ts = _DEFAULT_TS[method] if enable_ts is None else enable_ts
    if ts:  # named here, before temperature_fit would report them as its own `lr` / `max_iter`
        _check_ts(ts_init_val, ts_lr, ts_max_iter)
    logits = finite_logits(logits)
    labels = check_labels(labels, logits.shape[0], logits.shape[1])
    params = {
        "num_classes": int(logits.shape[1]),
        "method": method,
        "alpha": alpha,
        "correction": correction,
        "randomized": randomized,
        "penalty": float(penalty) if method == "raps" else 0.0,
        "k_reg": int(regularization_rank),
        "temperature": None,
    }
    if ts:
        params["temperature"] = temperature_fit(
            logits, labels, init_temperature=ts_init_val, lr=ts_lr, max_iter=ts_max_iter
        )
        logits = temperature_apply(params["temperature"], logits)
    probs = jax.nn.softmax(logits, -1)
    if method == "thr":
        params["q_hat"] = thr_quantile(probs, labels, alpha, correction)
    else:
        params["q_hat"] = aps_quantile(
            probs, labels, alpha, correction, randomized=randomized, noise=noise, key=key,
            penalty=params["penalty"], k_reg=params["k_reg"],
        )
    return params


def conformal_predict(params: dict, logits, *, key=None, noise=None, normalize: bool = False):
    """Prediction sets for logits [N, C]: bool [N, C] (``normalize=True``: TU's output,
    the indicator divided by the set size). Raises ``ValueError`` for logits that are not [N, C] with
    the fitted class count, or hold NaN/inf."""
    logits = finite_logits(logits, num_classes=params.get("num_classes"))
    if params["temperature"] is not None:
        logits = temperature_apply(params["temperature"], logits)
    probs = jax.nn.softmax(logits, -1)
    if params["method"] == "thr":
        sets = thr_sets(probs, params["q_hat"])
    else:
        sets = aps_sets(
            probs, params["q_hat"], randomized=params["randomized"], noise=noise, key=key,
            penalty=params["penalty"], k_reg=params["k_reg"],
        )
    if normalize:
        f = sets.astype(jnp.float32)
        return f / f.sum(-1, keepdims=True)
    return sets
