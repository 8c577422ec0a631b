"""Meshes and their roles: data-parallel (axis ``data``: batch sharded, params replicated) or
member-parallel (axis ``members``: the members of a stacked ensemble, or the samples of a sampler,
spread over devices).

``split_mesh(mesh) -> MeshRoles(data=..., members=...)`` is the one place that reads a mesh's role
from its axis names; ``fit``, ``predict`` and ``evaluate`` call it once at their entry and pass the
roles down (``jaxuq.forward.forward`` accepts either).

Single host: ``make_mesh()`` uses all local devices. Multi-host (several processes, each with its
own local devices): call ``initialize_distributed(...)`` in every process before any other JAX call;
``make_mesh()`` then spans ``jax.devices()`` of all processes. In that setting an array on the mesh
is *global*: no process can ``device_put`` it whole or read it whole unless it is replicated, so
the engine goes through the helpers below:

- ``replicate(tree, mesh)``: host values that are identical in every process (initial params,
  optimizer state, keys, an on-device dataset) -> arrays replicated over the mesh, built from each
  process's own copy (no cross-process transfer).
- ``process_batch_slice(mesh, n)``: the rows ``[lo, hi)`` of an ``n``-row global batch that this
  process owns under ``PartitionSpec('data')`` (its devices' contiguous block).
- ``global_batch(mesh, local, global_rows)``: this process's rows -> the global batch array
  (``jax.make_array_from_process_local_data``); each process reads/augments only its part.
- ``to_host(tree)``: replicated or fully addressable arrays -> numpy (every process gets the value).

On CPU the cross-process collectives use gloo (jax's default ``jax_cpu_collectives_implementation``);
``initialize_distributed`` sets it explicitly unless told otherwise.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "MEMBER_AXIS",
    "MeshRoles",
    "batch_sharding",
    "global_batch",
    "initialize_distributed",
    "is_multiprocess",
    "make_mesh",
    "member_mesh",
    "process_batch_slice",
    "replicate",
    "replicated",
    "shard_members",
    "split_mesh",
    "to_host",
]

DATA_AXIS = "data"
MEMBER_AXIS = "members"


class MeshRoles(NamedTuple):
    """A mesh split by role: ``data`` shards the batch (``make_mesh``), ``members`` shards the leading
    member/sample axis (``member_mesh``); at most one is set, both None without a mesh."""

    data: Mesh | None = None
    members: Mesh | None = None

    def place(self, tree):
        """Put ``tree`` (a state or variables) where its role wants it: replicated over a data mesh,
        member axis split over a member mesh, unchanged without a mesh."""
        if self.data is not None:
            return replicate(tree, self.data)
        if self.members is not None:
            return shard_members(tree, self.members)
        return tree


def split_mesh(mesh) -> MeshRoles:
    """``None`` / a ``Mesh`` / ``MeshRoles`` -> ``MeshRoles``. A mesh with axis ``"members"`` is a
    member mesh, one with axis ``"data"`` a data mesh; any other mesh is a ValueError, anything
    else a TypeError."""
    if mesh is None:
        return MeshRoles()
    if isinstance(mesh, MeshRoles):
        return mesh
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, MeshRoles or None, got {type(mesh).__name__}")
    if MEMBER_AXIS in mesh.axis_names:
        return MeshRoles(members=mesh)
    if DATA_AXIS in mesh.axis_names:
        return MeshRoles(data=mesh)
    raise ValueError(f"mesh axes must be ('{DATA_AXIS}',) or ('{MEMBER_AXIS}',), got {mesh.axis_names}")


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_collectives: str | None = "gloo",
    **kwargs,
) -> None:
    """Multi-host setup; call once per process before any other JAX computation.

    Wraps ``jax.distributed.initialize`` (``coordinator_address`` "host:port" of process 0,
    ``num_processes``, ``process_id``; on clusters jax can detect them). ``cpu_collectives``
    ("gloo", "mpi" or None to keep jax's setting) selects the CPU cross-process collectives, which
    must be set before the CPU backend is created.
    """
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id, **kwargs
    )


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def make_mesh(devices=None) -> Mesh:
    """1-D mesh, axis ``data``, over ``devices`` (default: ``jax.devices()``, all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def member_mesh(num_devices: int | None = None, devices=None) -> Mesh:
    """A 1-D mesh with axis ``"members"`` over ``devices`` (default: the first ``num_devices``)."""
    devices = list(devices if devices is not None else jax.devices())
    if num_devices is not None:
        devices = devices[:num_devices]
    return Mesh(np.array(devices), (MEMBER_AXIS,))


def shard_members(tree, mesh: Mesh):
    """Place every leaf's member axis (axis 0) across the mesh's ``"members"`` axis (scalars replicated)."""
    ndev = mesh.shape[MEMBER_AXIS]

    def put(a):
        if a.ndim == 0:
            return jax.device_put(a, NamedSharding(mesh, PartitionSpec()))
        if a.shape[0] % ndev:
            raise ValueError(f"member axis {a.shape[0]} is not divisible by the {ndev} devices of the mesh")
        return jax.device_put(a, NamedSharding(mesh, PartitionSpec(MEMBER_AXIS)))

    return jax.tree.map(put, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _replicate_leaf(a, sharding: NamedSharding):
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(a)
        return jax.random.wrap_key_data(_replicate_leaf(jax.random.key_data(a), sharding), impl=impl)
    if isinstance(a, jax.Array) and a.sharding == sharding:
        return a
    host = np.asarray(a)  # this process's copy (a local or a replicated array)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicate(tree, mesh: Mesh):
    """Place a pytree replicated on every device of ``mesh``.

    Single process: ``jax.device_put``. Several processes: every process must hold the same
    values (same seed/data); each builds its own devices' copies from its host value, with no
    cross-process traffic and no equality check. Typed PRNG keys are handled via their key data.
    """
    sharding = replicated(mesh)
    if not is_multiprocess():
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda a: _replicate_leaf(a, sharding), tree)


def process_batch_slice(mesh: Mesh, n: int, axis: int = 0, ndim: int = 1) -> slice:
    """Rows ``[lo, hi)`` along ``axis`` of an ``n``-row global array that this process feeds when
    that axis is sharded over ``data`` (the union of its devices' blocks; must be contiguous).

    ``n`` must be divisible by the number of devices of the mesh.
    """
    if n % mesh.size:
        raise ValueError(f"global batch of {n} rows is not divisible by the {mesh.size} devices of the mesh")
    spec = [None] * ndim
    spec[axis] = DATA_AXIS
    shape = [1] * ndim
    shape[axis] = n
    idx = NamedSharding(mesh, PartitionSpec(*spec)).addressable_devices_indices_map(tuple(shape))
    blocks = sorted({(s[axis].start or 0, n if s[axis].stop is None else s[axis].stop) for s in idx.values()})
    lo, hi = blocks[0][0], blocks[-1][1]
    if sum(b - a for a, b in blocks) != hi - lo:
        raise ValueError(
            f"process {jax.process_index()} owns non-contiguous blocks {blocks} of the batch axis; "
            "build the mesh with each process's devices adjacent (make_mesh() does)"
        )
    return slice(lo, hi)


def global_batch(mesh: Mesh, local_batch, global_rows: int | None = None, axis: int = 0):
    """This process's part of a batch (numpy pytree, rows ``process_batch_slice``) -> global arrays
    sharded on ``axis`` over ``data`` (other axes replicated).

    ``global_rows``: the global size of ``axis`` (default: local size x process count, which holds
    when every process owns the same number of devices).
    """

    def one(a):
        a = np.asarray(a)
        spec = [None] * a.ndim
        spec[axis] = DATA_AXIS
        shape = list(a.shape)
        shape[axis] = global_rows if global_rows is not None else a.shape[axis] * jax.process_count()
        sharding = NamedSharding(mesh, PartitionSpec(*spec))
        return jax.make_array_from_process_local_data(sharding, a, tuple(shape))

    return jax.tree.map(one, local_batch)


def to_host(tree):
    """Arrays -> numpy in every process. Replicated or fully addressable arrays are read locally;
    sharded global arrays are all-gathered (``multihost_utils.process_allgather``)."""

    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable or a.is_fully_replicated:
            return np.asarray(a)
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(one, tree)
