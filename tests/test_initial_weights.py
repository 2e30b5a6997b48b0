"""`--config.init.weights`: a new run starts from exactly the arrays of its source, checkpointed as step 0;
a resumed run never reads the source again; an unusable file is one line, a non-zero exit, nothing written.

The source here is a run of this library (the shared default run, L-GMM on digits) whose encoder starts a
softmax run; the published layouts go through the same `pretrained.plan` and are proved equal to
their reference implementations in test_pretrained.py.
"""
import json
import os
import shutil
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

import configs.default
from lgmm_jax.data import protocols
from lgmm_jax.runtime import checkpointing, cli
from lgmm_jax.training import experiment, initial_weights, restore, train
from lgmm_jax.heads import create_model
from lgmm_jax.runtime.sharding import make_mesh
from lgmm_jax.training.state import create_optimizer, create_train_state
from tests.shared_runs import tiny_default_run
from tests.test_cli import assert_one_line_error, run_main


def softmax_config(source, steps: int):
    """The default config's softmax run from `source`'s encoder, checkpointed and logged every step. Its
    evaluation computes MSP only: what these tests read of it is its checkpoints, init_weights.json and the
    closed-set top-1, which every score list gives."""
    config = configs.default.get_config()
    config.model.head = "softmax"
    config.num_train_steps = steps
    config.checkpoint_every_steps = 1
    config.log_every_steps = 1
    config.eval.scores = ("msp",)
    config.eval.figures = False
    config.init.weights = str(source)
    return config


def checkpoint_params(workdir, step: int) -> dict:
    """{"params/...", "batch_stats/..."} arrays of checkpoint `step`, read with orbax as saved."""
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data"),
                               options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    tree = {"params": state["params"], "batch_stats": state["batch_stats"]}
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """The source run, and a softmax run started from its encoder (2 steps, a checkpoint after each)."""
    source = tiny_default_run(tmp_path_factory, "initial_weights")
    workdir = source.parent / "softmax_from_lgmm"
    train.train_and_evaluate(softmax_config(source, steps=2), str(workdir))
    return source, workdir


def test_step_zero_holds_the_sources_encoder_and_the_runs_own_fresh_classifier(started):
    source, workdir = started
    assert checkpointing.complete_steps_on_disk(str(workdir)) == [0, 1, 2]
    step0 = checkpoint_params(workdir, 0)
    source_variables = restore.restore_workdir(str(source), make_mesh()).variables
    source_flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(
        {"params": source_variables["params"], "batch_stats": source_variables["batch_stats"]}).items()}
    encoder = {name for name in step0 if name.split("/")[1] == "backbone"}
    assert encoder and {n for n in source_flat if n.split("/")[1] == "backbone"} == encoder
    for name in encoder:
        np.testing.assert_array_equal(step0[name], source_flat[name], err_msg=name)

    # Everything else is what the softmax run initialises by itself (its seed), not the source's.
    config = softmax_config(source, steps=2)
    protocol = experiment.resolve_protocol(config)
    train_source = experiment.data_source(protocol.dataset, protocol.train_split, config=config)
    model = create_model(config.model, protocols.num_known_classes(protocol, train_source))
    optimizer, _ = create_optimizer(config, steps_per_epoch=1, total_steps=1)
    image_shape = experiment.model_input_shape(config, protocol, train_source)
    fresh = jax.jit(lambda: create_train_state(config, model, optimizer, image_shape, len(protocol.known_classes)))()
    fresh_flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(
        {"params": fresh.params, "batch_stats": fresh.batch_stats}).items()}
    assert set(fresh_flat) == set(step0)
    for name in set(step0) - encoder:
        np.testing.assert_array_equal(step0[name], fresh_flat[name], err_msg=name)
    assert not all(np.array_equal(step0[n], fresh_flat[n]) for n in encoder)  # the load did something

    report = json.loads((workdir / initial_weights.REPORT_FILE).read_text())
    assert report["weights"] == str(source) and report["layout"] == "lgmm_jax"
    assert set(report["loaded"]) == encoder
    assert set(report["fresh"]) == set(step0) - encoder
    assert any(name.startswith("params/head/") for name in report["ignored"])  # the source's GMM


def test_a_resumed_run_never_reads_the_source_again(started, tmp_path):
    source, workdir = started
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    moved = tmp_path / "source_gone"
    shutil.move(str(source), moved)
    try:
        results = train.train_and_evaluate(softmax_config(source, steps=3), str(resumed))
    finally:
        shutil.move(str(moved), source)
    assert checkpointing.complete_steps_on_disk(str(resumed))[-1] == 3 and results["closed_set"]["top1"] > 0


def torchvision_like_file(path):
    """A real layout (torchvision ResNet names) that fits no part of the small CNN."""
    save_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "bn1.weight": np.ones(64, np.float32),
               "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32),
               "bn1.bias": np.zeros(64, np.float32), "bn1.running_mean": np.zeros(64, np.float32),
               "bn1.running_var": np.ones(64, np.float32), "fc.weight": np.zeros((1000, 2048), np.float32),
               "fc.bias": np.zeros(1000, np.float32)}, str(path))


