"""Checkpoints (orbax) of the whole train state and the input iterator, and preemption handling.

Layout under the workdir: `checkpoints/<step>/{state,data}` written by an orbax `CheckpointManager`, and
`config.json`, the config of the run that owns the checkpoints.

What a crash can leave behind, and what happens to it:

- orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it when complete (on GCS, where
  renames are not atomic, it writes `<step>/` and adds `commit_success.txt` last). A process killed
  mid-write leaves a folder orbax never lists as a step: the previous step is restored.
- A step folder without orbax's `commit_success.txt` (a copy cut short, a file system that lost data)
  is never loaded either: it is renamed to `<step>.orbax-checkpoint-tmp-incomplete` (kept, not deleted)
  and the previous complete step is restored.
- `config.json` is written (atomically, by process 0) only once the workdir's checkpoint, if any, has
  been restored, so a workdir whose checkpoint does not fit the config is left exactly as it was.

Every process calls `save` (orbax writes each array's shards from the process that holds them, and the
small JSON items from process 0).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import tempfile
import threading
from typing import Callable, Iterator

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
INCOMPLETE_SUFFIX = f"{ocp.path.atomicity.TMP_DIR_SUFFIX}-incomplete"
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
    """SIGTERM arrived; whatever was needed to resume is saved and the run stopped."""


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
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise IncompatibleCheckpointError(
            f"{path} is not valid JSON ({error}): use a new --workdir (nothing in this one was changed)"
        ) from None
    for key in SHAPE_KEYS:
        old, new = config_value(saved, key), config_value(config, key)
        if isinstance(old, list):
            old = tuple(old)
        if old != new:
            raise IncompatibleCheckpointError(
                f"workdir {workdir} holds a run with {key}={old!r}, this config has {key}={new!r}: "
                f"use a new --workdir (the existing checkpoints are left untouched)"
            )


def write_text_atomically(path: epath.Path, text: str) -> None:
    """Readers see the old file or the new one, never half of it (local: rename; GCS objects are atomic)."""
    if "://" in os.fspath(path):  # gs://...: an object is replaced whole
        path.write_text(text)
        return
    handle, temporary = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as f:
        f.write(text)
    os.replace(temporary, os.fspath(path))


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Record the config that owns the workdir's checkpoints (process 0; kept if already there)."""
    path = epath.Path(workdir) / CONFIG_FILE
    if jax.process_index() == 0 and not path.exists():
        write_text_atomically(path, config.to_json(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir's run was trained with."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: --workdir must be the folder a training run wrote (it holds {CONFIG_FILE})"
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def absolute(workdir: str) -> epath.Path:
    """The workdir as an absolute path: orbax's array writer rejects relative ones (`--workdir=workdir`).

    A URL (gs://...) is absolute already.
    """
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def open_manager(
    workdir: str, config: ml_collections.ConfigDict, *, read_only: bool = False
) -> ocp.CheckpointManager:
    """The run's CheckpointManager, after checking that the workdir belongs to a compatible config.

    Writes nothing (config.json comes with `write_config` once a restore has succeeded). `read_only`
    (evaluation, export) also creates no folder.
    """
    check_compatible(workdir, config)
    if not read_only:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    return ocp.CheckpointManager(
        absolute(workdir) / CHECKPOINT_DIR,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_checkpoints, create=not read_only, read_only=read_only
        ),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
    )


def path_name(path) -> str:
    """'params/head/means' for a tree path, whether its nodes are dataclass fields or dict keys."""
    return "/".join(str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key)))) for key in path)


def shape_mismatch(manager: ocp.CheckpointManager, step: int, state) -> str | None:
    """The first array whose saved shape differs from `state`'s (read from metadata, no array data)."""
    saved = manager.item_metadata(step)["state"]
    saved_shapes = {
        path_name(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]
        if hasattr(leaf, "shape")
    }
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = path_name(path)
        expected = tuple(leaf.shape)
        if saved_shapes.get(name, expected) != expected:
            return f"{name} is {saved_shapes[name]} there, {expected} here"
    return None


def save(manager: ocp.CheckpointManager, step: int, state, train_iter) -> None:
    """Save the train state and the input iterator's position (called by every process).

    The iterator's state is the same on every process (each counts the elements of its own slice), so
    orbax writing it from process 0 only is enough.
    """
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


def step_path(manager: ocp.CheckpointManager, step: int) -> epath.Path:
    return epath.Path(manager.directory) / str(step)


