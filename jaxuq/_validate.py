"""Host-side input validation shared by the calibration fits/applies (and usable by any public API).

Same conventions as :mod:`jaxuq.metrics._checks` (messages name the argument, its shape and what was
expected), but the label check runs on the *original* numpy dtype, before any cast to JAX's default
int32: int64 labels >= 2**31 would otherwise wrap silently, float labels be truncated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["class_labels", "finite_logits", "is_traced"]


def is_traced(x) -> bool:
    """True inside ``jit``/``vmap``/``grad``: values are unknown, only shapes can be checked."""
    return isinstance(x, jax.core.Tracer)


def class_labels(labels, n: int, num_classes: int, name: str = "labels") -> jax.Array:
    """Integer class indices ``[N]`` in ``[0, num_classes)`` -> int32 ``[N]``; ``ValueError`` otherwise.

    Checked before any cast: floats (even whole-number ones), bools, out-of-range and int64 values
    beyond int32 are refused instead of truncated or wrapped.
    """
    if is_traced(labels):
        if labels.shape != (n,) or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"`{name}` must be integer [{n}], got {labels.dtype} {labels.shape}")
        return labels.astype(jnp.int32)
    arr = np.asarray(labels)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"`{name}` must hold integer class indices, got dtype {arr.dtype} (shape {arr.shape}); "
            "convert with labels.astype(np.int64) after checking the values are whole numbers"
        )
    if arr.shape != (n,):
        raise ValueError(f"`{name}` has shape {arr.shape}, expected ({n},) to match the logits")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"`{name}` values must lie in [0, {num_classes}) for {num_classes} classes, "
            f"got range [{arr.min()}, {arr.max()}]"
        )
    return jnp.asarray(arr.astype(np.int32))


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
