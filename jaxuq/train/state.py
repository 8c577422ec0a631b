"""TrainState and the jitted train/eval steps (flax imagenet-example vocabulary).

Models follow the jaxuq convention ``model.apply(variables, x, train=bool, rngs={'dropout': k},
mutable=['batch_stats'])`` with NHWC float inputs. Inputs reach the step as uint8 images and are
augmented/normalised inside the step by a :class:`jaxuq.data.Preprocess`.

Randomness: the key of step ``s`` is ``fold_in(state.key, s)``, split into an augmentation key and a
dropout key, so a run is a pure function of (seed, data, config) and resumes exactly.

Mixed precision: with ``compute_dtype=bfloat16`` the step casts the float parameters and the inputs to
bf16 for the forward/backward pass; parameters, optimizer state, batch statistics, logits for the
loss and all metrics stay float32 (gradients flow back through the cast into fp32).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainState", "create_train_state", "make_train_step", "make_eval_step", "cross_entropy"]


@flax.struct.dataclass
class TrainState:
    """params, batch_stats ({} if the model has none), opt_state, step (int32), key (typed PRNG key)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    def variables(self) -> dict:
        v = {"params": self.params}
        if self.batch_stats:
            v["batch_stats"] = self.batch_stats
        return v


def create_train_state(model, tx: optax.GradientTransformation, key: jax.Array, sample_input: jax.Array):
    """Initialise ``model`` on ``sample_input`` ([B, H, W, C] float32) with ``key`` (typed key).

    The init key and the run key are split from ``key``.
    """
    k_init, k_drop, k_run = jax.random.split(key, 3)
    variables = model.init({"params": k_init, "dropout": k_drop}, sample_input, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        key=k_run,
        apply_fn=model.apply,
        tx=tx,
    )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """torch ``CrossEntropyLoss()`` (mean). logits: [B, C] float32, labels: [B] int."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def make_train_step(
    preprocess, loss_fn: Callable = cross_entropy, compute_dtype=jnp.float32, batch_sharding=None
):
    """Return ``step(state, images_u8 [B,H,W,C], labels [B]) -> (state, metrics)`` (not jitted:
    the loop jits it once, inside a ``lax.scan`` over a chunk of steps).

    metrics: ``loss`` (mean CE, float32), ``correct`` (int32 count), ``count``.
    """
    compute_dtype = jnp.dtype(compute_dtype)

    def step(state: TrainState, images, labels):
        if batch_sharding is not None:
            images = jax.lax.with_sharding_constraint(images, batch_sharding)
            labels = jax.lax.with_sharding_constraint(labels, batch_sharding)
        k_aug, k_drop = jax.random.split(jax.random.fold_in(state.key, state.step))
        x = preprocess.train(k_aug, images)

        def loss_of(params):
            p, xin = params, x
            if compute_dtype != jnp.float32:
                p, xin = _cast_floats(params, compute_dtype), x.astype(compute_dtype)
            rngs = {"dropout": k_drop}
            if state.batch_stats:
                variables = {"params": p, "batch_stats": state.batch_stats}
                logits, updates = state.apply_fn(
                    variables, xin, train=True, rngs=rngs, mutable=["batch_stats"]
                )
            else:
                logits, updates = state.apply_fn({"params": p}, xin, train=True, rngs=rngs), {}
            logits = logits.astype(jnp.float32)
            return loss_fn(logits, labels), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        upd, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, upd)
        batch_stats = (
            _cast_floats(updates["batch_stats"], jnp.float32) if state.batch_stats else state.batch_stats
        )
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.int32)
        return new, {"loss": loss, "correct": correct, "count": jnp.asarray(labels.shape[0], jnp.int32)}

    return step


def make_eval_step(preprocess, compute_dtype=jnp.float32):
    """Return ``eval_step(state, images_u8 [B,H,W,C]) -> logits [B, C] float32`` (eval mode)."""
    compute_dtype = jnp.dtype(compute_dtype)

    def eval_step(state: TrainState, images):
        x = preprocess.eval(images)
        variables = state.variables()
        if compute_dtype != jnp.float32:
            variables = {
                "params": _cast_floats(variables["params"], compute_dtype),
                **({"batch_stats": variables["batch_stats"]} if "batch_stats" in variables else {}),
            }
            x = x.astype(compute_dtype)
        return state.apply_fn(variables, x, train=False).astype(jnp.float32)

    return eval_step
