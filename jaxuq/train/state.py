"""TrainState and the train step (flax imagenet-example vocabulary): ``create_train_state``,
``train_step``. The eval-mode forward pass is :func:`jaxuq.forward.forward` (train imports it, never
the reverse).

Models follow the jaxuq convention ``model.apply(variables, x, train=bool, rngs={'dropout': k},
mutable=['batch_stats'])``. Inputs reach the step as stored (uint8 images, or any numeric features)
and go through ``StepSettings.preprocess.train`` inside the step (None: used as they are).

One model or a stacked deep ensemble: an ensemble's state is M single states stacked on axis 0 of
every leaf (``step``, ``key`` and ``extras`` included); ``train_step`` is written for one model and
the engine maps it over the members (``jaxuq.ensembles.over_members``).

The loss is an :class:`~jaxuq.train.objective.Objective` (the default wraps ``loss_fn(outputs,
targets)``); it gets ``apply(params, x, rngs=None)``, which runs the model in train mode, and a
:class:`~jaxuq.train.objective.StepContext` (the step's key, step, steps per epoch).

Randomness: the key of step ``s`` is ``fold_in(state.key, s)``, split into an augmentation key and a
dropout key, so a run is a pure function of (seed, data, config) and resumes exactly.

Mixed precision: with ``compute_dtype="bfloat16"`` the step casts the float parameters and the float
inputs to bf16 for the forward/backward pass; parameters, optimizer state, batch statistics, outputs
for the loss and all metrics stay float32 (gradients flow back through the cast into fp32).

Non-finite steps: a step whose loss or gradient is NaN/inf leaves params, batch stats and optimizer
state unchanged (only ``step`` advances) and reports ``finite=False``; the loop then stops with an
error or goes on (``TrainConfig.on_nonfinite``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from jaxuq.data.pipeline import Preprocess
from jaxuq.losses import cross_entropy
from jaxuq.train.objective import LossObjective, Objective, StepContext

__all__ = ["CONSTANTS", "StepSettings", "TrainState", "create_train_state", "prepare_batch", "step_keys",
           "train_step"]

#: the variable collection of model constants (Masksembles masks): carried, read-only, never trained
CONSTANTS = "constants"


class TrainState(train_state.TrainState):
    """flax's TrainState plus ``batch_stats`` ({} if the model has none), ``key`` (typed PRNG key),
    ``extras``: a pytree for callback/transform state (EMA/SWA weights, snapshots; default ``{}``),
    donated, sharded, checkpointed and resumed with the rest, and ``constants``: the model's
    ``"constants"`` collection (Masksembles masks; default ``{}``), read by every forward pass and
    never written (not trained, not mutable in the step), checkpointed with the rest.

    Ensembles: every leaf has a leading member axis ``[M, ...]`` (``step: [M]``, ``key: [M]``; extras
    too: build them from the state's leaves, e.g. ``jnp.zeros_like(state.step)`` for a counter)."""

    batch_stats: Any
    key: jax.Array
    extras: Any = struct.field(default_factory=dict)
    constants: Any = struct.field(default_factory=dict)

    def variables(self) -> dict:
        v = {"params": self.params}
        if self.batch_stats:
            v["batch_stats"] = self.batch_stats
        if self.constants:
            v[CONSTANTS] = self.constants
        return v


def _create_one(model, tx, key, sample_input) -> TrainState:
    k_init, k_drop, k_run = jax.random.split(key, 3)
    variables = model.init({"params": k_init, "dropout": k_drop}, sample_input, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=tx,
        opt_state=tx.init(params),
        batch_stats=variables.get("batch_stats", {}),
        key=k_run,
        constants=variables.get(CONSTANTS, {}),
    )


def create_train_state(
    model, tx: optax.GradientTransformation, key: jax.Array, sample_input, num_members: int | None = None
) -> TrainState:
    """Initialise ``model`` on ``sample_input`` ([B, H, W, C] float32) with ``key`` (typed key).

    ``num_members=M``: M states stacked on axis 0; member ``m`` is exactly the single state created
    from ``jax.random.split(key, M)[m]``. The init key and the run key are split from each key.
    """
    if num_members is None:
        return _create_one(model, tx, key, sample_input)
    keys = jax.random.split(key, num_members)
    return jax.jit(jax.vmap(lambda k: _create_one(model, tx, k, sample_input)))(keys)


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """The static part of a step (hashable: it keys ``jax.jit``'s cache)."""

    preprocess: Preprocess | None = Preprocess()
    objective: Objective = LossObjective(cross_entropy)
    compute_dtype: str = "float32"
    format_batch: Any = None
    grad_scale: float = 1.0
    mesh: Any = None  # data-parallel mesh (axis "data"): batches constrained to it
    steps_per_epoch: int = 1  # for StepContext (epoch-dependent objectives)
    step_callbacks: tuple = ()  # callbacks' ``on_step(state) -> state``: after the update, or before it
    # (on the state the step starts from) for a callback whose ``before_update`` is True (TU's EMA)


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _train_apply(state: TrainState, compute_dtype: str, default_rngs: dict):
    """``(apply, holder)``: ``apply(params, x, rngs=None) -> (outputs float32, collections)`` runs the
    model in train mode in ``compute_dtype``; each call starts from the batch statistics the previous
    call left in ``holder`` (as successive torch forwards do) and returns the other mutable collections
    the layers ``sow`` into (e.g. ``"losses"``)."""
    holder = {"batch_stats": state.batch_stats}

    def apply(params, x, rngs=None):
        if compute_dtype != "float32":
            params = _cast_floats(params, compute_dtype)
            x = x.astype(compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
        variables = {"params": params} | ({"batch_stats": holder["batch_stats"]} if state.batch_stats else {})
        variables |= {CONSTANTS: state.constants} if state.constants else {}
        out, cols = state.apply_fn(variables, x, train=True, rngs=default_rngs if rngs is None else rngs,
                                   mutable=nn.DenyList(("params", CONSTANTS)))
        cols = dict(cols)
        if "batch_stats" in cols:
            holder["batch_stats"] = _cast_floats(cols.pop("batch_stats"), jnp.float32)
        return jax.tree.map(lambda a: a.astype(jnp.float32), out), cols

    apply.threads_batch_stats = bool(state.batch_stats)  # successive calls share the BN statistics
    return apply, holder


def _constrain(settings: StepSettings, images, labels):
    mesh = settings.mesh
    if mesh is None or images.shape[0] % mesh.size:  # a last partial batch may not divide
        return images, labels
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), (images, labels))


