"""Host-side input validation shared by the calibration fits/applies (and usable by any public API).

Same conventions as :mod:`jaxuq.metrics._checks` (messages name the argument, its shape and what was
expected); labels go through :func:`jaxuq.metrics._checks.check_labels`, which checks them in their
original dtype, before any cast to int32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["finite_logits", "is_traced", "check_int", "check_float", "check_choice"]


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


def check_float(value, name: str, *, positive: bool = False, nonnegative: bool = False,
                at_most: float | None = None) -> float:
    """``value`` as a finite float: a ``TypeError`` for a non-number, a ``ValueError`` for NaN/inf or a
    value out of range (``positive``: > 0; ``nonnegative``: >= 0; ``at_most``: <= it)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"`{name}` must be > 0, got {value}")
    if nonnegative and not value >= 0:
        raise ValueError(f"`{name}` must be >= 0, got {value}")
    if at_most is not None and value > at_most:
        raise ValueError(f"`{name}` must be <= {at_most}, got {value}")
    return value


def check_choice(value, name: str, choices: tuple) -> object:
    """``value`` if it is one of ``choices`` (compared by equality), else a ``ValueError`` listing them."""
    if not isinstance(value, str | type(None)) or value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")
    return value
