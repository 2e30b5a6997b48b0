"""Checkpoints (orbax) of the whole train state and the input iterator, and preemption handling.

Layout under the workdir: `checkpoints/<step>/{state,data}` written by an orbax `CheckpointManager`
(which writes to a temporary folder and renames it when complete, so a checkpoint half-written when the
process died is never loaded), and `config.json`, the config of the run that owns the checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

CONFIG_FILE = "config.json"
# Keys whose change alters the shape of what a checkpoint holds.
SHAPE_KEYS = (
    "dataset",
    "protocol",
    "protocol_split",
    "memory_size",
    "model.encoder",
    "model.head",
    "model.num_components",
    "model.latent_dim",
    "model.share_scale",
    "model.latent_normalization",
    "optimizer.name",
)


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved and the run stopped."""


class IncompatibleCheckpointError(ValueError):
    """The workdir holds checkpoints of a run whose model has another shape."""


def config_value(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value.get(part) if hasattr(value, "get") else None
    return value


def check_compatible(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuse a workdir whose saved config differs in a shape-defining key; never touch its files."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    for key in SHAPE_KEYS:
        old, new = config_value(saved, key), config_value(config, key)
        if isinstance(old, list):
            old = tuple(old)
        if old != new:
            raise IncompatibleCheckpointError(
                f"workdir {workdir} holds a run with {key}={old!r}, this config has {key}={new!r}: "
                f"use a new --workdir (the existing checkpoints are left untouched)"
            )


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    if jax.process_index() == 0:
        (epath.Path(workdir) / CONFIG_FILE).write_text(config.to_json(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir's run was trained with."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: --workdir must be the folder a training run wrote (it holds {CONFIG_FILE})"
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def open_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """The run's CheckpointManager, after checking that the workdir belongs to a compatible config."""
    check_compatible(workdir, config)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if not (epath.Path(workdir) / CONFIG_FILE).exists():
        write_config(workdir, config)
    return ocp.CheckpointManager(
        epath.Path(workdir) / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
        item_names=("state", "data"),
    )


def save(manager: ocp.CheckpointManager, step: int, state, train_iter) -> None:
    """Save the train state and the input iterator's position (the same on every process)."""
    if step in manager.all_steps():
        return
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(train_iter.get_state())
        ),
    )


def abstract_state(state, shardings):
    """ShapeDtypeStructs with the target shardings: what orbax restores into."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def restore_latest(manager: ocp.CheckpointManager, state, shardings, train_iter=None):
    """The latest complete checkpoint restored into `state`'s structure, or `state` when there is none."""
    step = manager.latest_step()
    if step is None:
        return state
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state(state, shardings)),
                data=ocp.args.JsonRestore(),
            ),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise IncompatibleCheckpointError(
            f"checkpoint {step} in {manager.directory} does not fit this config "
            f"({str(error).splitlines()[0][:200]}): use a new --workdir (the checkpoint is left untouched)"
        ) from None
    if train_iter is not None:
        train_iter.set_state(restored.data)
    return restored.state



@contextlib.contextmanager
def preemption_guard():
    """While active, SIGTERM only raises a flag; yields a function that says whether it arrived."""
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: received.set())
    try:
        yield received.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)
