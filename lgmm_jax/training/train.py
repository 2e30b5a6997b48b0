"""Training: the jitted, sharded train steps and the loop with logging, checkpoints and final evaluation.

The L-GMM step runs one encoder pass and one `jax.value_and_grad` of the collaborative objective
(`lgmm_jax.method.objective`): dL_D/dphi reaches the encoder, dL_G/dtheta the Gaussians. The memory bank is
updated inside the step and the mixture weights are re-counted from it after the gradient step.
`method=gmmseg` has its own step (`gmmseg_train_step`): GMMSeg's losses, queues and momentum updates.

Both steps serve every task (`lgmm_jax.tasks`): the config's task gives them its losses
(`tasks.base.StepLosses`: an image or a labelled pixel as the example, an auxiliary head's loss, the
softmax counterpart's batch recipe). The loop, checkpoints and evaluation are shared.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from etils import epath

from lgmm_jax import tasks
from lgmm_jax.deploy import forward
from lgmm_jax.method import gmmseg, losses
from lgmm_jax.runtime import checkpointing
from lgmm_jax.training import evaluation, experiment, initial_weights
from lgmm_jax.data import labelled, pipeline, protocols
from lgmm_jax.method.mixture import counted_log_weights, moment_matched_head, spherical_kmeans
from lgmm_jax.models.gmm import uniform_log_weights
from lgmm_jax.models.segmenter import auxiliary_logits
from lgmm_jax.method.objective import ObjectiveConfig
from lgmm_jax.runtime.sharding import (
    batch_sharding,
    global_batch,
    make_mesh,
    memory_placement,
    replicated,
)
from lgmm_jax.models.configured import create_model
from lgmm_jax.tasks.base import StepLosses
from lgmm_jax.training.state import (
    TrainState,
    create_optimizer,
    create_sharded_train_state,
    gmm_moment_rate,
    gmm_update,
    gmmseg_config,
    objective_config,
)


def console(message: str) -> None:
    """A progress line for the person running the job (chief process only)."""
    if jax.process_index() == 0:
        print(message, flush=True)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def step_key(state: TrainState) -> jax.Array:
    """This step's randomness (dropout, drop-path): the run key folded with the step number."""
    return jax.random.fold_in(state.rng, state.step)


def encoder_variables(state: TrainState, params) -> dict:
    return {"params": params, "batch_stats": state.batch_stats}


# What a training apply may write: BatchNorm statistics, and a segmenter's auxiliary logits.
TRAIN_COLLECTIONS = ["batch_stats", "auxiliary"]


def network_images(batch: dict, task_losses: StepLosses) -> jax.Array:
    """The batch's images as the network takes them: normalised here when they arrive uint8."""
    if task_losses.input_normalization is None:
        return batch["image"]
    return pipeline.normalize_on_device(batch["image"], task_losses.input_normalization)


def training_latents(model, state: TrainState, params, images: jax.Array):
    """(latents z, mutable updates) of a training-mode encoder pass: what L-GMM's and GMMSeg's losses take."""
    return model.apply(encoder_variables(state, params), images, train=True, method="encode",
                       mutable=TRAIN_COLLECTIONS, rngs={"dropout": step_key(state)})


def lgmm_train_step(
    state: TrainState,
    batch: dict,
    *,
    model,
    optimizer: optax.GradientTransformation,
    objective: ObjectiveConfig,
    task_losses: StepLosses,
    weight_ema: float,
    moment_rate: float | None = None,
) -> tuple[TrainState, dict]:
    """One collaborative step (Section 2.1): encoder by L_D, Gaussians by L_G, weights by counting.

    With `moment_rate` the Gaussians take no gradient step; they move that fraction of the way to the
    maximum-likelihood fit of the memory bank instead (`mixture.moment_matched_head`). The task's
    `task_losses` say what an example of the batch is (an image, or a labelled pixel).
    """
    log_weights = state.mixture["head"]["log_weights"]

    def loss_fn(params):
        z, updates = training_latents(model, state, params, network_images(batch, task_losses))
        key = jax.random.fold_in(step_key(state), 1)
        total, outputs = task_losses.lgmm_objective(
            z, batch, params["head"], log_weights, state.memory, objective, key)
        auxiliary = task_losses.auxiliary_loss(updates, batch)
        return total + auxiliary, (outputs, updates, auxiliary)

    (_, (outputs, updates, auxiliary)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, param_updates)
    rows = outputs.classes  # only the classes of the batch are updated (`objective.batch_classes`)
    if moment_rate is not None:
        head = params["head"]
        moved = moment_matched_head(
            {name: value[rows] for name, value in head.items()},
            outputs.bank_latents, outputs.bank_valid, outputs.bank_weights,
            objective.scale_floor, moment_rate,
        )
        params = {**params, "head": {name: head[name].at[rows].set(moved[name]) for name in head}}
    new_log_weights = log_weights.at[rows].set(
        counted_log_weights(outputs.counts, outputs.class_present, log_weights[rows], ema_decay=weight_ema)
    )
    metrics = dict(outputs.terms)
    if auxiliary_logits(updates) is not None:
        metrics["auxiliary_loss"] = auxiliary
    metrics["accuracy"] = task_losses.accuracy(outputs.class_log_likelihood, batch)
    metrics["effective_components"] = losses.masked_mean(
        losses.effective_components(outputs.hard_usage), outputs.class_present & outputs.distinct
    )
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=updates.get("batch_stats", state.batch_stats),
        mixture={"head": {"log_weights": new_log_weights}},
        opt_state=opt_state,
        memory=outputs.memory,
    )
    return new_state, metrics


