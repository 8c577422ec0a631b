"""TrainState and the step functions (flax imagenet-example vocabulary): ``create_train_state``,
``train_step``, ``eval_step``.

Models follow the jaxuq convention ``model.apply(variables, x, train=bool, rngs={'dropout': k},
mutable=['batch_stats'])`` with NHWC float inputs. Inputs reach the step as uint8 images and are
augmented/normalised inside the step by a :class:`jaxuq.data.Preprocess`.

One model or a stacked deep ensemble: an ensemble's state is M single states stacked on axis 0 of
every leaf (``step`` and ``key`` included); ``train_step`` is written for one model and the engine
maps it over the members (``jaxuq.ensembles.over_members``).

Randomness: the key of step ``s`` is ``fold_in(state.key, s)``, split into an augmentation key and a
dropout key, so a run is a pure function of (seed, data, config) and resumes exactly.

Mixed precision: with ``compute_dtype="bfloat16"`` the step casts the float parameters and the inputs
to bf16 for the forward/backward pass; parameters, optimizer state, batch statistics, logits for the
loss and all metrics stay float32 (gradients flow back through the cast into fp32).

Non-finite steps: a step whose loss or gradient is NaN/inf leaves params, batch stats and optimizer
state unchanged (only ``step`` advances) and reports ``finite=False``; the loop then stops with an
error or goes on (``TrainConfig.on_nonfinite``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxuq.data.formats import RepeatTarget
from jaxuq.data.pipeline import Preprocess
from jaxuq.losses import cross_entropy

__all__ = [
    "RepeatTarget",
    "StepSettings",
    "TrainState",
    "create_train_state",
    "cross_entropy",
    "eval_step",
    "train_step",
]


class TrainState(train_state.TrainState):
    """flax's TrainState plus ``batch_stats`` ({} if the model has none) and ``key`` (typed PRNG key).

    Ensembles: every leaf has a leading member axis ``[M, ...]`` (``step: [M]``, ``key: [M]``)."""

    batch_stats: Any
    key: jax.Array

    def variables(self) -> dict:
        v = {"params": self.params}
        if self.batch_stats:
            v["batch_stats"] = self.batch_stats
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

    preprocess: Preprocess = Preprocess()
    loss_fn: Callable = cross_entropy
    compute_dtype: str = "float32"
    format_batch: Callable | None = None
    grad_scale: float = 1.0
    mesh: Any = None  # data-parallel mesh (axis "data"): batches constrained to it


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _forward(state: TrainState, params, x, k_drop, compute_dtype: str):
    """Train-mode logits [B, C] float32 and the new batch stats."""
    if compute_dtype != "float32":
        params, x = _cast_floats(params, compute_dtype), x.astype(compute_dtype)
    rngs = {"dropout": k_drop}
    if not state.batch_stats:
        return state.apply_fn({"params": params}, x, train=True, rngs=rngs).astype(jnp.float32), {}
    variables = {"params": params, "batch_stats": state.batch_stats}
    logits, upd = state.apply_fn(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
    return logits.astype(jnp.float32), _cast_floats(upd["batch_stats"], jnp.float32)


def train_step(state: TrainState, images, labels, settings: StepSettings):
    """One optimisation step: ``(state, images_u8 [B,H,W,C], labels [B]) -> (state, metrics)``.

    metrics: ``loss`` (float32), ``correct`` and ``count`` (int32, over the formatted labels),
    ``finite`` (bool; False: the update was not applied).
    """
    mesh = settings.mesh
    if mesh is not None and images.shape[0] % mesh.size == 0:  # a last partial batch may not divide
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        images = jax.lax.with_sharding_constraint(images, sharding)
        labels = jax.lax.with_sharding_constraint(labels, sharding)
    k_aug, k_drop = jax.random.split(jax.random.fold_in(state.key, state.step))
    x = settings.preprocess.train(k_aug, images)
    if settings.format_batch is not None:
        x, labels = settings.format_batch(x, labels, jax.random.fold_in(k_aug, 1))

    def loss_of(params):
        logits, batch_stats = _forward(state, params, x, k_drop, settings.compute_dtype)
        return settings.loss_fn(logits, labels), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
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
    correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.int32)
    count = jnp.asarray(labels.shape[0], jnp.int32)
    return new, {"loss": loss, "correct": correct, "count": count, "finite": finite}


def eval_step(model, variables, images, preprocess: Preprocess | None = None, compute_dtype: str = "float32",
              members=None, mesh=None):
    """Eval-mode logits float32 for ``images [B, ...]`` (uint8 through ``preprocess.eval``, or already
    preprocessed when ``preprocess`` is None): ``[B, C]`` (Packed: ``[(M B), C]``), or ``[M, B, C]`` for
    stacked ``variables`` with a member lowering ``members`` (``mesh``: a member mesh, see
    :func:`jaxuq.ensembles.apply_members`). The one forward of :func:`jaxuq.evaluation.predict`,
    :func:`jaxuq.evaluate` and ``fit``'s evaluation."""
    from jaxuq.ensembles import apply_members  # noqa: PLC0415  (ensembles is imported by train.loop)

    x = images if preprocess is None else preprocess.eval(images)
    if compute_dtype != "float32":
        variables = dict(variables, params=_cast_floats(variables["params"], compute_dtype))
        x = x.astype(compute_dtype)
    if members is None:
        return model.apply(variables, x, train=False).astype(jnp.float32)
    return apply_members(model, variables, x, train=False, members=members, mesh=mesh).astype(jnp.float32)