def step_keys(key: jax.Array, step) -> tuple[jax.Array, jax.Array]:
    """``(augmentation key, dropout key)`` of step ``step`` of a state with run key ``key``: ``split(
    fold_in(key, step))``; the dropout key is the objective's ``StepContext.key``."""
    k_aug, k_drop = jax.random.split(jax.random.fold_in(key, step))
    return k_aug, k_drop


def prepare_batch(settings: StepSettings, key, step, images, labels):
    """The step's inputs: ``preprocess.train`` (augmentation key ``split(fold_in(key, step))[0]``), then
    ``format_batch`` (key ``fold_in`` of it, 1). An ensemble with ``shared_augmentation`` calls it once
    with member 0's key and gives every member the result (TU: one augmented batch for all members)."""
    k_aug = step_keys(key, step)[0]
    x = images if settings.preprocess is None else settings.preprocess.train(k_aug, images)
    if settings.format_batch is not None:
        x, labels = settings.format_batch(x, labels, jax.random.fold_in(k_aug, 1))
    return x, labels


def _step_callbacks(state: TrainState, callbacks: tuple, before: bool) -> TrainState:
    """``on_step`` of the callbacks whose ``before_update`` equals ``before``, in order."""
    for cb in callbacks:
        if bool(getattr(cb, "before_update", False)) == before:
            state = cb.on_step(state)
    return state


def train_step(state: TrainState, images, labels, settings: StepSettings):
    """One optimisation step: ``(state, inputs [B, ...], targets [B, ...]) -> (state, metrics)``.

    metrics: ``loss`` (float32), ``count`` (int32, rows of the formatted targets), ``finite`` (bool;
    False: the update was not applied), and ``correct`` (int32) for integer class targets when the
    objective returns ``aux["outputs"]``.
    """
    images, labels = _constrain(settings, images, labels)
    k_drop = step_keys(state.key, state.step)[1]
    x, labels = prepare_batch(settings, state.key, state.step, images, labels)
    ctx = StepContext(key=k_drop, step=state.step, steps_per_epoch=settings.steps_per_epoch)

    def loss_of(params):
        apply, holder = _train_apply(state, settings.compute_dtype, {"dropout": k_drop})
        loss, aux = settings.objective(apply, params, x, labels, ctx)
        return loss.astype(jnp.float32), (aux, holder["batch_stats"])

    state = _step_callbacks(state, settings.step_callbacks, before=True)
    (loss, (aux, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    if settings.grad_scale != 1.0:
        grads = jax.tree.map(lambda g: g * settings.grad_scale, grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    new = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    keep = lambda new_t, old_t: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new_t, old_t)  # noqa: E731
    new = new.replace(
        params=keep(new.params, state.params),
        opt_state=keep(new.opt_state, state.opt_state),
        batch_stats=keep(new.batch_stats, state.batch_stats),
    )
    new = _step_callbacks(new, settings.step_callbacks, before=False)
    metrics = {"loss": loss, "count": jnp.asarray(labels.shape[0], jnp.int32), "finite": finite}
    outputs = aux.get("outputs") if isinstance(aux, dict) else None
    if outputs is not None and jnp.issubdtype(labels.dtype, jnp.integer):
        pred = (outputs[..., 0] > 0) if outputs.shape[-1] == 1 else jnp.argmax(outputs, -1)  # binary: p > 0.5
        metrics["correct"] = jnp.sum(pred == labels).astype(jnp.int32)
    return new, metrics
