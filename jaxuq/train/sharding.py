"""Data-parallel training over a ``jax.sharding.Mesh``: batch sharded on axis ``data``, params replicated.

Single host: ``make_mesh()`` uses all local devices. Multi-host: call ``initialize_distributed(...)``
first (only when asked; it wraps ``jax.distributed.initialize``), then ``make_mesh()`` spans
``jax.devices()`` of all processes and ``global_batch`` assembles a global array from each
process's local shard (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["make_mesh", "batch_sharding", "replicated", "initialize_distributed", "global_batch"]

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs,
) -> None:
    """Multi-host setup (``jax.distributed.initialize``); call once per process before anything else."""
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id, **kwargs
    )


def make_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(mesh: Mesh, local_batch):
    """Process-local numpy batch (pytree) -> global arrays sharded on the batch axis."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), local_batch)
