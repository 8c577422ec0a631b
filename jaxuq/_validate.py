"""The one input-validation module (metrics, calibration, evaluation, training, OOD detectors).

Messages name the argument, its shape and what was expected. Value checks (NaN/inf, ranges,
probabilities summing to one, label ranges) are reduced on device by small jitted functions; the
results of all the checks of one call are fetched together with a single device->host transfer
(pass a ``pending`` list and call :func:`resolve` once), never a per-element Python loop. Host
(numpy) integer labels are range-checked on host in their ORIGINAL dtype, *before* they are
converted, so int64 values >= 2**31 cannot wrap silently into a valid int32 class.

Under ``jax.jit`` / ``vmap`` / ``grad`` the inputs are tracers: the shape and dtype checks still
run, the value checks are skipped (they need concrete values). Depends on jax/numpy only, so
``jaxuq.metrics`` may import it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

#: absolute tolerance on |sum_c p_c - 1| for float32/float64 probabilities; lower-precision inputs
#: (bfloat16, float16) get ``2 * eps`` of their dtype (see :func:`prob_sum_atol`).
PROB_SUM_ATOL = 1e-3

Pending = list  # [(device stats, report(host stats) -> None)], resolved by `resolve`


def is_traced(x) -> bool:
    """True inside ``jit``/``vmap``/``grad``: values are unknown, only shapes can be checked."""
    return isinstance(x, jax.core.Tracer)


def prob_sum_atol(dtype) -> float:
    """Tolerance on row sums: ``max(1e-3, 2 * eps(dtype))`` (bfloat16: 0.0156, float16: 0.002)."""
    return max(PROB_SUM_ATOL, 2.0 * float(jnp.finfo(dtype).eps))


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def resolve(pending: Pending) -> None:
    """Fetch every deferred check's statistics in one transfer and raise the first failure."""
    if pending:
        host = jax.device_get([stats for stats, _ in pending])
        for h, (_, report) in zip(host, pending):
            report(np.asarray(h))
        pending.clear()


def _defer(pending: Pending | None, stats, report: Callable) -> None:
    if pending is None:
        resolve([(stats, report)])
    else:
        pending.append((stats, report))


def as_array(x, name: str, ndims: tuple[int, ...], *, floating: bool = True) -> jax.Array:
    """Convert ``x`` to a jax array and check its rank and that it is not empty."""
    if x is None:
        raise ValueError(f"`{name}` is required, got None")
    arr = x if isinstance(x, jax.Array) else jnp.asarray(x)
    if arr.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"`{name}` must be {want}, got shape {arr.shape} ({arr.ndim}-D)")
    if arr.size == 0:
        raise ValueError(f"`{name}` is empty (shape {arr.shape})")
    if floating and not jnp.issubdtype(arr.dtype, jnp.floating) and arr.dtype != jnp.bool_:
        if not jnp.issubdtype(arr.dtype, jnp.integer):
            raise ValueError(f"`{name}` must be numeric, got dtype {arr.dtype}")
    return arr


@functools.partial(jax.jit, static_argnames=("check_sum",))
def _float_stats(x, check_sum: bool):
    # min/max propagate NaN and expose +-inf: finite iff both are (one pass, no isfinite mask)
    x = x.astype(jnp.float32)
    lo, hi = jnp.min(x), jnp.max(x)
    finite = jnp.isfinite(lo) & jnp.isfinite(hi)
    dev = jnp.max(jnp.abs(jnp.sum(x, axis=-1) - 1.0)) if check_sum else jnp.float32(0)
    return jnp.stack([finite.astype(jnp.float32), lo, hi, dev])


@jax.jit
def _int_stats(x):
    return jnp.stack([jnp.min(x), jnp.max(x)])


def check_probs(probs, name: str = "probs", ndims: tuple[int, ...] = (2,), pending: Pending | None = None):
    """Validate probabilities ``[..., C]``: finite, in [0, 1], rows summing to 1 (atol
    :func:`prob_sum_atol` of the dtype)."""
    arr = as_array(probs, name, ndims)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(f"`{name}` must be floating point probabilities, got dtype {arr.dtype}")
    if is_traced(arr):
        return arr
    atol = prob_sum_atol(arr.dtype)

    def report(stats):
        finite, lo, hi, dev = stats
        if finite < 1:
            raise ValueError(f"`{name}` (shape {arr.shape}) contains NaN or inf")
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"`{name}` (shape {arr.shape}) must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g}); "
                "pass probabilities, not logits"
            )
        if dev > atol:
            raise ValueError(
                f"`{name}` (shape {arr.shape}, {arr.dtype}) rows must sum to 1 along the last axis "
                f"(max |sum - 1| = {dev:.3g} > {atol:.3g})"
            )

    _defer(pending, _float_stats(arr, True), report)
    return arr


