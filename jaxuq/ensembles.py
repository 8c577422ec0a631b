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

Training lives in the one engine, ``jaxuq.train.fit`` (``TrainConfig(num_members=M, members=...)``),
which maps its single-model ``train_step`` over the members with ``over_members``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "apply_members",
    "default_members",
    "init_members",
    "make_eval_fn",
    "member_mesh",
    "member_permutations",
    "over_members",
    "predictive",
    "shard_members",
]

Lowering = Literal["vmap", "map", "unroll"]
MEMBER_AXIS = "members"


def default_members(backend: str | None = None) -> Lowering:
    """Member lowering per backend: ``"map"`` on CPU (vmapped convs are slow there), else ``"vmap"``."""
    backend = backend or jax.default_backend()
    return "map" if backend == "cpu" else "vmap"


def over_members(fn: Callable, members: Lowering | None, *stacked):
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

        return over_members(f, members, *stacked)

    if mesh is None:
        return run(variables, x, rngs)
    spec_m = PartitionSpec(MEMBER_AXIS)
    x_spec = spec_m if per_member_inputs else PartitionSpec()
    r_spec = spec_m if rngs is not None else None
    fn = jax.shard_map(
        lambda v, xs, rs: run(v, xs, rs),
        mesh=mesh,
        in_specs=(spec_m, x_spec, r_spec),
        out_specs=spec_m,
    )
    return fn(variables, x, rngs)


def predictive(logits):
    """Ensemble predictive distribution: mean of member softmax. ``logits: [M, N, C]`` -> ``[N, C]``."""
    return jnp.mean(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=0)


def make_eval_fn(module, *, members: Lowering | None = None, mesh: Mesh | None = None):
    """Jitted ``eval(variables, x [N, ...]) -> logits [M, N, C]`` (``train=False``)."""
    return jax.jit(lambda v, x: apply_members(module, v, x, train=False, members=members, mesh=mesh))


def member_permutations(key, num_members: int, n: int):
    """Per-member data orders ``[M, n]``: member ``m`` uses
    ``jax.random.permutation(jax.random.split(key, M)[m], n)``."""
    keys = jax.random.split(key, num_members)
    return jax.vmap(lambda k: jax.random.permutation(k, n))(keys)


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
