"""`python -m lgmm_jax.evaluate`: a workdir's or an exported model's evaluation equals the training run's.

The session's tiny training run (30 steps on digits, shared with other modules); the CLI runs in subprocesses, as a user runs it.
"""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from lgmm_jax import export
from lgmm_jax.ood import metrics
from lgmm_jax.data import catalog
from lgmm_jax.data.protocols import MNIST_SPLITS
from tests.shared_runs import tiny_default_run
from tests.subprocesses import finish, one_line_error, start

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FOLDER_SET = "digits_unknown"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The shared 30-step run and its training results; export the run; write the unknown test digits as PNG
    files. Then, side by side: `evaluate --workdir` (into the workdir, with the PNG folder as an extra
    unknown set), `evaluate --model` of the export, `evaluate --workdir` of a folder without checkpoints."""
    workdir = tiny_default_run(tmp_path_factory, "evaluate")
    root = workdir.parent
    workdir, exported = str(workdir), str(root / "exported")
    with open(os.path.join(workdir, "results.json")) as f:
        trained = json.load(f)
    export.export_model(workdir, exported)

    folder = str(root / FOLDER_SET)
    os.makedirs(folder)
    test = catalog.get_source("digits", "test")
    unknown = np.flatnonzero(~np.isin(test.labels, MNIST_SPLITS[0]))
    for i, index in enumerate(unknown):  # PNG is lossless: the same pixels as the unknown-class test set
        Image.fromarray(test[index]["image"][..., 0]).save(os.path.join(folder, f"{i:04d}.png"))
    no_checkpoint = str(root / "no_checkpoint")
    os.makedirs(no_checkpoint)
    shutil.copy(os.path.join(workdir, "config.json"), no_checkpoint)

    processes = {
        "workdir": start("-m", "lgmm_jax.evaluate", f"--workdir={workdir}", f"--ood_datasets=folder={folder}",
                         "--config.eval.figures=true"),  # the run drew none; its evaluation draws them
        "model": start("-m", "lgmm_jax.evaluate", f"--model={exported}", f"--output={root / 'model_evaluation'}"),
        "no_checkpoint": start("-m", "lgmm_jax.evaluate", f"--workdir={no_checkpoint}"),
        "override": start("-m", "lgmm_jax.evaluate", f"--workdir={workdir}", f"--output={root / 'batch_7'}",
                          "--config.eval_batch_size=7"),
        "config_file": start("-m", "lgmm_jax.evaluate", f"--workdir={workdir}", "--config=configs/cifar10.py"),
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
    with open(os.path.join(workdir, "config.json")) as f:
        temperature = json.load(f)["loss"]["discriminative_temperature"]
    return {"workdir": workdir, "exported": exported, "no_checkpoint": no_checkpoint, "trained": trained,
            "overridden": overridden, "overridden_scores": str(root / "batch_7" / "scores.npz"),
            "temperature": temperature,
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


def test_scores_npz_holds_the_scores_behind_every_number(run):
    """Each threshold is recomputed from the stored validation scores, each AUROC by scikit-learn from the
    stored test and unknown scores."""
    evaluated = run["evaluated"]
    with np.load(os.path.join(run["workdir"], "scores.npz")) as stored:
        arrays = {key: stored[key] for key in stored.files}
    for score, threshold in evaluated["thresholds"].items():
        assert metrics.threshold_at_tpr(arrays[f"validation/{score}"], 0.95) == threshold, score
    for set_name, by_score in evaluated["open_set"].items():
        for score, values in by_score.items():
            if not isinstance(values, dict):
                continue
            known = arrays.get(f"test_vs_{set_name}/{score}", arrays[f"test/{score}"])
            unknown = arrays[f"{set_name}/{score}"]
            assert len(known) == evaluated["closed_set"]["num_examples"]
            held_out = evaluated.get("tuned_on_ood", {}).get(score, {}).get(set_name, {}).get("held_out", 0)
            assert len(unknown) == by_score["num_examples"] - held_out
            is_known = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
            assert roc_auc_score(is_known, np.r_[known, unknown]) == pytest.approx(values["auroc"], abs=1e-12)


def test_an_exported_model_evaluates_to_the_same_numbers(run):
    assert_same_numbers(run["model_evaluated"], run["trained"])
    assert sorted(os.listdir(run["exported"])) == [  # nothing written into it
        "calibration_classes.npy", "calibration_scores.npy", "model.json", "model.stablehlo", "variables"]


def test_a_workdir_without_checkpoints_is_one_line_and_a_nonzero_exit(run):
    message = one_line_error(run["completed"]["no_checkpoint"])
    assert "no complete checkpoint" in message and run["no_checkpoint"] in message
    assert not os.path.exists(os.path.join(run["no_checkpoint"], "checkpoints"))  # nothing created


FLOAT32_ROUNDOFF = 2.0 ** -24
LATENT_DIM = 128  # configs/default.py's model.latent_dim: log N(z; mu, sigma) sums this many terms


def test_config_overrides_reach_the_evaluation_and_padding_changes_no_number(run):
    """`--config.eval_batch_size=7`: a batch size that splits no data set evenly; every example is still
    seen once (the last batch padded and masked), so every count equals the training run's and every
    number does up to float32 rounding: XLA's convolutions round differently for another batch shape.

    The tolerances follow from what is compared. A log-density sums LATENT_DIM terms of up to its own
    magnitude, so another rounding moves it by at most about LATENT_DIM roundoffs of its largest value
    (measured: 7.6e-5 of ~190 nats; allowed 1.5e-3). The posterior score is a log-odds, a difference of two
    such log-densities divided by L_D's temperature T: at most twice that, over T, whatever its own size.
    A threshold is an order statistic of the validation scores, which moves by at most the largest move
    of one score (sorting is 1-Lipschitz in the max norm). Ranking metrics change only when two scores
    cross; at these moves a few of the ~50k known-unknown pairs may: 1e-4 relative."""
    trained, overridden = run["trained"], run["overridden"]
    assert_same_numbers(overridden["closed_set"], trained["closed_set"], tolerance=1e-4)
    assert_same_numbers(overridden["components"], trained["components"], tolerance=1e-4)
    assert_same_numbers(overridden["open_set"], trained["open_set"], tolerance=1e-4)
    with np.load(os.path.join(run["workdir"], "scores.npz")) as a, np.load(run["overridden_scores"]) as b:
        reference, padded = {k: a[k].astype(np.float64) for k in a.files}, {k: b[k].astype(np.float64) for k in b.files}
    # The workdir's evaluation (scores.npz in the workdir) also scored the PNG folder; the same sets otherwise.
    assert set(padded) == {k for k in reference if not k.startswith(f"{FOLDER_SET}/")}
    log_density_atol = LATENT_DIM * FLOAT32_ROUNDOFF * max(np.abs(v).max() for k, v in reference.items()
                                                         if k.endswith("/likelihood"))
    temperature = run["temperature"]
    for key, values in padded.items():
        atol = 2 * log_density_atol / temperature if key.endswith("/posterior") else log_density_atol
        np.testing.assert_allclose(values, reference[key], rtol=0, atol=atol, err_msg=key)
    assert set(overridden["thresholds"]) == set(trained["thresholds"])
    for score, threshold in trained["thresholds"].items():
        largest_move = np.abs(padded[f"validation/{score}"] - reference[f"validation/{score}"]).max()
        assert abs(overridden["thresholds"][score] - threshold) <= largest_move + 1e-12, score


def test_a_config_file_is_refused_by_evaluate(run):
    message = one_line_error(run["completed"]["config_file"])
    assert "--config.KEY=VALUE" in message and "config.json" in message
