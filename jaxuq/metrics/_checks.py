"""Input validation shared by the public metric wrappers.

Every public metric validates its (concrete) inputs once, then calls a jitted core. Value checks
(NaN/inf, ranges, probabilities summing to one, label ranges) are reduced on device by one small
jitted function and fetched with a single device->host transfer, so validation costs one sync,
never a per-element Python loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

#: absolute tolerance on |sum_c p_c - 1| for probability inputs.
PROB_SUM_ATOL = 1e-3


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def as_array(x, name: str, ndims: tuple[int, ...], *, floating: bool = True) -> jax.Array:
    """Convert ``x`` to a jax array and check its rank and that it is not empty."""
    if x is None:
        raise ValueError(f"`{name}` is required, got None")
    arr = jnp.asarray(x)
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
    x = x.astype(jnp.float32)
    finite = jnp.all(jnp.isfinite(x))
    lo = jnp.min(jnp.where(jnp.isfinite(x), x, jnp.inf))
    hi = jnp.max(jnp.where(jnp.isfinite(x), x, -jnp.inf))
    dev = jnp.max(jnp.abs(jnp.sum(x, axis=-1) - 1.0)) if check_sum else jnp.float32(0)
    return jnp.stack([finite.astype(jnp.float32), lo, hi, dev])


@jax.jit
def _int_stats(x):
    return jnp.stack([jnp.min(x), jnp.max(x)])


def check_probs(probs, name: str = "probs", ndims: tuple[int, ...] = (2,)) -> jax.Array:
    """Validate probabilities ``[..., C]``: finite, in [0, 1], rows summing to 1 (atol 1e-3)."""
    arr = as_array(probs, name, ndims)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(f"`{name}` must be floating point probabilities, got dtype {arr.dtype}")
    finite, lo, hi, dev = np.asarray(_float_stats(arr, True))
    if finite < 1:
        raise ValueError(f"`{name}` (shape {arr.shape}) contains NaN or inf")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"`{name}` (shape {arr.shape}) must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g}); "
            "pass probabilities, not logits"
        )
    if dev > PROB_SUM_ATOL:
        raise ValueError(
            f"`{name}` (shape {arr.shape}) rows must sum to 1 along the last axis "
            f"(max |sum - 1| = {dev:.3g} > {PROB_SUM_ATOL})"
        )
    return arr


def check_scores(scores, name: str = "scores") -> jax.Array:
    """Validate a finite 1-D score vector ``[N]``."""
    arr = as_array(scores, name, (1,))
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise ValueError(f"`{name}` must be numeric, got dtype {arr.dtype}")
    finite = np.asarray(_float_stats(arr, False))[0]
    if finite < 1:
        raise ValueError(f"`{name}` (shape {arr.shape}) contains NaN or inf")
    return arr


def check_labels(labels, n: int, num_classes: int, name: str = "labels") -> jax.Array:
    """Validate integer class labels ``[N]`` in ``[0, num_classes)``."""
    arr = as_array(labels, name, (1,), floating=False)
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise ValueError(f"`{name}` must hold integer class indices, got dtype {arr.dtype}")
    if arr.shape[0] != n:
        raise ValueError(f"`{name}` has shape {arr.shape}, expected ({n},) to match the predictions")
    lo, hi = (int(v) for v in np.asarray(_int_stats(arr)))
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"`{name}` values must lie in [0, {num_classes}) for {num_classes} classes, "
            f"got range [{lo}, {hi}]"
        )
    return arr


def check_binary(is_pos, n: int, name: str = "is_ood", *, both_classes: bool = True) -> jax.Array:
    """Validate a 0/1 (or bool) label vector ``[N]``; optionally require both classes present."""
    arr = as_array(is_pos, name, (1,), floating=False)
    if arr.shape[0] != n:
        raise ValueError(f"`{name}` has shape {arr.shape}, expected ({n},) to match the scores")
    if arr.dtype == jnp.bool_:
        arr = arr.astype(jnp.int32)
    elif jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(f"`{name}` must be bool or integer 0/1, got dtype {arr.dtype}")
    stats = np.asarray(_int_stats(arr))
    lo, hi = int(stats[0]), int(stats[1])
    if lo < 0 or hi > 1:
        raise ValueError(f"`{name}` must contain only 0 and 1, got range [{lo}, {hi}]")
    if both_classes and lo == hi:
        which = "OOD/positive (1)" if lo == 0 else "ID/negative (0)"
        raise ValueError(f"`{name}` (shape {arr.shape}) contains a single class: no {which} samples")
    return arr


def check_same_len(name_a: str, a, name_b: str, b) -> None:
    if np.shape(a)[0] != np.shape(b)[0]:
        raise ValueError(
            f"`{name_a}` has shape {_shape(a)} and `{name_b}` has shape {_shape(b)}: "
            "their first dimensions (N) must match"
        )


def check_fraction(value: float, name: str, *, open_left: bool = False) -> float:
    value = float(value)
    ok = (0.0 < value <= 1.0) if open_left else (0.0 <= value <= 1.0)
    if not ok:
        rng = "(0, 1]" if open_left else "[0, 1]"
        raise ValueError(f"`{name}` must be in {rng}, got {value}")
    return value
