"""Batch formats: TU's ``format_batch_fn`` hooks (``torch_uncertainty/transforms/batch.py``).

A batch format is a frozen (hashable) dataclass called inside the jitted train step as
``fmt(x, y, key) -> (x, y)`` on the preprocessed batch; ``key`` is a typed PRNG key for formats
that draw random numbers (deterministic formats ignore it).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

__all__ = ["RepeatTarget", "repeat_target"]


def repeat_target(y, num_members: int):
    """TU ``RepeatTarget(M)``: tiles targets ``[B, ...] -> [M*B, ...]`` (``y_0..y_{B-1}`` M times)."""
    return jnp.tile(y, (num_members,) + (1,) * (y.ndim - 1))


@dataclasses.dataclass(frozen=True)
class RepeatTarget:
    """TU's ``RepeatTarget(M)``: labels ``[B] -> [M*B]`` (member-major), for models whose output is
    ``[(M B), C]`` (Packed-Ensembles)."""

    num_members: int

    def __call__(self, x, y, key=None):
        return x, repeat_target(y, self.num_members)