def is_committed(manager: ocp.CheckpointManager, step: int) -> bool:
    """orbax writes commit_success.txt into a step folder as the last act of saving it."""
    return (step_path(manager, step) / ocp.path.atomicity.COMMIT_SUCCESS_FILE).exists()


def set_aside_incomplete(manager: ocp.CheckpointManager, step: int) -> None:
    """Rename an uncommitted step folder so that orbax sees it as an unfinished write.

    Renamed rather than deleted: nothing in a workdir is destroyed. Where renaming fails (a read-only
    workdir) the folder stays as it is; it is skipped all the same.
    """
    source = step_path(manager, step)
    target, copies = source.parent / f"{step}{INCOMPLETE_SUFFIX}", 0
    while target.exists():
        copies += 1
        target = source.parent / f"{step}{INCOMPLETE_SUFFIX}-{copies}"
    logging.warning("checkpoint %s is incomplete (no commit marker): not loaded, kept as %s", source, target)
    try:
        source.rename(target)
    except OSError as error:
        logging.warning("could not rename %s (%s): skipped", source, error)


def latest_committed_step(manager: ocp.CheckpointManager) -> int | None:
    """The newest complete step (None: start afresh).

    Process 0 first sets aside the uncommitted step folders newer than it (see the module docstring);
    every process then sees the same steps.
    """
    if jax.process_index() == 0:
        newest_first = sorted(manager.all_steps(), reverse=True)
        for step in itertools.takewhile(lambda step: not is_committed(manager, step), newest_first):
            set_aside_incomplete(manager, step)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("lgmm_jax: incomplete checkpoints set aside")
    manager.reload()
    return max((step for step in manager.all_steps() if is_committed(manager, step)), default=None)


def first_sentence(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(". ")[0].rstrip(":.")[:300]


def restore_latest(manager: ocp.CheckpointManager, state, shardings, train_iter=None):
    """The latest complete checkpoint restored into `state`'s structure, or `state` when there is none.

    `state` may be concrete or abstract (`jax.eval_shape`); `train_iter` (a grain iterator) is moved to
    the position saved with the state.
    """
    step = latest_committed_step(manager)
    if step is None:
        return state
    mismatch = shape_mismatch(manager, step, state)
    if mismatch:
        raise IncompatibleCheckpointError(
            f"checkpoint {step} in {manager.directory} does not fit this config ({mismatch}): "
            f"use a new --workdir (the checkpoint is left untouched)"
        )
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
            f"({first_sentence(error)}): use a new --workdir (the checkpoint is left untouched)"
        ) from None
    if train_iter is not None:
        train_iter.set_state(restored.data)
    return restored.state


class Preemption:
    """SIGTERM (the preemption notice of Cloud TPU, GKE, SLURM, ...) during a training run.

    Inside `steps()` the training loop asks `reached(step)` once after every step, on every process,
    and checkpoints and stops when it says so. With one process SIGTERM only sets a flag there; outside
    `steps()` (setup, evaluation: nothing unsaved to lose) it raises `Preempted` at once. With several
    processes JAX's preemption service (started by `jax.distributed.initialize`) catches SIGTERM on any
    host and `multihost_utils.reached_preemption_sync_point` makes all hosts stop at the same step.
    """

    def __init__(self, multi_process: bool):
        self.multi_process = multi_process
        self.notice = threading.Event()
        self.in_steps = False

    def handle_sigterm(self, signum, frame) -> None:
        del signum, frame
        self.notice.set()
        if not self.in_steps:
            raise Preempted("preempted (SIGTERM) outside the training steps: nothing was lost; "
                            "rerun the same command to continue")

    def reached(self, step: int) -> bool:
        """Whether to checkpoint at `step` and stop (call after every step, on every process)."""
        if self.multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.notice.is_set()

    @contextlib.contextmanager
    def steps(self) -> Iterator[Callable[[int], bool]]:
        """The training steps: SIGTERM is deferred to the next `reached` check."""
        self.in_steps = True
        try:
            yield self.reached
        finally:
            self.in_steps = False


@contextlib.contextmanager
def preemption_guard() -> Iterator[Preemption]:
    """Handle SIGTERM as a preemption notice for the duration of a run (see `Preemption`)."""
    preemption = Preemption(multi_process=jax.process_count() > 1)
    if preemption.multi_process or threading.current_thread() is not threading.main_thread():
        yield preemption  # JAX's preemption service holds SIGTERM; Python may only handle it in main
        return
    previous = signal.signal(signal.SIGTERM, preemption.handle_sigterm)
    try:
        yield preemption
    finally:
        signal.signal(signal.SIGTERM, previous)
