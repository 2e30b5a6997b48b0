"""The task table (`lgmm_jax.tasks`): the same checks over every registered task, and no task switch
outside it.

For each task and head on a tiny config: the config check accepts the task's own model kind and refuses
the other one; one jitted train step built from the task's losses (`heads.base.StepLosses`) runs on a batch
of the task's own training stream and moves every parameter array the loss reaches, with a finite loss and
an accuracy in [0, 1]. The references: the batch's labels (accuracy counted again from the step's own
model outputs) and the parameters before the step.

For each task's shared trained run (the session's): re-evaluation gives training's results.json, whole,
the export loads as the task's exported model, and its predictions' decisions are the
threshold's (score >= threshold, computed again here).

The source itself: outside `lgmm_jax/tasks/`, no module asks which task runs, and none cites a document
that is not in the repository.
"""

from __future__ import annotations

import json
import pathlib
import re

import jax
import numpy as np
import pytest

import configs.default
import configs.scenes
from lgmm_jax import tasks
from lgmm_jax.data import protocols
from lgmm_jax.deploy import forward, inference
from lgmm_jax.runtime import checkpointing
from lgmm_jax.training import evaluation, experiment, train
from lgmm_jax.heads import base as head_base
from lgmm_jax.heads import create_model
from lgmm_jax.runtime.sharding import global_batch, make_mesh
from lgmm_jax.training.state import create_optimizer, create_sharded_train_state
from lgmm_jax.tasks.base import Task
from tests.shared_runs import shared_default_run, shared_export
from tests.test_cli import segmentation_reference_run

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "lgmm_jax"


def tiny_config(task: str, head: str):
    """The task's default config at the smallest size that still trains: one batch of 8."""
    if task == "classification":
        config = configs.default.get_config()
    else:
        config = configs.scenes.get_config()
        config.model.decoder = {"widths": (8, 16, 40, 64), "depths": (1, 1, 1, 1), "decoder_width": 16}
    config.model.head = head
    config.batch_size = 8
    config.memory_size = 16
    config.loss.bank_sample_size = 16
    config.optimizer.warmup_epochs = 0.0  # the first step at the full rate
    return config


OTHER_ENCODER = {"classification": "segformer_b0", "segmentation": "small_cnn"}


def training_pass(model):
    """`model`'s training-mode outputs as a jitted function of (variables, images, dropout key): one
    compiled program instead of every operation dispatched on its own."""
    return jax.jit(lambda variables, images, key: model.apply(
        variables, images, train=True, mutable=head_base.TRAIN_COLLECTIONS, rngs={"dropout": key})[0])


def test_every_registered_task_implements_the_interface():
    for name in tasks.TASK_PACKAGES:
        task = tasks.get(name)
        assert isinstance(task, Task) and task.name == name
    with pytest.raises(ValueError, match="task='detection' is not one of"):
        tasks.get("detection")


@pytest.mark.parametrize("task", sorted(tasks.TASK_PACKAGES))
def test_the_config_check_refuses_the_other_tasks_model(task):
    config = tiny_config(task, "lgmm")
    assert experiment.check_config(config, num_devices=1).task == task
    config.model.encoder = OTHER_ENCODER[task]
    with pytest.raises(ValueError, match=f"task='{task}' needs .* as model.encoder, got '{OTHER_ENCODER[task]}'"):
        experiment.check_config(config, num_devices=1)


@pytest.mark.parametrize("task, head", [
    (task, head) if (task, head) != ("segmentation", "softmax")
    # ~45 s of compiling: the slow tier's (the quick tier checks its per-pixel loss in test_losses.py)
    else pytest.param(task, head, marks=pytest.mark.slow)
    for task in sorted(tasks.TASK_PACKAGES) for head in ("lgmm", "softmax")])
