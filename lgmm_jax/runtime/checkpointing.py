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
- A committed step whose files are damaged (truncated, missing, undecodable: bit-rot, a bad copy) is
  found when restoring it: a training run renames it to `<step>.orbax-checkpoint-tmp-damaged` and
  restores the step before it; evaluation and export, read-only, skip it. One `warning:` line says so
  (`restore_latest`).
- A full disk while saving leaves a `<step>.orbax-checkpoint-tmp` folder, never loaded, and the complete
  steps as they were: `disk_full_reported` says which in one line.
- `config.json` is written (atomically, by process 0) only once the workdir's checkpoint, if any, has
  been restored, so a workdir whose checkpoint does not fit the config is left exactly as it was.

Every process calls `save` (orbax writes each array's shards from the process that holds them, and the
small JSON items from process 0).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import signal
import sys
import tempfile
import threading
from typing import Callable, Iterator

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from lgmm_jax.runtime import workdir_claim

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
INCOMPLETE_SUFFIX = f"{ocp.path.atomicity.TMP_DIR_SUFFIX}-incomplete"
DAMAGED_SUFFIX = f"{ocp.path.atomicity.TMP_DIR_SUFFIX}-damaged"
# What TensorStore and orbax say when a checkpoint's files are truncated, missing or corrupt.
DAMAGE_STATUSES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "FAILED_PRECONDITION")
DAMAGE_ERRORS = (FileNotFoundError, json.JSONDecodeError, EOFError, UnicodeDecodeError)
# Keys whose change alters the shape of what a checkpoint holds.
SHAPE_KEYS = (
    "dataset",
    "protocol",
    "protocol_split",
    "known_classes",
    "memory_size",
    "model.encoder",
    "model.encoder_widths",
    "model.head",
    "model.num_components",
    "model.latent_dim",
    "model.share_scale",
    "model.latent_normalization",
    "optimizer.name",
)
# What a shape key meant in a config written before the key existed.
SHAPE_KEY_DEFAULTS = {"model.encoder_widths": (), "known_classes": ()}


class Preempted(Exception):
    """SIGTERM arrived; whatever was needed to resume is saved and the run stopped."""


class IncompatibleCheckpointError(ValueError):
    """The workdir holds checkpoints of a run whose model has another shape."""


