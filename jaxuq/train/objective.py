"""Training objectives: what ``train_step`` differentiates.

The simple case is a loss, ``loss_fn(outputs, targets) -> float32 scalar`` (``TrainConfig(loss_fn=...)``,
any :mod:`jaxuq.losses` function or frozen dataclass). A method that needs more than one plain forward
pass (a Bayesian ELBO: several forward samples with fresh noise keys plus a KL the layers ``sow``;
an evidential loss annealed over epochs) is an :class:`Objective` (``TrainConfig(objective=...)``)::

    loss, aux = objective(apply, params, x, y, ctx)

- ``apply(params, x, rngs=None) -> (outputs, collections)`` runs the model in train mode: float32
  outputs, the compute dtype applied, BatchNorm statistics threaded through successive calls (each
  call starts from the statistics the previous one left, as successive torch forwards do; call it
  sequentially, not under ``jax.vmap``, when the model has BatchNorm), and ``collections`` = the
  other mutable collections the layers ``sow`` into (e.g. ``{"losses": {...}}``). ``rngs=None``
  uses ``{"dropout": ctx.key}``.
- ``x``, ``y``: the step's preprocessed (and batch-formatted) inputs and targets.
- ``ctx``: a :class:`StepContext` (this step's key, step and steps per epoch; ``ctx.epoch``).
- ``aux``: a dict; ``aux["outputs"]`` (``[B, C]``), when present and the targets are integer
  classes, gives the step's ``correct`` count.

An objective is part of the compiled step, so it must be hashable: a frozen dataclass.

A loss that reads the step (TU's routine passes ``current_epoch`` to ``DECLoss``; ``ConflictualLoss``
draws a class per call) says so with the class attribute ``uses_step_context = True`` and is called
``loss_fn(outputs, targets, ctx=ctx)`` by :class:`LossObjective` and :class:`SampledLoss`
(:func:`call_loss`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

__all__ = ["LossObjective", "Objective", "SampledLoss", "StepContext", "call_loss"]


class StepContext(NamedTuple):
    """What an objective may read besides the batch: ``key`` (this step's dropout/noise key, typed),
    ``step`` (int32, the step being taken, 0-based) and ``steps_per_epoch`` (static int)."""

    key: jax.Array
    step: jax.Array
    steps_per_epoch: int

    @property
    def epoch(self) -> jax.Array:
        """The 0-based epoch of this step (int32)."""
        return self.step // self.steps_per_epoch


class Objective(Protocol):
    """``objective(apply, params, x, y, ctx) -> (loss float32 scalar, aux dict)`` (module doc)."""

    def __call__(self, apply: Callable, params: Any, x: jax.Array, y: jax.Array,
                 ctx: StepContext) -> tuple[jax.Array, dict]: ...


def call_loss(loss_fn: Callable, outputs, targets, ctx: StepContext) -> jax.Array:
    """``loss_fn(outputs, targets)``, or ``loss_fn(outputs, targets, ctx=ctx)`` for a loss with
    ``uses_step_context = True`` (module doc)."""
    if getattr(loss_fn, "uses_step_context", False):
        return loss_fn(outputs, targets, ctx=ctx)
    return loss_fn(outputs, targets)


@dataclasses.dataclass(frozen=True)
class LossObjective:
    """The default objective: one train-mode forward, ``loss_fn(outputs, targets)`` (:func:`call_loss`)."""

    loss_fn: Callable

    def __call__(self, apply, params, x, y, ctx):
        outputs, _ = apply(params, x)
        return call_loss(self.loss_fn, outputs, y, ctx), {"outputs": outputs}


@dataclasses.dataclass(frozen=True)
class SampledLoss:
    """The mean of ``loss_fn`` over ``num_samples`` train-mode forward passes, sample ``i`` with the
    key ``split(ctx.key, num_samples)[i]`` for every rng stream in ``rngs`` (one key per stream, split
    from the sample's key in the order given). ``aux["outputs"]``: the mean of the samples' outputs."""

    loss_fn: Callable
    num_samples: int
    rngs: tuple[str, ...] = ("dropout",)

    def __post_init__(self):
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int):
            raise TypeError(f"num_samples must be an int, got {type(self.num_samples).__name__}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if not self.rngs or not all(isinstance(r, str) for r in self.rngs):
            raise TypeError(f"rngs must be a non-empty tuple of rng stream names, got {self.rngs!r}")

    def __call__(self, apply, params, x, y, ctx):
        losses, outs = [], []
        for k in jax.random.split(ctx.key, self.num_samples):  # sequential: BatchNorm stats thread through
            rngs = dict(zip(self.rngs, jax.random.split(k, len(self.rngs))))
            out, _ = apply(params, x, rngs)
            losses.append(call_loss(self.loss_fn, out, y, ctx))
            outs.append(out)
        return jnp.mean(jnp.stack(losses)), {"outputs": jnp.mean(jnp.stack(outs), axis=0)}
