"""Training objectives: what ``train_step`` differentiates.

The simple case is a loss, ``loss_fn(outputs, targets) -> float32 scalar`` (``TrainConfig(loss_fn=...)``,
any :mod:`jaxuq.losses` function or frozen dataclass). A method that needs more than one plain forward
pass (a Bayesian ELBO: several forward samples with fresh noise keys plus a KL the layers ``sow``;
an evidential loss annealed over epochs) is an :class:`Objective` (``TrainConfig(objective=...)``)::

    loss, aux = objective(apply, params, x, y, ctx)

- ``apply(params, x, rngs=None) -> (outputs, collections)`` runs the model in train mode: float32
  outputs, the compute dtype applied, BatchNorm statistics threaded through successive calls (each
  call starts from the statistics the previous one left, as successive torch forwards do; call it
  sequentially, not under ``jax.vmap``, when the model has BatchNorm: ``apply.threads_batch_stats``
  says so), and ``collections`` = the other mutable collections the layers ``sow`` into (e.g.
  ``{"losses": {...}}``). ``rngs=None`` uses ``{"dropout": ctx.key}``.
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

from jaxuq.ensembles import check_lowering, over_members
from jaxuq.losses.bayesian import ELBOLoss, kl_divergence
from jaxuq.nn.bayesian import KL
from jaxuq.nn.bayesian import RNG as BAYES_RNG

__all__ = ["ELBOObjective", "LossObjective", "Objective", "SampledLoss", "StepContext", "call_loss",
           "sample_forwards"]


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


def sample_forwards(apply, params, x, key, num_samples: int, rngs: tuple[str, ...], lowering=None):
    """``num_samples`` train-mode forward passes: ``(outputs [S, ...], collections [S, ...])``.

    Sample ``s`` uses ``k_s = split(key, S)[s]`` and, for the rng streams ``rngs``, ``split(k_s,
    len(rngs))`` in that order. The samples are mapped with ``lowering`` (:mod:`jaxuq.ensembles`; None:
    the backend's default) unless ``apply.threads_batch_stats`` (a model with BatchNorm): then they
    run one after the other, each starting from the statistics the previous one left (TU's loop)."""
    keys = jax.random.split(key, num_samples)

    def one(k):
        return apply(params, x, dict(zip(rngs, jax.random.split(k, len(rngs)), strict=True)))

    if getattr(apply, "threads_batch_stats", True):
        outs = [one(k) for k in keys]
        return jax.tree.map(lambda *a: jnp.stack(a), *outs)
    return over_members(one, lowering, keys)


def _check_samples(num_samples, rngs) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise TypeError(f"num_samples must be an int, got {type(num_samples).__name__}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not isinstance(rngs, tuple) or not rngs or not all(isinstance(r, str) for r in rngs):
        raise TypeError(f"rngs must be a non-empty tuple of rng stream names, got {rngs!r}")


@dataclasses.dataclass(frozen=True)
class SampledLoss:
    """The mean of ``loss_fn`` over ``num_samples`` train-mode forward passes
    (:func:`sample_forwards`: keys ``split(ctx.key, num_samples)``, one per rng stream of ``rngs``;
    mapped with ``lowering``, sequential with BatchNorm). ``aux["outputs"]``: the mean of the samples'
    outputs."""

    loss_fn: Callable
    num_samples: int
    rngs: tuple[str, ...] = ("dropout",)
    lowering: str | None = None

    def __post_init__(self):
        _check_samples(self.num_samples, self.rngs)
        check_lowering(self.lowering)

    def __call__(self, apply, params, x, y, ctx):
        outs, _ = sample_forwards(apply, params, x, ctx.key, self.num_samples, self.rngs, self.lowering)
        losses = jnp.stack([call_loss(self.loss_fn, outs[i], y, ctx) for i in range(self.num_samples)])
        return jnp.mean(losses), {"outputs": jnp.mean(outs, axis=0)}


@dataclasses.dataclass(frozen=True)
class ELBOObjective:
    """TU's ``ELBOLoss`` as ``fit``'s objective (``TrainConfig(objective=ELBOObjective(ELBOLoss(...)))``):
    ``loss.num_samples`` forward passes (:func:`sample_forwards`; streams ``rngs``, default the
    Bayesian layers' ``'bayes'`` then ``'dropout'``), each one's KL read from what the Bayesian layers
    ``sow`` (``jaxuq.nn.bayesian.KL``, :func:`jaxuq.losses.kl_divergence`: TU's mean over layers), then
    ``mean_s(inner(outputs_s, y) + kl_weight * KL_s)``. ``aux``: ``outputs`` (the samples' mean) and
    ``kl [S]``. The noise of every sample is sown (``jaxuq.nn.bayesian.NOISE``), so a test or the
    lockstep tool can replay the keys and hand TU the very same draws."""

    loss: ELBOLoss
    rngs: tuple[str, ...] = (BAYES_RNG, "dropout")
    lowering: str | None = None

    def __post_init__(self):
        if not isinstance(self.loss, ELBOLoss):
            raise TypeError(f"loss must be a jaxuq.losses.ELBOLoss, got {type(self.loss).__name__}")
        _check_samples(self.loss.num_samples, self.rngs)
        check_lowering(self.lowering)

    def __call__(self, apply, params, x, y, ctx):
        outs, cols = sample_forwards(apply, params, x, ctx.key, self.loss.num_samples, self.rngs,
                                     self.lowering)
        if KL not in cols:
            raise ValueError("ELBOObjective: the model sowed no KL terms (no Bayesian layer sampled)")
        kls = jax.vmap(kl_divergence)(cols[KL])
        return self.loss(outs, y, kls), {"outputs": jnp.mean(outs, axis=0), "kl": kls}