def check_scores(scores, name: str = "scores", pending: Pending | None = None) -> jax.Array:
    """Validate a finite 1-D score vector ``[N]``."""
    arr = as_array(scores, name, (1,))
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise ValueError(f"`{name}` must be numeric, got dtype {arr.dtype}")
    if is_traced(arr):
        return arr

    def report(stats):
        if stats[0] < 1:
            raise ValueError(f"`{name}` (shape {arr.shape}) contains NaN or inf")

    _defer(pending, _float_stats(arr, False), report)
    return arr


def _integer_array(x, name: str, n: int, what: str, lo_ok: int, hi_ok: int):
    """``x`` as an int32 jax array ``[n]``; host inputs are dtype- and range-checked on host first.

    Returns ``(arr, host_range)``: ``host_range`` is ``(min, max)`` for host inputs (already
    range-checked, naming the offending value), None for device arrays."""
    if x is None:
        raise ValueError(f"`{name}` is required, got None")
    if isinstance(x, jax.Array):
        host = None
        dtype = x.dtype
    else:
        host = np.asarray(x)
        dtype = host.dtype
    if jnp.issubdtype(dtype, jnp.floating):
        vals = np.ravel(host) if host is not None else None
        where = ""
        if vals is not None and vals.size:
            bad = np.nonzero(vals != np.round(vals))[0]
            i = int(bad[0]) if bad.size else 0
            where = f" (e.g. value {vals[i].item()!r} at index {i})"
        raise ValueError(
            f"`{name}` must hold {what}, got dtype {dtype}{where}: floats are not truncated, "
            "cast them yourself (e.g. `labels.astype(int)`)"
        )
    if dtype != np.bool_ and not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"`{name}` must hold {what}, got dtype {dtype}")
    arr = as_array(x if host is None else host, name, (1,), floating=False)
    if arr.shape[0] != n:
        raise ValueError(f"`{name}` has shape {arr.shape}, expected ({n},) to match the predictions")
    if host is None:
        return arr.astype(jnp.int32) if arr.dtype == jnp.bool_ else arr, None
    host = np.ravel(host)
    lo, hi = int(host.min()), int(host.max())
    _range_error(name, what, lo, hi, lo_ok, hi_ok, host)
    return jnp.asarray(host.astype(np.int32)), (lo, hi)


def _range_error(name, what, lo, hi, lo_ok, hi_ok, host=None):
    if lo >= lo_ok and hi <= hi_ok:
        return
    where = ""
    if host is not None:
        i = int(np.argmax((host < lo_ok) | (host > hi_ok)))
        where = f"; offending value {int(host[i])} at index {i} (dtype {host.dtype})"
    raise ValueError(
        f"`{name}` values must lie in [{lo_ok}, {hi_ok}] ({what}), got range [{lo}, {hi}]{where}"
    )


def _int_report(name: str, what: str, lo_ok: int, hi_ok: int, both_classes: bool = False):
    def report(stats):
        lo, hi = int(stats[0]), int(stats[1])
        _range_error(name, what, lo, hi, lo_ok, hi_ok)
        if both_classes and lo == hi:
            which = "OOD/positive (1)" if lo == 0 else "ID/negative (0)"
            raise ValueError(f"`{name}` contains a single class: no {which} samples")

    return report


def _check_integers(x, name, n, what, lo_ok, hi_ok, pending, both_classes=False) -> jax.Array:
    arr, host_range = _integer_array(x, name, n, what, lo_ok, hi_ok)
    report = _int_report(name, what, lo_ok, hi_ok, both_classes)
    if host_range is not None:
        report(host_range)
    elif not is_traced(arr):
        _defer(pending, _int_stats(arr), report)
    return arr


def check_labels(labels, n: int, num_classes: int, name: str = "labels", pending: Pending | None = None):
    """Validate integer class labels ``[N]`` in ``[0, num_classes)``; returns int32 ``[N]``."""
    what = f"integer class indices for {num_classes} classes"
    return _check_integers(labels, name, n, what, 0, num_classes - 1, pending)


def check_binary(
    is_pos, n: int, name: str = "is_ood", *, both_classes: bool = True, pending: Pending | None = None
):
    """Validate a 0/1 (or bool) label vector ``[N]``; optionally require both classes present.
    Returns int32 ``[N]``."""
    return _check_integers(is_pos, name, n, "values 0 and 1 (bool or integer)", 0, 1, pending, both_classes)


def probs_labels(probs, labels) -> tuple[jax.Array, jax.Array]:
    """Validate ``probs [N, C]`` and ``labels [N]`` together (one device->host transfer)."""
    pending: Pending = []
    probs = check_probs(probs, "probs", (2,), pending)
    labels = check_labels(labels, probs.shape[0], probs.shape[1], "labels", pending)
    resolve(pending)
    return probs, labels


def check_same_len(name_a: str, a, name_b: str, b) -> None:
    if np.shape(a)[0] != np.shape(b)[0]:
        raise ValueError(
            f"`{name_a}` has shape {_shape(a)} and `{name_b}` has shape {_shape(b)}: "
            "their first dimensions (N) must match"
        )


