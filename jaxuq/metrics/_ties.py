"""Sorting and tie groups shared by every rank-based metric (AURC family, aECE, ROC/PR, SCOD).

A *tie group* is a maximal run of equal keys in sorted order. Rank-based metrics are made
order-invariant by treating a tie group as one threshold: a cumulative sum along the sorted order
is known exactly at group ends, and inside a group it is linearly interpolated between the value
before the group and the value at its end. For a linear functional of the curve (AURC, AUGRC,
Risk@Cov) this is exactly the expectation over uniformly random tie-breaking; on tie-free input
it is the plain cumulative sum.

Everything here is jittable with static shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["group_mean", "sort_desc", "tie_groups", "tied_cumsum"]

F32 = jnp.float32


def sort_desc(keys: jax.Array, *values: jax.Array) -> tuple[jax.Array, ...]:
    """Sort float32 ``keys [N]`` descending, carrying ``values`` (each ``[N]``) along.

    One multi-operand sort (no argsort + gathers). Order inside a tie group is unspecified:
    callers must be tie-aware (see :func:`tied_cumsum`).
    Returns ``(keys_sorted, *values_sorted)``.
    """
    out = lax.sort((-keys.astype(F32), *values), num_keys=1, is_stable=False)
    return (-out[0], *out[1:])


def tie_groups(keys_sorted: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(start, end)`` int32 ``[N]``: first and last sorted index of each position's tie group."""
    n = keys_sorted.shape[0]
    idx = jnp.arange(n, dtype=jnp.int32)
    change = keys_sorted[1:] != keys_sorted[:-1]
    is_first = jnp.concatenate([jnp.ones((1,), bool), change])
    is_last = jnp.concatenate([change, jnp.ones((1,), bool)])
    start = lax.cummax(jnp.where(is_first, idx, 0))
    end = lax.cummin(jnp.where(is_last, idx, n - 1), reverse=True)
    return start, end


def _group_totals(cum: jax.Array, start: jax.Array, end: jax.Array):
    cum = cum.astype(F32)
    c_before = jnp.where(start > 0, cum[jnp.maximum(start - 1, 0)], 0.0)
    return c_before, cum[end], (end - start + 1).astype(F32)


def tied_cumsum(cum: jax.Array, start: jax.Array, end: jax.Array) -> jax.Array:
    """Tie-aware cumulative sum ``[N]`` from the plain one ``cum [N]`` along the sorted order.

    ``cum[end]`` (the group's total) is exact at group ends; inside a group the value is linearly
    interpolated from the value before the group. Equal to ``cum`` where there are no ties.
    """
    c_before, c_end, size = _group_totals(cum, start, end)
    remaining = (end - jnp.arange(cum.shape[0], dtype=jnp.int32)).astype(F32)
    return c_end - remaining * (c_end - c_before) / size


def group_mean(values_sorted: jax.Array, start: jax.Array, end: jax.Array) -> jax.Array:
    """``[N]``: the mean of ``values_sorted`` over each position's tie group (the values themselves
    where there are no ties, exactly for integer-valued inputs such as 0/1 correctness)."""
    c_before, c_end, size = _group_totals(jnp.cumsum(values_sorted.astype(F32)), start, end)
    return (c_end - c_before) / size
