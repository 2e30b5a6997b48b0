"""Training: the jitted, sharded train steps and the loop with logging, checkpoints and final evaluation.

The step is the config's head's (`lgmm_jax.heads`: L-GMM's collaborative step, GMMSeg's update, the softmax
counterpart's), given the config's task's losses (`heads.base.StepLosses`: an image or a labelled pixel as
the example, an auxiliary head's loss, the softmax counterpart's batch recipe). The loop, checkpoints and
evaluation are shared by every head and task.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from lgmm_jax import heads, tasks
from lgmm_jax.deploy import forward
from lgmm_jax.runtime import checkpointing
from lgmm_jax.training import evaluation, experiment, initial_weights
from lgmm_jax.data import labelled, pipeline, protocols
from lgmm_jax.runtime.sharding import (
    batch_sharding,
    global_batch,
    make_mesh,
    memory_placement,
    replicated,
)
from lgmm_jax.training.state import create_optimizer, create_sharded_train_state


def console(message: str) -> None:
    """A progress line for the person running the job (chief process only)."""
    if jax.process_index() == 0:
        print(message, flush=True)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return config.num_train_steps
    return int(config.num_epochs * steps_per_epoch)


def first_non_finite(history: list[dict]) -> tuple[int, str] | None:
    """(step, metric name) of the first NaN/Inf among the logged step metrics, or None."""
    for record in history:
        for name, value in record.items():
            if not np.isfinite(value):
                return record["step"], name
    return None


METRICS_FILE = "metrics.jsonl"


def read_metrics(text: str, up_to_step: int) -> list[dict]:
    """The records of a metrics.jsonl up to and including `up_to_step` (a torn last line is dropped)."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", up_to_step + 1) <= up_to_step:
            records.append(record)
    return records


