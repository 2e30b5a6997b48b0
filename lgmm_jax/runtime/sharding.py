"""Device mesh and shardings: the batch split over `data`, parameters replicated, memory by class.

Only `jax.jit` with a `Mesh` and `NamedSharding` (no pmap). Each process builds its slice of the global
batch; `global_batch` turns those slices into global arrays, so one code path serves one CPU, one GPU
and a multi-host pod.
"""

from __future__ import annotations

import math

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


def memory_placement(mesh: Mesh, num_classes: int) -> str:
    """How `class_sharding` places the memory bank, in words (for the run's first console line)."""
    devices = mesh.devices.size
    if devices == 1:
        return "memory bank on 1 device"
    if num_classes % devices == 0:
        return f"memory bank split by class over {devices} devices"
    return f"memory bank replicated ({num_classes} classes do not split evenly over {devices} devices)"


def padded_batch_size(batch_size: int, num_devices: int) -> int:
    """The smallest multiple of `num_devices` that is at least `batch_size` (and at least one per device)."""
    if batch_size < 1:
        raise ValueError(f"a batch size must be at least 1, got {batch_size}")
    return -(-batch_size // num_devices) * num_devices


def check_batch_size(global_batch_size: int, num_devices: int, num_processes: int = 1) -> None:
    """The global training batch must split evenly over devices and processes (it is not padded: that
    would change the recipe)."""
    devices, processes = num_devices, num_processes
    if global_batch_size < 1 or global_batch_size % devices or global_batch_size % processes:
        multiple = math.lcm(devices, processes)
        raise ValueError(
            f"batch_size={global_batch_size} does not split evenly over {devices} devices in "
            f"{processes} process(es): set --config.batch_size to a multiple of {multiple}"
        )


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of the batch -> global arrays sharded over `data`.

    The slices of all processes, in process order, make the global batch: process p's rows land on
    its own devices, which hold one contiguous block of rows. The global batch is therefore the same
    for any number of processes exactly when each process reads the contiguous block
    `global_batch[p * b:(p + 1) * b]` (b = batch_size // process_count) of the global stream.
    """
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def eval_batch_size(config, num_devices: int | None = None) -> int:
    """``config.eval_batch_size`` rounded up to a multiple of the device count (all devices of all
    processes): evaluation batches are padded and masked, so a larger batch changes no number."""
    return padded_batch_size(config.eval_batch_size, jax.device_count() if num_devices is None else num_devices)
