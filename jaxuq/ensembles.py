"""Deep ensembles as one stacked pytree: init, apply and train M members in one jitted step.

Members live on axis 0 of every parameter, batch-stat and optimizer-state leaf, and of the outputs
(``logits: [M, N, C]``). How the member axis is lowered is a choice, ``members=``:

- ``"vmap"``: ``jax.vmap`` over members: one batched (grouped-conv) kernel per layer. On XLA:CPU it is
  slow for conv nets (bench, 8 LeNets: ~19x the time of one member).
- ``"map"``: ``jax.lax.map`` (a scan) over members: compile time independent of M; each member is a
  plain single-model graph. Fastest on CPU (bench: ~6.5x one member for 8), so the CPU default.
- ``"unroll"``: a loop over members unrolled inside the same jitted function: XLA sees M independent
  single-model graphs (compile time grows with M; bench on CPU: ~10x one member for 8).
(CPU figures from bench/results/ensembles.md on a 2-core machine; GPU not measured yet, so the
GPU default ``"vmap"`` is still to be confirmed by running bench/ensembles.py there.)

All give the same numbers (up to float rounding). ``default_members()`` picks per backend, as the
benchmark decided (bench/results/ensembles.md). ``mesh=`` splits members over a device mesh axis
with ``jax.shard_map``; each device then runs its local members with the chosen lowering.

Training semantics: by default each member minimises its own mean cross-entropy (independent members,
identical to training each member alone). ``tu_gradient_scaling=True`` reproduces torch-uncertainty's
``deep_ensembles`` + ``RepeatTarget`` objective, CE over the ``M*B`` rows, whose gradient for each member is
``1/M`` of its stand-alone gradient (TU's tutorials multiply the LR by ``M`` to compensate).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "EnsembleState",
    "apply_members",
    "default_members",
    "init_members",
    "init_train_state",
    "make_train_step",
    "member_mesh",
    "member_permutations",
    "predictive",
    "shard_members",
    "train_epoch",
]

Lowering = Literal["vmap", "map", "unroll"]
MEMBER_AXIS = "members"


def default_members(backend: str | None = None) -> Lowering:
    """Member lowering per backend: ``"map"`` on CPU (vmapped convs are slow there), else ``"vmap"``."""
    backend = backend or jax.default_backend()
    return "map" if backend == "cpu" else "vmap"


def _over_members(fn: Callable, members: Lowering | None, *stacked):
    """Apply ``fn(*member_slices)`` to every member of the stacked args; outputs stacked on axis 0."""
    members = members or default_members()
    if members == "vmap":
        return jax.vmap(fn)(*stacked)
    if members == "map":
        return jax.lax.map(lambda a: fn(*a), stacked)
    if members == "unroll":
        m = jax.tree.leaves(stacked)[0].shape[0]
        outs = [fn(*jax.tree.map(lambda a, i=i: a[i], stacked)) for i in range(m)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    raise ValueError(f"members must be 'vmap', 'map' or 'unroll', got {members!r}")


def _num_members(tree) -> int:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("empty ensemble variables")
    m = leaves[0].shape[0]
    for leaf in leaves:
        if leaf.shape[:1] != (m,):
            raise ValueError(f"ensemble leaves must share a leading member axis {m}, got {leaf.shape}")
    return m


def init_members(module, key, num_members: int, *sample_args, **init_kwargs):
    """Initialise ``num_members`` members from ``jax.random.split(key, M)``; stacked variables ``[M, ...]``.

    Member ``m`` equals ``module.init(jax.random.split(key, M)[m], *sample_args, **init_kwargs)``.
    """
    if num_members < 1:
        raise ValueError(f"num_members must be >= 1, got {num_members}")
    keys = jax.random.split(key, num_members)
    return jax.jit(jax.vmap(lambda k: module.init(k, *sample_args, **init_kwargs)))(keys)


def _member_rngs(rng, m: int):
    return None if rng is None else jax.random.split(rng, m)


def apply_members(
    module,
    variables,
    x,
    *,
    train: bool = False,
    members: Lowering | None = None,
    per_member_inputs: bool = False,
    rng=None,
    mutable=False,
    mesh: Mesh | None = None,
):
    """Run every member: ``x: [N, ...]`` (or ``[M, N, ...]`` with ``per_member_inputs``) -> ``[M, N, C]``.

    ``variables`` are stacked ``[M, ...]``. ``rng`` (optional) is split into one ``dropout`` key per
    member. With ``mutable`` (e.g. ``["batch_stats"]``) returns ``(outputs, updated_collections)`` like
    ``flax.linen.Module.apply``. ``mesh``: shard members over its ``"members"`` axis (M must divide).
    """
    m = _num_members(variables)
    rngs = _member_rngs(rng, m)

    def one(v, xm, r):
        kw = {"rngs": {"dropout": r}} if r is not None else {}
        return module.apply(v, xm, train=train, mutable=mutable, **kw)

    def run(v, xs, rs):
        stacked = (v,) + ((xs,) if per_member_inputs else ()) + ((rs,) if rs is not None else ())

        def f(*a):
            vm = a[0]
            xm = a[1] if per_member_inputs else xs
            rm = a[-1] if rs is not None else None
            return one(vm, xm, rm)

        return _over_members(f, members, *stacked)

    if mesh is None:
        return run(variables, x, rngs)
    spec_m = PartitionSpec(MEMBER_AXIS)
    x_spec = spec_m if per_member_inputs else PartitionSpec()
    r_spec = spec_m if rngs is not None else None
    fn = jax.shard_map(
        lambda v, xs, rs: run(v, xs, rs), mesh=mesh, in_specs=(spec_m, x_spec, r_spec), out_specs=spec_m,
    )
    return fn(variables, x, rngs)


def predictive(logits):
    """Ensemble predictive distribution: mean of member softmax. ``logits: [M, N, C]`` -> ``[N, C]``."""
    return jnp.mean(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=0)


# ----------------------------------------------------------------------------- training


class EnsembleState(NamedTuple):
    """Stacked training state; every leaf has a leading member axis ``[M, ...]`` (``step`` is scalar)."""

    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array


def init_train_state(module, tx: optax.GradientTransformation, key, num_members: int, sample_input,
                     **init_kwargs) -> EnsembleState:
    """Members from ``init_members`` plus a per-member optimizer state (``tx.init`` vmapped)."""
    variables = init_members(module, key, num_members, sample_input, **init_kwargs)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    opt_state = jax.jit(jax.vmap(tx.init))(params)
    return EnsembleState(params, batch_stats, opt_state, jnp.zeros((), jnp.int32))


def make_train_step(
    module,
    tx: optax.GradientTransformation,
    *,
    members: Lowering | None = None,
    tu_gradient_scaling: bool = False,
    per_member_inputs: bool = False,
    loss_fn: Callable | None = None,
    mesh: Mesh | None = None,
    donate: bool = True,
    jit: bool = True,
):
    """One jitted training step for all members: ``step(state, x, y, rng=None) -> (state, loss [M])``.

    ``x: [B, ...], y: [B]`` shared by all members, or ``[M, B, ...], [M, B]`` with ``per_member_inputs``
    (per-member data order). ``loss_fn(logits [B, C], y [B]) -> scalar`` defaults to mean softmax CE.
    Member ``m``'s gradient is that of its own loss, divided by ``M`` when ``tu_gradient_scaling``
    (TU's CE over ``(m b)`` rows). BatchNorm statistics (collection ``batch_stats``) are updated per
    member. ``mesh``: members sharded over its ``"members"`` axis with ``shard_map``.
    """
    loss_fn = loss_fn or (lambda lg, y: optax.softmax_cross_entropy_with_integer_labels(lg, y).mean())

    def member_step(num_members, params, bs, opt_state, xm, ym, r):
        has_bs = bool(jax.tree.leaves(bs))

        def loss(p):
            v = {"params": p, "batch_stats": bs} if has_bs else {"params": p}
            kw = {"rngs": {"dropout": r}} if r is not None else {}
            if has_bs:
                logits, upd = module.apply(v, xm, train=True, mutable=["batch_stats"], **kw)
                new_bs = upd["batch_stats"]
            else:
                logits, new_bs = module.apply(v, xm, train=True, **kw), bs
            return loss_fn(logits, ym), new_bs

        (lv, new_bs), g = jax.value_and_grad(loss, has_aux=True)(params)
        if tu_gradient_scaling:
            g = jax.tree.map(lambda a: a / num_members, g)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), new_bs, opt_state, lv

    def body(params, bs, opt_state, x, y, rs, num_members):
        f = partial(member_step, num_members)
        if per_member_inputs:
            if rs is None:
                return _over_members(lambda p, b, o, xm, ym: f(p, b, o, xm, ym, None), members,
                                     params, bs, opt_state, x, y)
            return _over_members(f, members, params, bs, opt_state, x, y, rs)
        if rs is None:
            return _over_members(lambda p, b, o: f(p, b, o, x, y, None), members, params, bs, opt_state)
        return _over_members(lambda p, b, o, r: f(p, b, o, x, y, r), members, params, bs, opt_state, rs)

    def step(state: EnsembleState, x, y, rng=None):
        m = _num_members(state.params)
        rs = _member_rngs(rng, m)
        if mesh is None:
            out = body(state.params, state.batch_stats, state.opt_state, x, y, rs, m)
        else:
            sm = PartitionSpec(MEMBER_AXIS)
            xs = sm if per_member_inputs else PartitionSpec()
            fn = jax.shard_map(
                lambda p, b, o, xx, yy, r: body(p, b, o, xx, yy, r, m), mesh=mesh,
                in_specs=(sm, sm, sm, xs, xs, sm if rs is not None else None), out_specs=sm,
            )
            out = fn(state.params, state.batch_stats, state.opt_state, x, y, rs)
        params, bs, opt_state, losses = out
        return EnsembleState(params, bs, opt_state, state.step + 1), losses

    if not jit:
        return step
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def member_permutations(key, num_members: int, n: int):
    """Per-member data orders ``[M, n]``: member ``m`` uses
    ``jax.random.permutation(jax.random.split(key, M)[m], n)``."""
    keys = jax.random.split(key, num_members)
    return jax.vmap(lambda k: jax.random.permutation(k, n))(keys)


def train_epoch(step, state: EnsembleState, images, labels, *, batch_size: int, order=None, rng=None,
                drop_last: bool = False):
    """One epoch of ``step`` over ``images [N, ...]``, ``labels [N]`` (device arrays or numpy).

    ``order``: ``None`` (dataset order), ``[N]`` (one shared order), or ``[M, N]`` (per-member orders; the
    step must be built with ``per_member_inputs=True``). Batches are gathered on device. Returns
    ``(state, mean loss per member [M])``.
    """
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    n = images.shape[0]
    order = jnp.arange(n) if order is None else jnp.asarray(order)
    nb = n // batch_size if drop_last else -(-n // batch_size)
    total, count = None, 0
    for b in range(nb):
        idx = order[..., b * batch_size : (b + 1) * batch_size]
        r = None if rng is None else jax.random.fold_in(rng, b)
        state, loss = step(state, images[idx], labels[idx], r)
        total = loss if total is None else total + loss
        count += 1
    return state, total / max(count, 1)


# ----------------------------------------------------------------------------- sharding


def member_mesh(num_devices: int | None = None, devices=None) -> Mesh:
    """A 1-D mesh with axis ``"members"`` over ``devices`` (default: the first ``num_devices``)."""
    devices = list(devices if devices is not None else jax.devices())
    if num_devices is not None:
        devices = devices[:num_devices]
    return Mesh(np.array(devices), (MEMBER_AXIS,))


def shard_members(tree, mesh: Mesh):
    """Place every leaf's member axis (axis 0) across the mesh's ``"members"`` axis."""
    ndev = mesh.shape[MEMBER_AXIS]

    def put(a):
        if a.ndim == 0:
            return jax.device_put(a, NamedSharding(mesh, PartitionSpec()))
        if a.shape[0] % ndev:
            raise ValueError(f"member axis {a.shape[0]} is not divisible by the {ndev} devices of the mesh")
        return jax.device_put(a, NamedSharding(mesh, PartitionSpec(MEMBER_AXIS)))

    return jax.tree.map(put, tree)
