"""Batch formats: TU's ``format_batch_fn`` hooks (``torch_uncertainty/transforms/batch.py``).

A batch format is a frozen (hashable) dataclass called inside the jitted train step as
``fmt(x, y, key) -> (x, y)`` on the preprocessed batch; ``key`` is a typed PRNG key for formats
that draw random numbers (deterministic formats ignore it).

- :class:`RepeatTarget`: targets tiled M times (Packed-Ensembles; BatchEnsemble/Masksembles models
  that repeat their training inputs, ``repeat_strategy="legacy"`` / ``repeat_training_inputs=True``).
- :class:`MIMOBatchFormat`: M shuffled copies of the batch for MIMO training; its permutations are
  drawn from ``key``, or given (``permutations=``) so that TU can be fed the very same draws.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxuq.nn.batch_ensemble import repeat_inputs

__all__ = ["MIMOBatchFormat", "RepeatTarget", "mimo_batch", "repeat_target"]


def repeat_target(y, num_members: int):
    """TU ``RepeatTarget(M)``: tiles targets ``[B, ...] -> [M*B, ...]`` (``y_0..y_{B-1}`` M times)."""
    return repeat_inputs(y, num_members)


@dataclasses.dataclass(frozen=True)
class RepeatTarget:
    """TU's ``RepeatTarget(M)``: labels ``[B] -> [M*B]`` (member-major), for models whose output is
    ``[(M B), C]`` (Packed-Ensembles)."""

    num_members: int

    def __call__(self, x, y, key=None):
        return x, repeat_target(y, self.num_members)


def mimo_batch(x, y, num_estimators: int, rho: float, batch_repeat: int, main_perm, member_perms):
    """TU ``MIMOBatchFormat.forward`` with its ``torch.randperm`` draws given.

    ``x [B, ...]``, ``y [B]``; ``main_perm [B*R]`` (TU's first draw, a permutation of ``range(B*R)``,
    R = ``batch_repeat``); ``member_perms [M, T]`` (TU's next M draws, permutations of ``range(T)``,
    ``T = int(B*R*(1 - rho))``). Returns ``x [(M B R), ...]``, ``y [(M B R)]`` member-major: member
    ``m``'s rows are the rows ``main[:T][member_perms[m]]`` then ``main[T:]`` of the R-times tiled batch,
    ``main = tile(arange(B), R)[main_perm]``.
    """
    n = x.shape[0] * batch_repeat
    t = int(n * (1.0 - rho))
    main = jnp.tile(jnp.arange(x.shape[0]), batch_repeat)[jnp.asarray(main_perm)]
    head = main[:t][jnp.asarray(member_perms)]  # [M, T]
    idx = jnp.concatenate([head, jnp.broadcast_to(main[t:], (num_estimators, n - t))], axis=1).reshape(-1)
    return x[idx], y[idx]


@dataclasses.dataclass(frozen=True)
class MIMOBatchFormat:
    """TU's ``MIMOBatchFormat(num_estimators, rho=0.0, batch_repeat=1)``: ``x [B, ...], y [B] ->
    x [(M B R), ...], y [(M B R)]`` (see :func:`mimo_batch`). The M + 1 permutations are drawn from
    ``key``, unless ``permutations = (main_perm, member_perm_0, ..., member_perm_{M-1})`` (tuples of
    ints) fixes them: the injection point for exact parity with TU's ``torch.randperm`` draws."""

    num_estimators: int
    rho: float = 0.0
    batch_repeat: int = 1
    permutations: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self):
        for name in ("num_estimators", "batch_repeat"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"MIMOBatchFormat: `{name}` must be an int, got {type(v).__name__}")
            if v <= 0:
                raise ValueError(f"MIMOBatchFormat: `{name}` must be greater than 0, got {v}")
        if isinstance(self.rho, bool) or not isinstance(self.rho, int | float):
            raise TypeError(f"MIMOBatchFormat: `rho` must be a number, got {type(self.rho).__name__}")
        if not (math.isfinite(self.rho) and 0.0 <= self.rho <= 1.0):
            raise ValueError(f"MIMOBatchFormat: `rho` must be between 0 and 1, got {self.rho}")
        if self.permutations is not None and len(self.permutations) != self.num_estimators + 1:
            raise ValueError(f"MIMOBatchFormat: `permutations` must hold 1 + num_estimators = "
                             f"{self.num_estimators + 1} permutations, got {len(self.permutations)}")

    def draws(self, key, batch: int):
        """``(main_perm [B*R], member_perms [M, T])`` for a batch of ``batch`` rows."""
        n = batch * self.batch_repeat
        t = int(n * (1.0 - self.rho))
        if self.permutations is not None:
            main, *members = self.permutations
            if len(main) != n or any(len(p) != t for p in members):
                raise ValueError(f"MIMOBatchFormat: `permutations` must have lengths {n} (main) and {t} "
                                 f"(members) for a batch of {batch}")
            return jnp.asarray(main), jnp.asarray(members, dtype=jnp.int32).reshape(self.num_estimators, t)
        k_main, k_members = jax.random.split(key)
        keys = jax.random.split(k_members, self.num_estimators)
        members = jax.vmap(lambda k: jax.random.permutation(k, t))(keys) if t else \
            jnp.zeros((self.num_estimators, 0), jnp.int32)
        return jax.random.permutation(k_main, n), members

    def __call__(self, x, y, key=None):
        main, members = self.draws(key, x.shape[0])
        return mimo_batch(x, y, self.num_estimators, self.rho, self.batch_repeat, main, members)
