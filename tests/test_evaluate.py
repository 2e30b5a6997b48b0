"""`python -m lgmm_jax.evaluate`: a workdir's or an exported model's evaluation equals the training run's.

One tiny training run (20 steps on digits) per module; the CLI runs in subprocesses, as a user runs it.
"""

import copy
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import configs.default
from lgmm_jax import export, train
from lgmm_jax.data import sources
from lgmm_jax.data.protocols import MNIST_SPLITS
from tests.subprocesses import finish, one_line_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FOLDER_SET = "digits_unknown"


def start(module, *args):
    """`python -m module args` started in the background (the CLI calls of a module run side by side)."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train 20 steps and keep the training results; export the run; write the unknown test digits as PNG
    files. Then, side by side: `evaluate --workdir` (into the workdir, with the PNG folder as an extra
    unknown set), `evaluate --model` of the export, `evaluate --workdir` of a folder without checkpoints."""
    root = tmp_path_factory.mktemp("evaluate")
    workdir, exported = str(root / "run"), str(root / "exported")
    config = configs.default.get_config()
    config.num_train_steps = 20
    trained = copy.deepcopy(train.train_and_evaluate(config, workdir))
    export.export_model(workdir, exported)

    folder = str(root / FOLDER_SET)
    os.makedirs(folder)
    test = sources.get_source("digits", "test")
    unknown = np.flatnonzero(~np.isin(test.labels, MNIST_SPLITS[0]))
    for i, index in enumerate(unknown):  # PNG is lossless: the same pixels as the unknown-class test set
        Image.fromarray(test[index]["image"][..., 0]).save(os.path.join(folder, f"{i:04d}.png"))
    no_checkpoint = str(root / "no_checkpoint")
    os.makedirs(no_checkpoint)
    shutil.copy(os.path.join(workdir, "config.json"), no_checkpoint)

    processes = {
        "workdir": start("lgmm_jax.evaluate", f"--workdir={workdir}", f"--ood_datasets=folder={folder}"),
        "model": start("lgmm_jax.evaluate", f"--model={exported}", f"--output={root / 'model_evaluation'}"),
        "no_checkpoint": start("lgmm_jax.evaluate", f"--workdir={no_checkpoint}"),
        "override": start("lgmm_jax.evaluate", f"--workdir={workdir}", f"--output={root / 'batch_7'}",
                          "--config.eval_batch_size=7"),
        "config_file": start("lgmm_jax.evaluate", f"--workdir={workdir}", "--config=configs/cifar10.py"),
    }
    completed = {name: finish(process) for name, process in processes.items()}
    for name in ("workdir", "model"):
        assert completed[name].returncode == 0, completed[name].stderr
    with open(os.path.join(workdir, "results.json")) as f:
        evaluated = json.load(f)
    with open(root / "model_evaluation" / "results.json") as f:
        model_evaluated = json.load(f)
    assert completed["override"].returncode == 0, completed["override"].stderr
    with open(root / "batch_7" / "results.json") as f:
        overridden = json.load(f)
    return {"workdir": workdir, "exported": exported, "no_checkpoint": no_checkpoint, "trained": trained,
            "overridden": overridden,
            "evaluated": evaluated, "model_evaluated": model_evaluated, "completed": completed}


def assert_same_numbers(actual, expected, tolerance=1e-9):
    """Equal keys, equal integers, floats within `tolerance` (relative, and absolute near 0)."""
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_same_numbers(actual[key], value, tolerance)
        elif isinstance(value, float):
            assert actual[key] == pytest.approx(value, rel=tolerance, abs=tolerance * 1e-3), key
        else:
            assert np.array_equal(np.asarray(actual[key]), np.asarray(value)), key


def test_workdir_evaluation_reproduces_the_training_runs_numbers(run):
    trained, evaluated = run["trained"], run["evaluated"]
    for key in ("closed_set", "thresholds", "components"):
        assert_same_numbers(evaluated[key], trained[key])
    assert_same_numbers(evaluated["open_set"]["unknown_classes"], trained["open_set"]["unknown_classes"])
    assert "top-1" in run["completed"]["workdir"].stdout and "results:" in run["completed"]["workdir"].stdout


def test_a_folder_of_the_unknown_test_images_scores_like_the_unknown_classes(run):
    open_set = run["evaluated"]["open_set"]
    assert set(open_set) == {"unknown_classes", FOLDER_SET}
    assert_same_numbers(open_set[FOLDER_SET], open_set["unknown_classes"])


def test_report_holds_the_numbers_of_results_json_and_the_plots_are_pngs(run):
    workdir, results = run["workdir"], run["evaluated"]
    with open(os.path.join(workdir, "report.md")) as f:
        text = f.read()
    assert f"| {100 * results['closed_set']['top1']:.2f} |" in text
    for set_name, by_score in results["open_set"].items():
        assert set_name in text
        for score in ("likelihood", "marginal"):
            values = by_score[score]
            row = f"| {score} | {100 * values['auroc']:.2f} | {100 * values['fpr95']:.2f} |"
            assert row in text, row
        for kind in ("roc", "hist"):
            path = os.path.join(workdir, f"{kind}_{set_name}.png")
            with open(path, "rb") as f:
                assert f.read(8) == PNG_MAGIC
            with Image.open(path) as image:
                image.verify()


def test_an_exported_model_evaluates_to_the_same_numbers(run):
    assert_same_numbers(run["model_evaluated"], run["trained"])
    assert sorted(os.listdir(run["exported"])) == ["model.json", "variables"]  # nothing written into it


def test_a_workdir_without_checkpoints_is_one_line_and_a_nonzero_exit(run):
    message = one_line_error(run["completed"]["no_checkpoint"])
    assert "no complete checkpoint" in message and run["no_checkpoint"] in message
    assert not os.path.exists(os.path.join(run["no_checkpoint"], "checkpoints"))  # nothing created


def test_config_overrides_reach_the_evaluation_and_padding_changes_no_number(run):
    """`--config.eval_batch_size=7`: a batch size that splits no data set evenly; every example is still
    seen once (the last batch padded and masked), so every count equals the training run's and every
    number does up to float32 rounding: XLA's convolutions round differently for another batch shape
    (log p(z|y) moves by up to 1e-4 of ~-100; the posterior's log-odds, a difference of two such values
    over T, by up to 1e-5)."""
    trained, overridden = run["trained"], run["overridden"]
    for key in ("closed_set", "thresholds", "components"):
        assert_same_numbers(overridden[key], trained[key], tolerance=1e-4)
    assert_same_numbers(overridden["open_set"], trained["open_set"], tolerance=1e-4)


def test_a_config_file_is_refused_by_evaluate(run):
    message = one_line_error(run["completed"]["config_file"])
    assert "--config.KEY=VALUE" in message and "config.json" in message
