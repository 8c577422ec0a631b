"""Deep ensembles as one stacked pytree: apply and train M members in one jitted step.

Members live on axis 0 of every parameter, batch-stat and optimizer-state leaf, and of the outputs
(``logits: [M, N, C]``); ``jaxuq.train.create_train_state(..., num_members=M)`` initialises them.
How the member axis is run is a choice, ``lowering=`` (the same name in ``fit``'s
``EnsembleConfig``, ``jaxuq.forward``, ``predict`` and ``evaluate``):

- ``"vmap"``: ``jax.vmap`` over members: one batched kernel per layer. On CPU jaxuq's convolutions
  batch members by their own rules (:mod:`jaxuq.nn.conv`): a batch shared by every member (TU's recipe)
  is turned into patches once and multiplied with every member's kernel in one product; per-member
  inputs run the single-model kernels under ``lax.map``; no grouped convolution. Elsewhere a vmapped
  ``lax.conv`` is a grouped convolution.
- ``"gemm"``: ``jax.vmap`` with every convolution traced as patches + matrix product and JAX's own
  batching (:func:`jaxuq.nn.conv.conv_lowering`): member-stacked convolutions become batched matrix
  products over the member axis.
- ``"map"``: ``jax.lax.map`` (a scan) over members: compile time independent of M; each member is a
  plain single-model graph, its activations small enough to stay in cache.
- ``"unroll"``: a loop over members unrolled inside the same jitted function: XLA sees M independent
  single-model graphs (compile time grows with M).

Measured on CPU (2 cores; bench/results/ensembles.md and conv.md, 2026-12-06): 8 LeNets trained
on one shared batch order (TU's recipe) cost 5.3x one member with ``"vmap"``, 5.6x with ``"map"``
(13x with ``"gemm"``; 19x in the previous run, when a vmapped convolution was a grouped one).
``"map"`` stays the CPU default: with per-member batch orders (8 LeNets: 1.22 vs 1.49 s for 24
steps), for ResNet-20 members (4 members: 5.5 vs 7.2 s for 4 steps of B128) and in inference (8
LeNets, 10,000 images: 1.53 vs 1.83 s) it is faster, because the larger vmapped activations leave
the cache; pick ``"vmap"`` for LeNet-sized members on a shared batch, whose first layer then
dominates. GPU: not measured yet, so its default ``"vmap"`` is still to be confirmed by running
bench/ensembles.py there.

All give the same numbers (up to float rounding). ``default_lowering()`` picks per backend, as the
benchmark decided. ``mesh=`` (a member mesh, :func:`jaxuq.sharding.member_mesh`) splits the members
over devices with ``jax.shard_map``; each device then runs its local members with the chosen lowering.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from jaxuq.nn.conv import conv_lowering
from jaxuq.sharding import MEMBER_AXIS

__all__ = [
    "LOWERINGS",
    "Lowering",
    "apply_members",
    "check_lowering",
    "default_lowering",
    "num_members",
    "over_members",
    "predictive",
]

Lowering = Literal["vmap", "gemm", "map", "unroll"]
LOWERINGS = ("vmap", "gemm", "map", "unroll")


def default_lowering(backend: str | None = None) -> Lowering:
    """Member lowering per backend: ``"map"`` on CPU (see the module docstring: faster except for
    LeNet-sized members on a shared batch), else ``"vmap"``."""
    backend = backend or jax.default_backend()
    return "map" if backend == "cpu" else "vmap"


def check_lowering(lowering, name: str = "lowering") -> None:
    """None or one of :data:`LOWERINGS`, else a TypeError/ValueError naming ``name``."""
    if lowering is not None and not isinstance(lowering, str):
        raise TypeError(f"{name} must be a string or None, got {type(lowering).__name__}")
    if lowering not in (None, *LOWERINGS):
        raise ValueError(f"{name} must be one of {LOWERINGS} or None, got {lowering!r}")


def _lowered(fn: Callable, lowering: Lowering, stacked: tuple, shared: tuple):
    def one(*member):
        return fn(*member, *shared)

    if lowering == "vmap":
        return jax.vmap(one)(*stacked)
    if lowering == "gemm":
        with conv_lowering("gemm"):
            return jax.vmap(one)(*stacked)
    if lowering == "map":
        return jax.lax.map(lambda a: one(*a), stacked)
    m = jax.tree.leaves(stacked)[0].shape[0]
    outs = [one(*jax.tree.map(lambda a, i=i: a[i], stacked)) for i in range(m)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def over_members(fn: Callable, lowering: Lowering | None, *stacked, shared: tuple = (),
                 mesh: Mesh | None = None):
    """``fn(*member_slices, *shared)`` for every member of the ``stacked`` pytrees (leading axis M);
    outputs stacked on axis 0. ``shared`` args are the same for every member. ``mesh``: a member mesh
    (axis ``"members"``, M divisible by its size): members split over devices with ``shard_map``."""
    check_lowering(lowering)
    lowering = lowering or default_lowering()
    if mesh is None:
        return _lowered(fn, lowering, stacked, shared)
    run = jax.shard_map(
        lambda st, sh: _lowered(fn, lowering, st, sh),
        mesh=mesh,
        in_specs=(PartitionSpec(MEMBER_AXIS), PartitionSpec()),
        out_specs=PartitionSpec(MEMBER_AXIS),
    )
    return run(stacked, shared)


def num_members(tree) -> int:
    """The shared leading axis of every leaf of a stacked pytree (ValueError otherwise)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("empty ensemble variables")
    m = leaves[0].shape[0] if leaves[0].ndim else None
    for leaf in leaves:
        if m is None or leaf.shape[:1] != (m,):
            raise ValueError(f"ensemble leaves must share a leading member axis {m}, got {leaf.shape}")
    return m


def apply_members(
    module,
    variables,
    x,
    *,
    train: bool = False,
    lowering: Lowering | None = None,
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
    m = num_members(variables)
    stacked = (variables, x if per_member_inputs else None, None if rng is None else jax.random.split(rng, m))

    def one(v, xm, r, x_shared):
        kw = {"rngs": {"dropout": r}} if r is not None else {}
        return module.apply(v, x_shared if xm is None else xm, train=train, mutable=mutable, **kw)

    return over_members(one, lowering, *stacked, shared=(None if per_member_inputs else x,), mesh=mesh)


def predictive(logits):
    """Ensemble predictive distribution: mean of member softmax. ``logits: [M, N, C]`` -> ``[N, C]``."""
    return jnp.mean(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=0)