class MetricsWriter:
    """Step metrics to workdir/metrics.jsonl and TensorBoard event files (tensorboardX, no TensorFlow).

    Process 0 only. A resumed run starts from the records up to its checkpoint's step (the later ones
    are of steps it runs again) and TensorBoard purges them too, so an interrupted and resumed run
    leaves the same metrics.jsonl as one that never stopped. The file is rewritten whole, atomically,
    at each log step (a workdir on GCS cannot append; a kill never leaves half a line).
    """

    def __init__(self, workdir: str, enabled: bool, start_step: int = 0):
        self.enabled = enabled
        self.path = epath.Path(workdir) / METRICS_FILE
        self.records: list[dict] = []
        self.tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter

            if self.path.exists():
                self.records = read_metrics(self.path.read_text(), start_step)
                checkpointing.write_text_atomically(self.path, self.text())
            self.tensorboard = SummaryWriter(
                os.fspath(epath.Path(workdir) / "tensorboard"), purge_step=start_step + 1 if start_step else None
            )

    def text(self) -> str:
        return "".join(json.dumps(record) + "\n" for record in self.records)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        checkpointing.write_text_atomically(self.path, self.text())
        for name, value in record.items():
            if name != "step":
                self.tensorboard.add_scalar(f"train/{name}", value, record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def make_train_step(config, model, optimizer, shardings, mesh, num_classes: int):
    """The jitted step of the config's head on the config's task's batches, state donated, batch sharded
    over `data`."""
    task_losses = tasks.get(config).step_losses(config, num_classes)
    step = heads.get(config.model).train_step(config, model, optimizer, task_losses)
    return jax.jit(
        step,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (resuming from the latest checkpoint in `workdir`), then evaluate; returns results.json's dict.

    A run stopped at any moment (even SIGKILL) and started again with the same command ends with the
    numbers of a run that never stopped: the checkpoint holds the parameters, the optimiser state (and
    with it the learning-rate schedule's position), the memory bank, the mixture weights, the RNG key
    and the input iterator's position, all as they were after the checkpoint's step. SIGTERM (a
    preemption notice) checkpoints the step reached and raises `checkpointing.Preempted`.
    """
    mesh = make_mesh()
    config = experiment.check_config(config, mesh.devices.size, jax.process_count())
    config = initial_weights.with_source_conventions(config, workdir)
    with checkpointing.workdir_session(workdir), checkpointing.preemption_guard() as preemption:
        checkpointing.check_compatible(workdir, config)  # before any work: a wrong workdir fails at once
        protocol = experiment.resolve_protocol(config)
        train_source = experiment.data_source(protocol.dataset, protocol.train_split, config=config)
        config = experiment.resolved_data(config, protocol, train_source)
        check_evaluation_data(config, protocol, train_source)
        num_classes = protocols.num_known_classes(protocol, train_source)
        num_train = pipeline.count_examples(train_source, protocol.known_classes)
        steps_per_epoch = max(pipeline.steps_per_epoch(num_train, config.batch_size), 1)
        total_steps = total_train_steps(config, steps_per_epoch)
        image_shape = experiment.model_input_shape(config, protocol, train_source)

        model = heads.create_model(config.model, num_classes)
        optimizer, learning_rate = create_optimizer(config, steps_per_epoch, total_steps)
        state, shardings = create_sharded_train_state(config, model, optimizer, image_shape, num_classes, mesh)
        train_iter = experiment.train_stream(config, protocol, train_source)
        starting = bool(initial_weights.weights_of(config)) and not checkpointing.complete_steps_on_disk(workdir)
        if starting:  # read before anything is written: a file that cannot be used leaves the workdir as it was
            loaded, init_report = initial_weights.loaded_arrays(
                config, model, forward.model_variables(state), image_shape)

        with contextlib.closing(checkpointing.open_manager(workdir, config)) as checkpoints:
            state = checkpointing.restore_latest(checkpoints, state, shardings, train_iter)
            checkpointing.write_config(workdir, config)  # the workdir is this config's from here on
            record_split_lists(workdir, train_source)
            if starting:  # checkpointed as step 0 at once: from here on a rerun resumes and never reads the file
                state = initial_weights.start_from(state, loaded, shardings)
                checkpointing.save(checkpoints, 0, state, train_iter)
                console(initial_weights.summary(initial_weights.weights_of(config), init_report))
                if jax.process_index() == 0:
                    initial_weights.write_report(workdir, initial_weights.weights_of(config), init_report)
            start_step = int(state.step)
            memory = f", {memory_placement(mesh, state.memory.num_classes)}" if state.memory is not None else ""
            console(
                f"training {config.model.encoder}/{config.model.head} on {protocol.name} ({num_classes} known "
                f"classes, {num_train} examples, {steps_per_epoch} steps/epoch) for {total_steps} steps from "
                f"step {start_step} on {mesh.devices.size} device(s) in {jax.process_count()} process(es){memory}"
            )
            writer = MetricsWriter(workdir, enabled=jax.process_index() == 0, start_step=start_step)
            train_step = make_train_step(config, model, optimizer, shardings, mesh, num_classes)
            curve = curve_steps(config, steps_per_epoch, total_steps)
            with contextlib.closing(writer), preemption.steps() as preempted:
                for end_step in [s for s in curve if s > start_step] + [total_steps]:
                    state = run_steps(
                        config, state, int(state.step), end_step, total_steps, steps_per_epoch, train_iter,
                        train_step, shardings, mesh, learning_rate, checkpoints, writer, preempted,
                        after_log=lambda replaced: record_unreadable(workdir, replaced),
                    )
                    if end_step in curve:
                        evaluate_curve_point(config, workdir, model, state, protocol, mesh, curve[end_step])
        if preemption.notice.is_set():  # SIGTERM after the last step's check: its checkpoint is saved
            raise checkpointing.Preempted(
                f"preempted after step {total_steps}: checkpoint saved; rerun the same command to evaluate"
            )
        return evaluation.evaluate_and_write(config, workdir, model, state, protocol, mesh)


CURVE_DIR = "curve"


def curve_steps(config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int) -> dict[int, float]:
    """step -> epoch of each learning-curve evaluation (`eval.epochs`) that falls before the last step."""
    steps = {int(round(epoch * steps_per_epoch)): float(epoch) for epoch in config.eval.get("epochs", ())}
    return {step: epoch for step, epoch in sorted(steps.items()) if 0 < step < total_steps}


def evaluate_curve_point(config, workdir, model, state, protocol, mesh, epoch: float) -> None:
    """The final evaluation, run after `epoch` epochs into workdir/curve/epoch_E (once: a resumed run that
    passes the same step again finds its results.json and moves on)."""
    folder = os.path.join(workdir, CURVE_DIR, f"epoch_{epoch:g}")
    if epath.Path(folder, evaluation.RESULTS_FILE).exists():
        return
    console(f"learning curve: evaluating after epoch {epoch:g}")
    evaluation.evaluate_and_write(config, folder, model, state, protocol, mesh)


def check_evaluation_data(config: ml_collections.ConfigDict, protocol, train_source) -> None:
    """Open every set the final evaluation reads: data that is missing fails before training, not after.
    Every known class must have training images, and a set restricted to classes must hold some."""
    if protocol.known_classes is not None:
        counts = np.bincount(train_source.labels, minlength=train_source.num_classes)
        for label in protocol.known_classes:
            if counts[label] == 0:
                raise ValueError(f"known class {train_source.label_names[label]!r} has no training images in "
                                 f"{protocol.dataset}: add some, or leave it out of known_classes")
    for split in (protocol.validation_split, protocol.test_split):
        experiment.data_source(protocol.dataset, split, config=config)
    for unknown in protocol.unknown:
        source = experiment.data_source(unknown, config=config)
        if unknown.classes is not None and pipeline.count_examples(source, unknown.classes) == 0:
            names = [source.label_names[label] for label in unknown.classes]
            raise ValueError(f"the {unknown.split} split of {unknown.dataset} has no images of the unknown classes "
                             f"{names}: add test images of them, or evaluate on other unknown sets")


SPLITS_DIR = "splits"
UNREADABLE_FILE = "unreadable_files.txt"


def record_split_lists(workdir: str, train_source) -> None:
    """A labelled folder's or list's split listings into workdir/splits (process 0): written by a new run;
    a resumed run checks that they still hold, since a folder whose files changed would carve other splits."""
    if not isinstance(train_source, labelled.LabelledImageSource) or jax.process_index() != 0:
        return
    folder = epath.Path(workdir) / SPLITS_DIR
    listing = train_source.listing
    if (folder / "train.txt").exists():
        for split in labelled.SPLITS:
            path = folder / f"{split}.txt"
            if not path.exists() or path.read_text() != labelled.split_list_text(listing, split):
                raise ValueError(
                    f"the images of {train_source.name} changed since this run started ({path} no longer "
                    "matches them): restore the files, or start a new --workdir")
        return
    folder.mkdir(parents=True, exist_ok=True)
    for split in labelled.SPLITS:
        checkpointing.write_text_atomically(folder / f"{split}.txt", labelled.split_list_text(listing, split))
    checkpointing.write_text_atomically(folder / "classes.txt", "".join(f"{n}\n" for n in listing.class_names))


def step_inputs(local: dict) -> tuple[dict, dict[str, str]]:
    """A training stream's batch as the train step takes it (its arrays, and a mask: training batches are
    never padded), and path -> reason of the unreadable files its examples stand in for (the stream's
    ``replaced`` column, `pipeline.readable_example`)."""
    arrays = {key: value for key, value in local.items() if key != "replaced"}
    arrays["mask"] = np.ones(len(local["label"]), bool)
    replaced = dict(line.split("\t", 1) for text in local.get("replaced", ()) for line in str(text).splitlines()
                    if "\t" in line)
    return arrays, replaced


def record_unreadable(workdir: str, found: dict[str, str]) -> None:
    """workdir/unreadable_files.txt: every unreadable training file met (path, a tab, why), those listed by
    an earlier part of the run kept (process 0)."""
    if not found or jax.process_index() != 0:
        return
    path = epath.Path(workdir) / UNREADABLE_FILE
    listed = dict(line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line) if path.exists() else {}
    if set(found) <= set(listed):
        return
    listed.update(found)
    checkpointing.write_text_atomically(path, "".join(f"{p}\t{why}\n" for p, why in sorted(listed.items())))


def run_steps(config, state, start_step, end_step, total_steps, steps_per_epoch, train_iter, train_step,
              shardings, mesh, learning_rate, checkpoints, writer, preempted, after_log=lambda replaced: None):
    """Steps start_step+1 .. end_step of a run of total_steps: log (then `after_log(replaced)`, replaced:
    path -> reason of the unreadable files the batches stood in for so far), checkpoint (after the step,
    with the iterator's position after its batch), re-seed the means after the configured epochs, stop
    cleanly on preemption.

    `input_wait` (logged) is the share of the time since the last log that the loop waited for its next
    batch: the input pipeline's reading and the copy to the devices, beyond what the devices' work on the
    steps dispatched before hid (JAX dispatches a step and returns at once, so the next batch is read
    while the devices compute). Near 0: the devices are the limit; near 1: more workers would help."""
    head = heads.get(config.model)
    reseed_steps = head.reseed_steps(config, steps_per_epoch)
    reseed = jax.jit(head.reseed, static_argnums=1, out_shardings=shardings)
    pending: list[tuple[int, dict]] = []
    replaced: dict[str, str] = {}
    input_wait = 0.0
    last_log_time, last_log_step, started = time.time(), start_step, time.time()
    step = start_step
    while step < end_step:
        waiting = time.perf_counter()
        local, stood_in_for = step_inputs(next(train_iter))
        replaced.update(stood_in_for)
        batch = global_batch(local, mesh)
        input_wait += time.perf_counter() - waiting
        state, metrics = train_step(state, batch)
        step += 1
        pending.append((step, metrics))
        if step in reseed_steps:
            state = reseed(state, config.model.num_components)
        stop = preempted(step)  # once per step on every process: all of them agree on the step
        log_now = step % config.log_every_steps == 0 or step == total_steps
        save_now = step % config.checkpoint_every_steps == 0 or step == total_steps
        if log_now or save_now or stop:
            history = [{"step": s, **{k: float(v) for k, v in jax.device_get(m).items()}} for s, m in pending]
            pending.clear()
            bad = first_non_finite(history)
            if bad is not None:  # checked before any save: a checkpoint never holds a diverged state
                raise TrainingDivergedError(
                    f"non-finite {bad[1]} at step {bad[0]}; the last good checkpoint "
                    f"(step {checkpoints.latest_step()}) is kept: lower the learning rate or check the data"
                )
        if log_now:  # not at a preemption's step: the same records as an uninterrupted run
            now = time.time()
            images_per_second = (step - last_log_step) * config.batch_size / max(now - last_log_time, 1e-9)
            record = dict(history[-1])
            record["learning_rate"] = float(learning_rate(step - 1))
            record["images_per_second"] = images_per_second
            record["input_wait"] = min(input_wait / max(now - last_log_time, 1e-9), 1.0)
            writer.write(record)
            eta = (total_steps - step) * (now - started) / max(step - start_step, 1)
            console(
                f"step {step}/{total_steps} (epoch {step / steps_per_epoch:.1f}) "
                f"loss {record['loss']:.4f} acc {record['accuracy']:.3f} "
                f"{images_per_second:.0f} img/s input wait {record['input_wait']:.0%} ETA {eta:.0f}s"
            )
            last_log_time, last_log_step, input_wait = now, step, 0.0
            after_log(replaced)
        if save_now or stop:
            checkpointing.save(checkpoints, step, state, train_iter)
        if stop:
            checkpoints.wait_until_finished()
            raise checkpointing.Preempted(
                f"preempted at step {step}: checkpoint saved; rerun the same command to resume"
            )
    checkpoints.wait_until_finished()
    return state
