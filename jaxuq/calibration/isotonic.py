"""Isotonic regression calibration with torch-uncertainty 0.13.0's semantics (``IsotonicRegressionScaler``).

TU fits one scikit-learn ``IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")`` per class
(one-vs-rest; binary: one) on the float32 probabilities and predicts by linear interpolation between
the fitted thresholds. jaxuq reproduces scikit-learn 1.6's algorithm step by step in float32 instead
of depending on it: sort by ``(x, y)``; merge runs of ``x`` closer than float32's resolution (1e-6) to
their first value (sklearn's ``_make_unique``: the run's weighted mean target); pool adjacent
violators (``scipy.optimize.isotonic_regression``, which sklearn itself calls with scipy >= 1.12;
scipy is a jaxuq dependency); clip to [0, 1]; drop the interior points of constant runs. The fit runs
on host (its sizes depend on the data); the thresholds are padded to one ``[C, K]`` array so that
:func:`isotonic_apply` is a jittable float32 interpolation, the same arithmetic as scipy's
``interp1d`` (``slope * (x - x_lo) + y_lo``). The fitted thresholds and per-class outputs equal
scikit-learn's bit for bit (``tests/test_calibration_binning.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import isotonic_regression as _pava

from jaxuq.calibration.binning import (
    check_fit_probs,
    class_count,
    logits_to_probs,
    one_vs_rest,
    renormalise,
    through_probs,
)
from jaxuq.calibration.reductions import numpy_sum

__all__ = ["isotonic_fit", "isotonic_apply", "isotonic_fit_probs", "isotonic_apply_probs"]

F32 = np.float32
_RESOLUTION = F32(np.finfo(F32).resolution)  # 1e-6: sklearn's merge tolerance for float32 inputs


def _group_starts(x: np.ndarray) -> np.ndarray:
    """Where sklearn's ``_make_unique`` starts a group in sorted float32 ``x``: at ``j`` when
    ``x[j] - first >= 1e-6`` in float32, ``first`` being the current group's first value. A gap of
    1e-6 to the previous point always starts one (float32 subtraction is monotone), so only runs of
    closer points are walked, by bisection (the test is monotone in ``j``)."""
    n = x.shape[0]
    cuts = np.concatenate([[0], np.flatnonzero((x[1:] - x[:-1]) >= _RESOLUTION) + 1, [n]])
    starts = [cuts[:-1][np.diff(cuts) == 1]]  # one-point runs: a group each
    for a, b in zip(cuts[:-1][np.diff(cuts) > 1], cuts[1:][np.diff(cuts) > 1]):
        s, run = int(a), []
        while s < b:
            run.append(s)
            lo, hi = s + 1, int(b)
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if F32(x[mid] - x[s]) >= _RESOLUTION else (mid + 1, hi)
            s = lo
        starts.append(np.asarray(run, np.int64))
    return np.sort(np.concatenate(starts))


def _make_unique(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sklearn ``_make_unique`` (unit weights, float32): each group (:func:`_group_starts`) keeps its
    first ``x``, its count and its mean target."""
    starts = _group_starts(x)
    counts = np.diff(np.append(starts, x.shape[0])).astype(F32)
    sums = np.add.reduceat(y.astype(np.float64), starts).astype(F32)  # 0/1 targets: exact
    return x[starts], sums / counts, counts


def _fit_one(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sklearn ``IsotonicRegression(y_min=0, y_max=1).fit(x, y)``'s ``(X_thresholds_, y_thresholds_)``."""
    order = np.lexsort((y, x))
    ux, uy, uw = _make_unique(x[order], y[order])
    fitted = np.asarray(_pava(uy, weights=uw, increasing=True).x, dtype=F32)
    np.clip(fitted, F32(0), F32(1), out=fitted)
    keep = np.ones(fitted.shape[0], bool)
    keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    return ux[keep], fitted[keep]


def isotonic_fit_probs(probs, labels) -> dict:
    """Fit TU's ``IsotonicRegressionScaler`` on probabilities (host; numpy + scipy).

    Args:
      probs: ``[N, C]`` probabilities, or binary ``[N]`` positive-class probabilities.
      labels: ``[N]`` int class indices (binary: 0/1).
    Returns:
      ``{"x": [C, K], "y": [C, K], "size": [C]}``: class ``c``'s thresholds are ``x[c, :size[c]]``
      (increasing) with values ``y[c, :size[c]]``; padding repeats the last threshold. Binary: no class
      axis (``x``, ``y`` ``[K]``, ``size`` scalar).
    """
    p, y, k = check_fit_probs(probs, labels)
    cols, targets = (np.asarray(a) for a in one_vs_rest(p, y, k))
    fits = [_fit_one(cols[:, c], targets[:, c]) for c in range(cols.shape[1])]
    width = max(fx.shape[0] for fx, _ in fits)
    pad = lambda a: np.pad(a, (0, width - a.shape[0]), mode="edge")  # noqa: E731
    out = {
        "x": jnp.asarray(np.stack([pad(fx) for fx, _ in fits])),
        "y": jnp.asarray(np.stack([pad(fy) for _, fy in fits])),
        "size": jnp.asarray([fx.shape[0] for fx, _ in fits], jnp.int32),
    }
    return jax.tree.map(lambda a: a[0], out) if k == 1 else out


def _interp(t: jax.Array, x: jax.Array, y: jax.Array, size: jax.Array) -> jax.Array:
    """sklearn ``predict`` for one class: clip to ``[x_0, x_{size-1}]``, then scipy ``interp1d``
    ``_call_linear`` in float32 (a single threshold: its value everywhere)."""
    t = jnp.clip(t, x[0], x[size - 1])
    hi = jnp.clip(jnp.searchsorted(x, t, side="left"), 1, jnp.maximum(size - 1, 1))
    x_lo, x_hi, y_lo, y_hi = x[hi - 1], x[hi], y[hi - 1], y[hi]
    slope = (y_hi - y_lo) / (x_hi - x_lo)
    return jnp.where(size == 1, y[0], slope * (t - x_lo) + y_lo)


def isotonic_apply_probs(params: dict, probs) -> jax.Array:
    """Calibrated probabilities: per-class interpolation, multi-class rows renormalised
    (``/ (sum + 1e-12)`` as TU). ``[N, C]`` -> ``[N, C]``; binary ``[N]`` -> ``[N]``. Jittable."""
    x, y, size = (jnp.asarray(params[k]) for k in ("x", "y", "size"))
    p = jnp.asarray(probs, jnp.float32)
    if x.ndim == 1:
        return _interp(p, x, y, size)
    cols = jax.vmap(_interp, in_axes=(1, 0, 0, 0), out_axes=1)(p, x, y, size)
    return renormalise(cols, 1e-12, numpy_sum)  # TU normalises in numpy


def isotonic_fit(logits, labels) -> dict:
    """Fit TU's ``IsotonicRegressionScaler``: softmax (binary ``[N]``/``[N, 1]``: sigmoid) of ``logits``
    ``[N, C]``, then :func:`isotonic_fit_probs`. ``labels``: ``[N]`` int."""
    return isotonic_fit_probs(logits_to_probs(logits), labels)


def isotonic_apply(params: dict, logits, *, eps: float = 1e-6) -> jax.Array:
    """TU's ``IsotonicRegressionScaler.forward``: calibrated pseudo-logits ``[N, C]`` (``log p``; binary:
    ``logit p`` in the logits' shape), probabilities clamped to ``[eps, 1 - eps]``. Jittable."""
    return through_probs(isotonic_apply_probs, params, logits, class_count(jnp.asarray(params["x"]), 1), eps)