def gmmseg_train_step(
    state: TrainState,
    batch: dict,
    *,
    model,
    optimizer: optax.GradientTransformation,
    settings: gmmseg.GMMSegConfig,
    scale_floor: float,
    task_losses: StepLosses,
) -> tuple[TrainState, dict]:
    """One step of GMMSeg (`lgmm_jax.method.gmmseg`): the encoder by the decode and component cross-entropies,
    then the step's admitted pixels into the queues, and every `settings.update_interval` steps (the
    first included, as GMMSeg's iteration counter starts at 0) the Gaussians of the batch's classes
    moved toward their queues. The Gaussians take no gradient step."""

    def loss_fn(params):
        z, updates = training_latents(model, state, params, network_images(batch, task_losses))
        class_logits = lambda scores: model.apply({"params": params}, scores, method="class_logits")  # noqa: E731
        total, outputs = task_losses.gmmseg_objective(z, batch, params["head"], class_logits, settings, scale_floor)
        auxiliary = task_losses.auxiliary_loss(updates, batch)
        return total + auxiliary, (outputs, updates, auxiliary)

    (_, (outputs, updates, auxiliary)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, param_updates)
    queue = gmmseg.enqueue(state.memory, outputs.latents, outputs.groups, outputs.selected)
    head = jax.lax.cond(
        state.step % settings.update_interval == 0,
        lambda: gmmseg.updated_head(params["head"], queue, outputs.classes, settings, scale_floor),
        lambda: params["head"],
    )
    metrics = dict(outputs.terms)
    if auxiliary_logits(updates) is not None:
        metrics["auxiliary_loss"] = auxiliary
    metrics["accuracy"] = task_losses.accuracy(outputs.class_logits, batch)
    new_state = state.replace(
        step=state.step + 1,
        params={**params, "head": head},
        batch_stats=updates.get("batch_stats", state.batch_stats),
        opt_state=opt_state,
        memory=queue,
    )
    return new_state, metrics


def softmax_train_step(
    state: TrainState, batch: dict, *, model, optimizer: optax.GradientTransformation, task_losses: StepLosses,
) -> tuple[TrainState, dict]:
    """The discriminative counterpart: the same encoder with a linear softmax head and the task's
    cross-entropy. Where the task has a batch recipe (`task_losses.mix`) the images are mixed first and the
    loss is taken against the soft targets; accuracy is still counted against the batch's labels."""
    images, targets = network_images(batch, task_losses), None
    if task_losses.mix is not None:
        images, targets = task_losses.mix(jax.random.fold_in(step_key(state), 2), images, batch)

    def loss_fn(params):
        logits, updates = model.apply(
            encoder_variables(state, params),
            images,
            train=True,
            mutable=TRAIN_COLLECTIONS,
            rngs={"dropout": step_key(state)},
        )
        return task_losses.softmax_loss(logits, batch, targets, updates), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    metrics = {"loss": loss, "accuracy": task_losses.accuracy(logits, batch)}
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, param_updates),
        batch_stats=updates.get("batch_stats", state.batch_stats),
        opt_state=opt_state,
    )
    return new_state, metrics


def reseed_means(state: TrainState, num_components: int) -> TrainState:
    """Re-place each class's means by spherical k-means on its remembered latents; weights back to uniform.

    Components that lost every latent come back where latents are (bench/study.py's runs: without it
    they stay dead).
    """
    head = state.params["head"]
    key = jax.random.fold_in(state.rng, -1 - state.step)
    means = spherical_kmeans(key, state.memory, head["means"])
    num_classes = means.shape[0]
    params = {**state.params, "head": {**head, "means": means}}
    mixture = {"head": {"log_weights": uniform_log_weights(num_classes, num_components)}}
    return state.replace(params=params, mixture=mixture)


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
    """The jitted step for the configured head on the config's task's batches, state donated, batch
    sharded over `data`."""
    task_losses = tasks.get(config).step_losses(config, num_classes)
    if config.model.head == "lgmm" and gmm_update(config.model) == "gmmseg":
        step = functools.partial(
            gmmseg_train_step,
            model=model,
            optimizer=optimizer,
            settings=gmmseg_config(config),
            scale_floor=config.model.scale_floor,
            task_losses=task_losses,
        )
    elif config.model.head == "lgmm":
        step = functools.partial(
            lgmm_train_step,
            model=model,
            optimizer=optimizer,
            objective=objective_config(config),
            task_losses=task_losses,
            weight_ema=config.loss.weight_ema,
            moment_rate=gmm_moment_rate(config.model),
        )
    else:
        step = functools.partial(softmax_train_step, model=model, optimizer=optimizer, task_losses=task_losses)
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

        model = create_model(config.model, num_classes)
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
    reseed_steps = {int(epoch * steps_per_epoch) for epoch in config.loss.get("reseed_epochs", ())}
    is_lgmm = config.model.head == "lgmm"
    reseed = jax.jit(reseed_means, static_argnums=1, out_shardings=shardings)
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
        if is_lgmm and step in reseed_steps:
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