def unusable_file(kind: str, path):
    """Write the unusable weights file `kind` at `path` ("missing": write nothing); return the path."""
    if kind == "unreadable":
        path.write_bytes(b"not a safetensors file")
    elif kind == "another_architecture":
        torchvision_like_file(path)
    elif kind == "unknown_layout":
        save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, str(path))
    return path


def assert_nothing_written(workdir):
    assert not (workdir / "checkpoints").exists() and not (workdir / "config.json").exists()


def test_an_unusable_file_ends_the_command_in_one_line_and_writes_nothing(tmp_path):
    """`python -m lgmm_jax.main` with a file of another architecture: a non-zero exit, stderr ending in one
    `error:` line that names the file and the cause, no traceback, and no checkpoint or config.json."""
    bad = unusable_file("another_architecture", tmp_path / "bad.safetensors")
    workdir = tmp_path / "workdir"
    result = run_main(workdir, "--config.num_train_steps=2", f"--config.init.weights={bad}")
    assert_one_line_error(result, "bad.safetensors", "torchvision", "no counterpart")
    assert_nothing_written(workdir)


def guarded_training(config, workdir, capfd) -> subprocess.CompletedProcess:
    """A training run that fails, run in this process as lgmm_jax/main.py runs it: `train.train_and_evaluate`
    inside `cli.run_guarded`, which turns a user's error into one line and an exit. Its exit status and
    what it printed, as the command's would be."""
    with pytest.raises(SystemExit) as exited:
        cli.run_guarded(lambda: train.train_and_evaluate(config, str(workdir)))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess("cli.run_guarded", exited.value.code, out, err)


@pytest.mark.parametrize("kind, fragments", [
    ("unreadable", ("bad.safetensors",)),
    ("unknown_layout", ("bad.safetensors", "unknown layout")),
    ("missing", ("bad.safetensors",)),
])
def test_every_other_unusable_file_is_one_line_and_writes_nothing(kind, fragments, tmp_path, capfd):
    """The other unusable files, through the same guard in this process (the command itself is the test
    above): a non-zero exit status, one `error:` line naming the file (and the cause), no traceback (an
    error the guard did not map would escape it), and no checkpoint or config.json."""
    config = configs.default.get_config()
    config.num_train_steps = 2
    config.init.weights = str(unusable_file(kind, tmp_path / "bad.safetensors"))
    workdir = tmp_path / "workdir"
    assert_one_line_error(guarded_training(config, workdir, capfd), *fragments)
    assert_nothing_written(workdir)


@pytest.mark.slow  # trains a garment classifier, then builds and loads the testbed segmenter: ~45 s
def test_the_testbed_segmenter_starts_from_a_garment_classifier(tmp_path):
    """README's two commands: configs/scenes_garments.py trains the testbed segmenter's encoder as a
    classifier of the known garments (the held-out ones are its unknown classes), and configs/scenes.py
    with init.weights=that run takes its encoder: what a new run loads (`initial_weights.loaded_arrays`,
    as train.py calls it) is the classifier's encoder array for array, the rest is left fresh. The garment
    splits are composed here, small, into the run's data_dir: the 128 training images hold 84 known
    garments (7 of the 10 classes), enough for the 2 steps of 32, and the 64 test images 17 held-out
    garments, the run's unknown set."""
    import configs.scenes
    import configs.scenes_garments
    from lgmm_jax.data import scenes
    from lgmm_jax.models.configured import initial_variables

    data_dir = tmp_path / "data"
    for split, count in {"train": 128, "validation": 32, "test": 64}.items():
        path = scenes.cache_path(f"garments_{split}", str(data_dir))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(path, **scenes.build_garment_split(split, num_images=count))
    garments = configs.scenes_garments.get_config()
    garments.update_from_flattened_dict({"num_train_steps": 2, "checkpoint_every_steps": 2, "log_every_steps": 1,
                                         "eval.scores": ("msp",), "data_dir": str(data_dir)})
    results = train.train_and_evaluate(garments, str(tmp_path / "garments"))
    assert experiment.resolve_protocol(garments).known_classes == scenes.KNOWN_GARMENTS
    assert results["open_set"]["unknown_classes"]["num_examples"] > 0  # the held-out garments, never trained on

    segmenter = configs.scenes.get_config()
    segmenter.init.weights = str(tmp_path / "garments")
    model = create_model(segmenter.model, scenes.NUM_CLASSES)
    # The run's own initial variables, as zeros of their shapes: `loaded_arrays` returns only the arrays
    # it puts in their place, so their values reach no assertion.
    shapes = jax.eval_shape(lambda: initial_variables(model, jax.random.key(0), (64, 64, 3)))
    own = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)
    loaded, report = initial_weights.loaded_arrays(segmenter, model, own, (64, 64, 3))
    classifier = checkpoint_params(tmp_path / "garments", 2)
    encoder = {name.replace("/backbone/", "/decoder/backbone/", 1): name for name in classifier
               if name.split("/")[1] == "backbone"}
    assert encoder and {"/".join(key) for key in loaded} == set(encoder) == set(report["loaded"])
    for ours, theirs in encoder.items():
        np.testing.assert_array_equal(loaded[tuple(ours.split("/"))], classifier[theirs], err_msg=ours)
    assert "params/classifier/kernel" in report["ignored"] and "params/head/means" in report["fresh"]
