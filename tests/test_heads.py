"""The head table (`lgmm_jax.heads`): every head behind one interface, and the whole road for every
(task, head, method) a config can ask for.

For each combination the config check accepts, on the task's tiny config (`test_tasks.tiny_config`): a
one-step run in-process (one jitted train step of the head the table picks, then the final evaluation),
its export, the export loaded again and its predictions on validation images. The references: the
parameters the run started from (`shared_runs.initial_parameters`: every array the step reaches has
moved), the head's own score list (results.json scores with it, and only with it), the model.json the
export wrote (its head) and the threshold (the loaded model decides `score >= threshold`, computed again
here).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from lgmm_jax import heads, tasks
from lgmm_jax.deploy import inference
from lgmm_jax.heads.base import Head
from lgmm_jax.runtime import checkpointing
from lgmm_jax.runtime.sharding import make_mesh
from lgmm_jax.training import evaluation, experiment, restore, train
from tests.shared_runs import initial_parameters
from tests.test_tasks import tiny_config

# Every (task, head, method) a config can name: each task's methods (`Task.methods`) with each head.
COMBINATIONS = [(task, head, method) for task in sorted(tasks.TASK_PACKAGES) for head in heads.HEADS
                for method in tasks.get(task).methods]
# The quick tier runs the classification road and the segmentation default; the rest (20-60 s each of
# compiling a segmenter's step, dense evaluation and StableHLO export) is the slow tier's.
QUICK = {("classification", head, method) for head in heads.HEADS for method in ("library", "paper")} | {
    ("segmentation", "lgmm", "library")}


def test_every_head_implements_the_interface():
    for name in heads.HEADS:
        head = heads.named(name)
        assert isinstance(head, Head) and head.name == name
        assert head.default_score in head.deployable_scores and set(head.deployable_scores) <= set(head.scores)
        assert head.default_pixel_score in head.deployable_pixel_scores
        assert set(head.deployable_pixel_scores) <= set(head.pixel_scores)
    with pytest.raises(ValueError, match=r"model.head='energy' is not one of \('lgmm', 'softmax'\)"):
        heads.named("energy")


def test_the_table_picks_the_update_rules_module_for_lgmm_only():
    config = tiny_config("segmentation", "lgmm")
    picked = {}
    for head in heads.HEADS:
        for update in heads.GMM_UPDATES:
            config.model.head, config.model.gmm_update = head, update
            picked[head, update] = type(heads.get(config.model)).__module__
    assert picked == {
        ("lgmm", "gradient"): "lgmm_jax.heads.lgmm", ("lgmm", "moment_matching"): "lgmm_jax.heads.lgmm",
        ("lgmm", "gmmseg"): "lgmm_jax.heads.gmmseg",
        **{("softmax", update): "lgmm_jax.heads.softmax" for update in heads.GMM_UPDATES}}
    config.model.gmm_update = "newton"
    with pytest.raises(ValueError, match="model.gmm_update='newton' is not one of"):
        heads.get(config.model)


def one_step_config(task: str, head: str, method: str):
    """The task's tiny config for one step of `method`, evaluated small and without figures."""
    config = tiny_config(task, head)
    config.method = method
    config.num_train_steps = 1
    config.checkpoint_every_steps = 1
    config.eval.figures = False
    if task == "segmentation":
        config.segmentation.eval_images = 8
        config.segmentation.fit_images = 8
        config.segmentation.picture_images = 1
        config.eval_batch_size = 8
    return config


@pytest.mark.parametrize("task, head, method", [
    combination if combination in QUICK else pytest.param(*combination, marks=pytest.mark.slow)
    for combination in COMBINATIONS])
def test_every_task_head_and_method_trains_evaluates_exports_loads_and_predicts(task, head, method, tmp_path):
    config = one_step_config(task, head, method)
    checked = experiment.check_config(config, num_devices=1)
    start = initial_parameters(checked)
    workdir = tmp_path / "run"
    results = train.train_and_evaluate(config, str(workdir))

    # One jitted step of the head the table picks moved every parameter array it reaches.
    trained = restore.restore_workdir(str(workdir), make_mesh())
    assert int(trained.step) == 1
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), start, jax.device_get(trained.variables["params"]))
    assert all(jax.tree.leaves(moved)), [jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(moved)
                                         if not m]

    # The evaluation scored every unknown set with the head's scores, and only with them.
    picked = heads.get(checked.model)
    assert results["head"] == head and results["open_set"]
    offered = picked.pixel_scores if task == "segmentation" else picked.scores
    for numbers in results["open_set"].values():
        scored = {name for name in numbers if not name.startswith("num_")}  # num_examples, num_images
        assert scored and scored <= set(offered), (scored, offered)
    assert json.loads((workdir / evaluation.RESULTS_FILE).read_text())["head"] == head

    # Its export loads as the task's model and decides by its threshold.
    from lgmm_jax import export

    export.export_model(str(workdir), str(tmp_path / "export"))
    description = json.loads((tmp_path / "export" / inference.MODEL_FILE).read_text())
    assert description["head"] == head and description["score"] == (
        picked.default_pixel_score if task == "segmentation" else picked.default_score)
    model = inference.load(str(tmp_path / "export"))
    assert type(model).__module__ == f"{tasks.TASK_PACKAGES[task]}.exported"
    protocol = experiment.resolve_protocol(checkpointing.read_config(str(workdir)))
    validation = experiment.data_source(protocol.dataset, protocol.validation_split, config=checked)
    images = np.stack([np.asarray(validation[i]["image"]) for i in range(3)])
    out = model.predict(images)
    spatial = images.shape[1:3] if task == "segmentation" else ()
    assert out["label"].shape == out["score"].shape == out["known"].shape == (3, *spatial)
    assert np.all(np.isfinite(out["score"]))
    np.testing.assert_array_equal(out["known"], out["score"] >= model.threshold)


def test_gmmsegs_update_is_refused_for_an_image_classifier():
    config = tiny_config("classification", "lgmm")
    config.model.gmm_update = "gmmseg"
    with pytest.raises(ValueError, match="model.gmm_update='gmmseg' trains a segmenter's per-pixel head, and "
                                         "model.encoder='small_cnn' is an image encoder"):
        experiment.check_config(config, num_devices=1)