def check_fraction(value: float, name: str, *, open_left: bool = False) -> float:
    """A real number in [0, 1] (``open_left``: (0, 1]); a string or bool is a TypeError, never coerced."""
    value = check_real(value, name)
    ok = (0.0 < value <= 1.0) if open_left else (0.0 <= value <= 1.0)
    if not ok:
        rng = "(0, 1]" if open_left else "[0, 1]"
        raise ValueError(f"`{name}` must be in {rng}, got {value}")
    return value


def check_finite(x, what: str) -> None:
    """ValueError naming ``what`` if the host array ``x`` holds NaN or inf."""
    if not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"{what} contains NaN or inf values")


def finite_logits(logits, name: str = "logits", *, num_classes: int | None = None,
                  ndims: tuple[int, ...] | None = (2,)) -> jax.Array:
    """float32 logits of rank in ``ndims`` (``None``: any rank >= 1, ``[..., C]``) with ``num_classes``
    on the last axis (if given), finite (checked when concrete; under a trace only the shape)."""
    arr = jnp.asarray(logits, jnp.float32)
    if (arr.ndim not in ndims) if ndims is not None else arr.ndim < 1:
        want = " or ".join(f"{d}-D" for d in ndims) if ndims is not None else "at least 1-D"
        raise ValueError(f"`{name}` must be {want} ([N, C]), got shape {arr.shape}")
    if num_classes is not None and arr.shape[-1] != num_classes:
        raise ValueError(
            f"`{name}` has {arr.shape[-1]} classes (shape {arr.shape}), but the parameters were fitted "
            f"for {num_classes}"
        )
    if not is_traced(arr) and not bool(jnp.all(jnp.isfinite(arr))):
        raise ValueError(f"`{name}` (shape {arr.shape}) contains NaN or inf")
    return arr


# ----------------------------------------------------------------------------- training data (fit)
def fit_inputs(x, name: str, *, images: bool) -> np.ndarray:
    """Host training/eval inputs ``[N, ...]``. ``images`` (a ``Preprocess`` reads them): uint8
    ``[N, H, W, C]``. Otherwise any numeric dtype of rank >= 1: floats finite, as float32; integers
    within int32's range (checked in their own dtype), as int32 (uint8/int8/int16/uint16 kept)."""
    if not hasattr(x, "shape") and not isinstance(x, list | tuple):
        raise TypeError(f"{name} inputs must be an array [N, ...], got {type(x).__name__}")
    x = np.asarray(x)
    if images:
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(f"{name} images must be uint8 [N, H, W, C], got {x.dtype} {x.shape} (a "
                             "Preprocess reads uint8 images; preprocess=None takes inputs as they are)")
    elif x.ndim < 1 or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} inputs must be numeric [N, ...], got {x.dtype} {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{name} inputs are empty (shape {x.shape})")
    if np.issubdtype(x.dtype, np.floating):
        check_finite(x, f"{name} inputs")
        return x.astype(np.float32, copy=False)
    if x.dtype.itemsize >= 4 and x.dtype != np.int32:
        lo, hi = int(x.min()), int(x.max())
        if lo < -(2**31) or hi >= 2**31:
            raise ValueError(f"{name} inputs must fit int32, got range [{lo}, {hi}] (dtype {x.dtype})")
        return x.astype(np.int32)
    return x


def fit_targets(y, n: int, name: str, num_classes: int | None) -> np.ndarray:
    """Host targets: integer class labels ``[N]`` in ``[0, num_classes)``, range-checked in their
    ORIGINAL dtype (an int64 ``2**32`` is out of range, not class 0), as int32; or float regression
    targets ``[N]`` / ``[N, D]``, finite, as float32."""
    if not hasattr(y, "shape") and not isinstance(y, list | tuple):
        raise TypeError(f"{name} labels must be an array [N], got {type(y).__name__}")
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.floating):
        if y.shape[:1] != (n,) or y.ndim > 2:
            raise ValueError(f"{name} targets must have shape ({n},) or ({n}, D), got {y.shape}")
        check_finite(y, f"{name} targets")
        return y.astype(np.float32, copy=False)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} labels must be integers (class indices) or floats (regression targets), "
                         f"got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} labels must have shape ({n},), got {y.shape}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes)) if num_classes is not None else ()
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{name} labels must be in [0, {num_classes}) (the model's output width), got {y[i]} at "
            f"index {i} ({bad.size} out of range)"
        )
    return y.astype(np.int32)


# ----------------------------------------------------------------------------- settings (hyper-parameters)
def check_int(value, name: str, minimum: int | None = None) -> int:
    """``value`` as an int: a ``TypeError`` for a non-integer (bools and floats too, even ``15.0``), a
    ``ValueError`` below ``minimum``; both name the argument."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


def check_real(value, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (not a bool) in [low, high] (``*_open``: the bound excluded)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"`{name}` must be finite, got {v}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"`{name}` must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v >= high if high_open else v > high):
        raise ValueError(f"`{name}` must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def check_choice(value, name: str, choices: tuple) -> object:
    """``value`` if it is one of ``choices`` (compared by equality), else a ``ValueError`` listing them."""
    if not isinstance(value, str | type(None)) or value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")
    return value