def test_one_train_step_of_each_head_on_the_tasks_own_batches(task, head):
    config = experiment.check_config(tiny_config(task, head), num_devices=1)
    mesh = make_mesh()
    protocol = experiment.resolve_protocol(config)
    source = experiment.data_source(protocol.dataset, protocol.train_split, config=config)
    num_classes = protocols.num_known_classes(protocol, source)
    input_shape = experiment.model_input_shape(config, protocol, source)
    model = create_model(config.model, num_classes)
    optimizer, _ = create_optimizer(config, steps_per_epoch=10, total_steps=10)
    state, shardings = create_sharded_train_state(config, model, optimizer, input_shape, num_classes, mesh)
    local, _ = train.step_inputs(next(experiment.train_stream(config, protocol, source)))
    assert local["image"].shape == (8, *input_shape)
    before = jax.device_get(state.params)
    variables, key = jax.device_get(forward.model_variables(state)), head_base.step_key(state)  # state is donated
    step = train.make_train_step(config, model, optimizer, shardings, mesh, num_classes)
    new_state, metrics = step(state, global_batch(local, mesh))
    metrics = jax.device_get(metrics)
    assert int(new_state.step) == 1 and np.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, jax.device_get(new_state.params))
    assert all(jax.tree.leaves(moved)), [jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(moved)
                                         if not m]
    # The step's accuracy, counted again from the class scores of the step's own (training-mode) pass.
    images = head_base.network_images(local, tasks.get(config).step_losses(config, num_classes))  # as the step takes them
    outputs = training_pass(model)(variables, images, key)
    class_scores = np.asarray(outputs[1] if isinstance(outputs, tuple) else outputs)  # a classifier's L-GMM: (z, scores)
    labels = local["label"]
    if task == "segmentation":  # at the scores' resolution, nearest (PyTorch's rule), void excluded
        rows = np.arange(class_scores.shape[1]) * labels.shape[1] // class_scores.shape[1]
        cols = np.arange(class_scores.shape[2]) * labels.shape[2] // class_scores.shape[2]
        labels = labels[:, rows][:, :, cols]
    labelled = labels != config.segmentation.void_label
    expected = np.mean(np.argmax(class_scores, -1)[labelled] == labels[labelled])
    assert metrics["accuracy"] == pytest.approx(expected, abs=1e-6)


def shared_run(task: str, tmp_path_factory) -> pathlib.Path:
    """The session's trained run of the task's default config (read only here)."""
    if task == "classification":
        return shared_default_run(tmp_path_factory)
    return segmentation_reference_run(tmp_path_factory)


@pytest.mark.parametrize("task", [
    # segmentation's shared run is the testbed reference, a CLI run the slow tier makes anyway
    pytest.param(task, marks=pytest.mark.slow) if task == "segmentation" else task
    for task in sorted(tasks.TASK_PACKAGES)])
def test_a_trained_run_of_every_task_evaluates_exports_loads_and_predicts(task, tmp_path_factory, tmp_path):
    """The task's shared run evaluated again in-process gives its training run's results.json, whole; its
    export (shared with test_segmentation.py for the segmentation reference) loads as the task's model
    and predicts at the input's size, deciding by its threshold."""
    run = shared_run(task, tmp_path_factory)
    training = json.loads((run / evaluation.RESULTS_FILE).read_text())
    evaluated = evaluation.evaluate_workdir(str(run), str(tmp_path / "evaluation"),
                                          config_overrides={"eval.figures": False})
    assert json.loads(json.dumps(evaluated)) == training
    assert (tmp_path / "evaluation" / "report.md").exists()

    model = inference.load(str(shared_export(tmp_path_factory, run)))
    assert type(model).__module__ == f"{tasks.TASK_PACKAGES[task]}.exported"
    config = checkpointing.read_config(str(run))
    protocol = experiment.resolve_protocol(config)
    validation = experiment.data_source(protocol.dataset, protocol.validation_split, config=config)
    images = np.stack([np.asarray(validation[i]["image"]) for i in range(4)])
    out = model.predict(images)
    spatial = images.shape[1:3] if task == "segmentation" else ()
    assert out["label"].shape == out["score"].shape == out["known"].shape == (4, *spatial)
    np.testing.assert_array_equal(out["known"], out["score"] >= model.threshold)


# What asking which task runs looks like: `is_segmentation(...)`, `config.task == ...`,
# `task_name(config) != ...`, `results.get("task") == ...`, a `pixels=None` switch.
TASK_SWITCH = re.compile(r'is_segmentation\(|\btask(_name\([^)]*\))?\s*[!=]=|pixels is None|\.get\("task"[^)]*\)\s*[!=]=')


def test_no_module_outside_the_tasks_folder_asks_which_task_runs():
    switches = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
                for path in PACKAGE.rglob("*.py") if "tasks" not in path.relative_to(PACKAGE).parts
                for number, line in enumerate(path.read_text().splitlines(), 1) if TASK_SWITCH.search(line)]
    assert not switches, "\n".join(switches)


def test_no_module_cites_a_document_outside_the_repository_or_an_issue():
    citations = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
                 for path in PACKAGE.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"(?<!docs/)DESIGN\.md|\bissue[ -]?#?\d", line, re.IGNORECASE)]  # docs/ is the repository's
    assert not citations, "\n".join(citations)

