"""Device mesh and shardings: the batch split over `data`, parameters replicated, memory by class.

Only `jax.jit` with a `Mesh` and `NamedSharding` (no pmap). Each process builds its slice of the global
batch; `global_batch` turns those slices into global arrays, so one code path serves one CPU, one GPU
and a multi-host pod.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over all devices (or the first `num_devices`), axis `data`, automatic sharding."""
    devices = jax.devices()
    if num_devices is not None:
        devices = devices[:num_devices]
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def class_sharding(mesh: Mesh, num_classes: int) -> NamedSharding:
    """Memory banks split along the class axis when the class count divides evenly, else replicated."""
    if num_classes % mesh.devices.size == 0:
        return NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return replicated(mesh)


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over devices and processes."""
    devices, processes = mesh.devices.size, jax.process_count()
    if global_batch_size % devices or global_batch_size % processes:
        raise ValueError(
            f"batch_size={global_batch_size} does not divide over {devices} devices in "
            f"{processes} processes: set --config.batch_size to a multiple of {devices}"
        )


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of the batch -> global arrays sharded over `data`."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }
