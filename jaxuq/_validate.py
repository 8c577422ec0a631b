"""Host-side input validation shared by the calibration fits/applies (and usable by any public API).

Same conventions as :mod:`jaxuq.metrics._checks` (messages name the argument, its shape and what was
expected); labels go through :func:`jaxuq.metrics._checks.check_labels`, which checks them in their
original dtype, before any cast to int32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_int", "check_real", "finite_logits", "is_traced"]


def is_traced(x) -> bool:
    """True inside ``jit``/``vmap``/``grad``: values are unknown, only shapes can be checked."""
    return isinstance(x, jax.core.Tracer)


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


def check_int(value, name: str, *, minimum: int | None = None) -> int:
    """A Python/numpy integer (not a bool) ``>= minimum``: TypeError / ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


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