def config_value(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value.get(part) if hasattr(value, "get") else None
    return value


def comparable(value, key: str):
    """A shape key's value as a config of any age writes it: the default where the key is missing, a
    sequence as a tuple (JSON gives lists)."""
    value = SHAPE_KEY_DEFAULTS.get(key) if value is None else value
    return tuple(value) if isinstance(value, (list, tuple)) else value


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
        old, new = (comparable(config_value(c, key), key) for c in (saved, config))
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


def array_shapes(tree) -> dict[str, tuple[int, ...]]:
    """Path name -> shape of every array (or array metadata) in a tree."""
    return {
        path_name(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if hasattr(leaf, "shape")
    }


def misfit(saved_metadata, state) -> str | None:
    """How a checkpoint's arrays (from its metadata) differ from `state`'s, or None when they fit."""
    saved, expected = array_shapes(saved_metadata), array_shapes(state)
    for name, shape in expected.items():
        if name not in saved:
            return f"{name} is not there"
        if saved[name] != shape:
            return f"{name} is {saved[name]} there, {shape} here"
    extra = sorted(set(saved) - set(expected))
    return f"{extra[0]} is there, not in this config's state" if extra else None


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


def is_read_only(manager: ocp.CheckpointManager) -> bool:
    """Whether the manager was opened read-only (evaluation, export): it must rename nothing."""
    return bool(manager._options.read_only)  # pylint: disable=protected-access  (no public accessor)


def set_aside(manager: ocp.CheckpointManager, step: int, suffix: str) -> epath.Path | None:
    """Rename step folder `step` to `<step><suffix>` (a free name): orbax no longer lists it as a step.

    Renamed rather than deleted: nothing in a workdir is destroyed. Returns the new path, or None where
    renaming failed (a read-only workdir): the folder stays as it is and is skipped all the same.
    """
    source = step_path(manager, step)
    target, copies = source.parent / f"{step}{suffix}", 0
    while target.exists():
        copies += 1
        target = source.parent / f"{step}{suffix}-{copies}"
    try:
        source.rename(target)
    except OSError as error:
        logging.warning("could not rename %s (%s): skipped", source, error)
        return None
    return target


def latest_committed_step(manager: ocp.CheckpointManager) -> int | None:
    """The newest complete step (None: start afresh)."""
    steps = committed_steps_newest_first(manager)
    return steps[0] if steps else None


def committed_steps_newest_first(manager: ocp.CheckpointManager) -> list[int]:
    """The complete steps, newest first.

    Process 0 of a training run first sets aside the uncommitted step folders newer than them (see the
    module docstring; evaluation and export, read-only, only skip them); every process then sees the
    same steps.
    """
    if jax.process_index() == 0 and not is_read_only(manager):
        newest_first = sorted(manager.all_steps(), reverse=True)
        for step in itertools.takewhile(lambda step: not is_committed(manager, step), newest_first):
            target = set_aside(manager, step, INCOMPLETE_SUFFIX)
            logging.warning("checkpoint %s is incomplete (no commit marker): not loaded, kept as %s",
                            step_path(manager, step), target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("lgmm_jax: incomplete checkpoints set aside")
    manager.reload()
    return sorted((step for step in manager.all_steps() if is_committed(manager, step)), reverse=True)


def first_sentence(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(". ")[0].rstrip(":.")[:300]


def error_chain(error: BaseException) -> list[BaseException]:
    """`error` and the errors it was raised from (orbax wraps TensorStore's), outermost first."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def damage_in(error: BaseException) -> str | None:
    """What in `error` says a checkpoint's files are damaged (truncated, missing, undecodable), in a few
    words; None for anything else (a storage outage, a permission problem: the files may be fine)."""
    for cause in reversed(error_chain(error)):  # the innermost cause names the file
        text = " ".join(str(cause).split())
        if text.split(":", 1)[0] in DAMAGE_STATUSES:
            return tensorstore_summary(text)
        if isinstance(cause, DAMAGE_ERRORS):
            return first_sentence(cause)
    return None


def tensorstore_summary(text: str) -> str:
    """'OUT_OF_RANGE reading params.head.means/0.0.0: Requested byte range [..) is not valid for value of
    size 1000' from TensorStore's error text (which goes on with paths and a dump of its spec)."""
    text = text.split(" [tensorstore_spec=")[0]
    keys = re.findall(r'Error reading "([^"]+)"', text)
    reading = f" reading {keys[0]}" if keys else ""
    return f"{text.split(':', 1)[0]}{reading}: {text.rsplit(': ', 1)[-1]}"[:200]


class DamagedCheckpoint(Exception):
    """A committed checkpoint whose files cannot be read back (raised and handled in this module)."""


class UnreadableCheckpointError(OSError):
    """A checkpoint could not be read for a reason that is not damage (the storage did not answer)."""


class DamagedCheckpointError(ValueError):
    """A damaged checkpoint in a multi-process run: named, left for the operator to set aside."""


def restore_step(manager: ocp.CheckpointManager, step: int, state, shardings):
    """Checkpoint `step` restored into `state`'s structure (orbax's Composite: `.state`, `.data`).

    Raises:
      IncompatibleCheckpointError: its arrays do not fit `state` (from its metadata: no array read).
      DamagedCheckpoint: a file of it is truncated, missing or undecodable.
      UnreadableCheckpointError: reading it failed otherwise; nothing was changed.
    """
    where = f"checkpoint {step} in {manager.directory}"
    try:
        mismatch = misfit(manager.item_metadata(step)["state"], state)
        if mismatch:
            raise IncompatibleCheckpointError(
                f"{where} does not fit this config ({mismatch}): use a new --workdir "
                f"(the checkpoint is left untouched)"
            )
        return manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state(state, shardings)),
                data=ocp.args.JsonRestore(),
            ),
        )
    except (IncompatibleCheckpointError, Preempted):
        raise
    except Exception as error:  # pylint: disable=broad-exception-caught  (orbax raises bare Exception)
        damage = damage_in(error)
        if damage:
            raise DamagedCheckpoint(damage) from None
        raise UnreadableCheckpointError(
            f"could not read {where} ({first_sentence(error)}): nothing was changed; rerun once the "
            f"storage answers"
        ) from None


def handle_damaged(manager: ocp.CheckpointManager, step: int, damage: DamagedCheckpoint, previous) -> None:
    """Say in one line which checkpoint is damaged and what happens instead; set it aside in training.

    A training run (process 0) renames it to `<step>.orbax-checkpoint-tmp-damaged` (kept, never
    deleted; orbax no longer lists it); evaluation and export (read-only) leave it as it is and skip it.
    With several processes the run stops instead, naming the step: a restore is collective in orbax,
    and the processes that did read their shards wait for the others.
    """
    where = f"checkpoint {step} in {manager.directory} is damaged ({damage})"
    fallback = f"using checkpoint {previous} instead" if previous is not None else "no earlier checkpoint"
    if jax.process_count() > 1:
        raise DamagedCheckpointError(
            f"{where}: move {step_path(manager, step)} aside (e.g. to {step}.damaged) and rerun the same "
            f"command to resume from the checkpoint before it"
        )
    if is_read_only(manager):
        warn(f"{where}; left as it is (read-only); {fallback}")
        return
    target = set_aside(manager, step, DAMAGED_SUFFIX)
    kept = f"set aside as {target.name}" if target is not None else "could not be renamed, skipped"
    start = f"resuming from checkpoint {previous}" if previous is not None else "starting afresh"
    warn(f"{where}: {kept}; {start}")


def warn(message: str) -> None:
    """One `warning: ...` line on stderr (process 0 only)."""
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def restore_latest(manager: ocp.CheckpointManager, state, shardings, train_iter=None):
    """The latest complete, readable checkpoint restored into `state`'s structure, or `state` when there
    is none.

    `state` may be concrete or abstract (`jax.eval_shape`); `train_iter` (a grain iterator) is moved to
    the position saved with the state. A damaged checkpoint is skipped for the one before it (see
    `handle_damaged`).
    """
    steps = committed_steps_newest_first(manager)
    for step, previous in zip(steps, steps[1:] + [None]):
        try:
            restored = restore_step(manager, step, state, shardings)
        except DamagedCheckpoint as damage:
            handle_damaged(manager, step, damage, previous)
            manager.reload()  # it no longer lists a step set aside: the run saves that step again
            continue
        if train_iter is not None:
            train_iter.set_state(restored.data)
        return restored.state
    return state


class DiskFullError(OSError):
    """The workdir's disk filled up while the run wrote to it; the complete checkpoints are intact."""


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC from Python, or TensorStore's RESOURCE_EXHAUSTED on writing a local file (not XLA's
    out-of-memory, not a bucket's rate limit, which TensorStore reports with the same status)."""
    return any(
        (isinstance(cause, OSError) and cause.errno == errno.ENOSPC)
        or all(part in str(cause) for part in ("RESOURCE_EXHAUSTED", "Error writing", "local file"))
        for cause in error_chain(error)
    )


def complete_steps_on_disk(workdir: str) -> list[int]:
    """The committed checkpoint steps in `workdir`, read from its folders (no orbax manager needed)."""
    folder = epath.Path(workdir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(
        int(path.name) for path in folder.iterdir()
        if path.name.isdigit() and (path / ocp.path.atomicity.COMMIT_SUCCESS_FILE).exists()
    )


def disk_full_message(workdir: str) -> str:
    steps = complete_steps_on_disk(workdir)
    if not steps:
        return (f"the disk of {workdir} is full: no checkpoint was complete yet; free space and rerun the "
                f"same command (it starts afresh)")
    intact = ", ".join(map(str, steps))
    return (f"the disk of {workdir} is full: checkpoints {intact} are intact (a half-written one is never "
            f"loaded); free space and rerun the same command to resume from step {steps[-1]}")


@contextlib.contextmanager
def disk_full_reported(workdir: str) -> Iterator[None]:
    """Turn a full disk anywhere in the block (a checkpoint, metrics, results) into `DiskFullError`:
    one line that says so, which checkpoints are intact and that rerunning resumes."""
    try:
        yield
    except Exception as error:  # pylint: disable=broad-exception-caught  (orbax raises ValueError, bare Exception)
        if not is_disk_full(error):
            raise
        raise DiskFullError(disk_full_message(workdir)) from None


@contextlib.contextmanager
def workdir_session(workdir: str) -> Iterator[None]:
    """A training run's hold on its workdir: its alone for the block (`workdir_claim.claimed`), and a
    full disk reported in one line (`disk_full_reported`)."""
    with workdir_claim.claimed(workdir), disk_full_reported(workdir):
        yield


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
