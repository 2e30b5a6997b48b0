"""Export and inference: an exported model loaded in a fresh process predicts what the checkpoint evaluates.

The session's two tiny training runs (30 steps on digits, shared with other modules), one per head. References: the training run's own
results.json (top-1, thresholds), the checkpoint evaluated in this process, numpy / scipy recomputations.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from unittest import mock

import numpy as np
from PIL import Image
import pytest
from scipy import special

import configs.default
from lgmm_jax.tasks.classification import data as classification_data
from lgmm_jax import export
from lgmm_jax.deploy import forward, inference
from lgmm_jax.training import restore
from lgmm_jax.data import catalog, pipeline
from lgmm_jax.data.protocols import MNIST_SPLITS
from lgmm_jax.runtime.sharding import make_mesh
from tests.shared_runs import tiny_default_run, tiny_softmax_run
from tests.subprocesses import finish, one_line_error, run_stablehlo, start

KNOWN = list(MNIST_SPLITS[0])  # digits_6_4, split 0

FRESH_PROCESS_PREDICT = textwrap.dedent("""
    import sys
    import numpy as np
    from lgmm_jax.deploy import inference
    model = inference.load(sys.argv[1])
    inputs = np.load(sys.argv[2])
    outputs = {}
    for name in inputs.files:
        outputs.update({f"{name}/{key}": value for key, value in model.predict(inputs[name]).items()})
    np.savez(sys.argv[3], **outputs)
""")


def known_images(split):
    """uint8 images and original labels of the known classes of a digits split, in source order."""
    source = catalog.get_source("digits", split)
    keep = np.flatnonzero(np.isin(source.labels, KNOWN))
    return np.stack([source[i]["image"] for i in keep]), source.labels[keep]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train, export in-process; then side by side in fresh processes: `inference.load` + `predict` on the
    known test and validation images, the CLI on an incomplete export, the CLI exporting over an export."""
    workdir = tiny_default_run(tmp_path_factory, "export")
    root = workdir.parent
    workdir, exported = str(workdir), str(root / "exported")
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    description = export.export_model(workdir, exported)

    test_images, test_labels = known_images("test")
    validation_images, _ = known_images("validation")
    np.savez(root / "inputs.npz", test=test_images, validation=validation_images)
    broken = str(root / "broken")
    shutil.copytree(exported, broken)
    os.remove(os.path.join(broken, "model.json"))
    image_files, _ = image_folder(root / "images", test_images[:12])  # and its two bad files
    image_folder(root / "bad", ())  # the two bad files alone

    processes = {
        "predict": start("-c", FRESH_PROCESS_PREDICT, exported, str(root / "inputs.npz"),
                         str(root / "out.npz")),
        "evaluate_broken": start("-m", "lgmm_jax.evaluate", f"--model={broken}", f"--output={root / 'x'}"),
        "export_over": start("-m", "lgmm_jax.export", f"--workdir={workdir}", f"--output={exported}"),
        "predict_cli": start("-m", "lgmm_jax.predict", f"--model={exported}", f"--output={root / 'preds.jsonl'}",
                             "--alpha=0.2", str(root / "images")),
        "predict_cli_bad": start("-m", "lgmm_jax.predict", f"--model={exported}", str(root / "bad")),
    }
    completed = {name: finish(process) for name, process in processes.items()}
    assert completed["predict"].returncode == 0, completed["predict"].stderr
    with np.load(root / "out.npz") as out:
        predictions = {name: out[name] for name in out.files}
    return {"root": root, "workdir": workdir, "exported": exported, "results": results,
            "description": description, "predictions": predictions, "test_labels": test_labels,
            "test_images": test_images, "completed": completed, "image_files": image_files}


def image_folder(folder, images):
    """PNG files of `images`, then a corrupt file and one of another size: (good files, bad files)."""
    os.makedirs(folder)
    good = []
    for i, image in enumerate(images):
        good.append(str(folder / f"{i:02d}.png"))
        Image.fromarray(image[..., 0]).save(good[-1])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(folder / "nine.png")
    return good, [str(folder / "corrupt.png"), str(folder / "nine.png")]


@pytest.fixture(scope="module")
def loaded(run):
    return inference.load(run["exported"]), run


def test_fresh_process_predictions_equal_the_checkpoints_evaluation(run):
    predicted = run["predictions"]
    labels, scores = predicted["test/label"], predicted["test/score"]
    # Top-1 from predict's original label ids == the training run's results.json.
    assert labels.dtype == np.int64 and set(np.unique(labels)) <= set(KNOWN)
    top1 = run["results"]["closed_set"]["top1"]
    assert np.mean(labels == run["test_labels"]) == pytest.approx(top1, abs=1e-12)

    # Scores and posteriors == the checkpoint evaluated in this process, through the evaluation pipeline.
    mesh = make_mesh()
    trained = restore.restore_workdir(run["workdir"], mesh)
    source = catalog.get_source("digits", "test")
    outputs = forward.collect(
        classification_data.eval_stream(trained.config, trained.protocol, source, trained.protocol.known_classes),
        mesh, trained.variables, forward.make_forward(trained.model, "lgmm", mesh))
    np.testing.assert_array_equal(outputs["original_label"], run["test_labels"])
    np.testing.assert_allclose(scores, outputs["class_log_likelihood"].max(-1), rtol=0, atol=1e-5)
    log_posterior = predicted["test/log_posterior"]
    assert log_posterior.dtype == np.float32 and log_posterior.shape == (len(labels), len(KNOWN))
    temperature = trained.config.loss.discriminative_temperature  # L_D's, which trained the posterior
    expected_log_posterior = special.log_softmax(outputs["class_log_likelihood"] / temperature, -1)
    np.testing.assert_allclose(log_posterior, expected_log_posterior, atol=1e-5)
    np.testing.assert_array_equal(labels, np.asarray(KNOWN)[np.argmax(log_posterior, -1)])
    np.testing.assert_array_equal(predicted["test/known"], scores >= run["description"]["threshold"])


def test_threshold_is_the_conformal_order_statistic_of_the_validation_scores(run):
    """The threshold is the floor(alpha (n + 1))-th smallest held-out score; the calibration file holds those
    scores sorted (the validation images' own scores, as predict gives them); predict's p-values follow
    (1 + #{calibration <= score}) / (n + 1) and known = p > alpha = score >= threshold."""
    description, predicted = run["description"], run["predictions"]
    threshold, alpha = description["threshold"], description["alpha"]
    with open(os.path.join(run["exported"], "model.json")) as f:
        assert json.load(f)["threshold"] == threshold
    scores = predicted["validation/score"].astype(np.float64)
    n = len(known_images("validation")[1])
    assert len(scores) == n and description["threshold_data"]["num_examples"] == n and alpha == 0.05
    calibration = np.load(os.path.join(run["exported"], "calibration_scores.npy"), allow_pickle=False)
    np.testing.assert_allclose(calibration, np.sort(scores), rtol=0, atol=1e-5)
    assert np.all(np.diff(calibration) >= 0)
    assert threshold == calibration[math.floor(alpha * (n + 1)) - 1]
    assert threshold == run["results"]["conformal"]["scores"]["likelihood"]["threshold"]  # the run's evaluation
    test_scores = predicted["test/score"].astype(np.float64)
    expected_p = np.array([(1 + np.sum(calibration <= s)) / (n + 1) for s in test_scores])
    np.testing.assert_allclose(predicted["test/p_value"], expected_p, rtol=1e-6)
    np.testing.assert_array_equal(predicted["test/known"], predicted["test/p_value"] > alpha)
    np.testing.assert_array_equal(predicted["test/known"], test_scores >= threshold)


def test_alpha_at_prediction_time_equals_rethresholding_and_classes_get_their_own(loaded, tmp_path):
    model, run = loaded
    images = run["test_images"]
    calibration = model.calibration.scores
    baseline = model.predict(images)
    for alpha in (0.01, 0.1, 0.3):
        out = model.predict(images, alpha=alpha)
        np.testing.assert_array_equal(out["p_value"], baseline["p_value"])
        k = math.floor(alpha * (len(calibration) + 1))
        expected = out["score"] >= calibration[k - 1] if k >= 1 else np.ones(len(images), bool)
        np.testing.assert_array_equal(out["known"], expected)
    with pytest.raises(ValueError, match="alpha=1.5 must lie strictly between 0 and 1"):
        model.predict(images, alpha=1.5)

    described = export.export_model(run["workdir"], str(tmp_path / "per_class"), alpha=0.1,
                                     calibration="class_conditional")
    per_class = inference.load(str(tmp_path / "per_class"))
    classes = per_class.calibration.classes
    for c, class_threshold in enumerate(described["class_thresholds"]):
        own = np.sort(per_class.calibration.scores[classes == c])
        assert class_threshold == own[math.floor(0.1 * (len(own) + 1)) - 1], c
    out = per_class.predict(images)
    predicted_class = np.asarray([KNOWN.index(label) for label in out["label"]])
    np.testing.assert_array_equal(out["known"], out["score"] >= np.asarray(described["class_thresholds"])[predicted_class])
    with pytest.raises(ValueError, match="needs at least 99 held-out examples predicted as each class"):
        export.export_model(run["workdir"], str(tmp_path / "too_few"), alpha=0.01, calibration="class_conditional")
    assert not (tmp_path / "too_few").exists()


def test_predict_cli_gives_one_line_per_image_and_one_error_per_bad_file(run):
    """Good PNGs: one JSON line each, equal to `predict` on the same pixels at --alpha=0.2; the corrupt and the
    wrong-size file: one error line each; status 0 unless every image failed."""
    completed = run["completed"]["predict_cli"]
    assert completed.returncode == 0, completed.stderr
    lines = [json.loads(line) for line in (run["root"] / "preds.jsonl").read_text().splitlines()]
    assert [line["file"] for line in lines] == run["image_files"]
    expected = inference.load(run["exported"]).predict(run["test_images"][:12], alpha=0.2)
    assert [line["label"] for line in lines] == expected["label"].tolist()
    # One image per forward pass against twelve: another float path for the convolutions, a few float32
    # roundings of a log-density of about 200.
    np.testing.assert_allclose([line["score"] for line in lines], expected["score"], rtol=1e-5)
    calibration = np.load(os.path.join(run["exported"], "calibration_scores.npy"))
    for line in lines:
        assert line["p_value"] == pytest.approx((1 + np.sum(calibration <= line["score"])) / (len(calibration) + 1))
        assert line["known"] == (line["p_value"] > 0.2)
    assert all(line["name"] == str(line["label"]) for line in lines)
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "corrupt.png" in errors[0] and "damaged or truncated" in errors[0]
    assert "nine.png" in errors[1] and "9x9 pixels, the model takes 8x8" in errors[1]
    failed = run["completed"]["predict_cli_bad"]
    assert failed.returncode != 0 and failed.stdout == ""
    assert "none of the 2 images could be classified" in failed.stderr.splitlines()[-1]


def test_model_json_describes_the_model(run):
    with open(os.path.join(run["exported"], "model.json")) as f:
        described = json.load(f)
    with open(os.path.join(run["workdir"], "config.json")) as f:
        assert described["config"] == json.load(f)
    assert described["known_labels"] == KNOWN and described["label_names"] == [str(c) for c in KNOWN]
    assert described["preprocess"] == "none" and described["score"] == "likelihood"  # configs/default.py
    digits = pipeline.NORMALIZATION["digits"]
    assert described["normalization"]["mean"] == list(digits.mean)
    assert described["normalization"]["std"] == list(digits.std)
    assert described["image_shape"] == [8, 8, 1] and described["threshold_tpr"] == 0.95
    assert described["calibration"] == "marginal" and described["alpha"] == 0.05
    files = [os.path.relpath(os.path.join(d, n), run["exported"]) for d, _, ns in os.walk(run["exported"])
             for n in ns]
    calibration_files = ["calibration_scores.npy", "calibration_classes.npy"]
    assert described["calibration_files"] == calibration_files
    assert "model.json" in files and all(f in ["model.json", "model.stablehlo", *calibration_files]
                                         or f.startswith("variables/") for f in files)
    assert not any(f.endswith((".pkl", ".pickle")) for f in files)
    for name in calibration_files:  # plain arrays: no pickle
        assert np.load(os.path.join(run["exported"], name), allow_pickle=False).ndim == 1
    model = inference.load(run["exported"])
    assert model.known_labels == KNOWN and model.score_name == "likelihood"
    assert model.threshold == described["threshold"]


def test_the_stablehlo_runs_without_the_library_and_predicts_what_predict_does(run):
    """model.stablehlo in a process where lgmm_jax cannot be imported, at two batch sizes of its symbolic
    batch: predict's labels, p-values and decisions, and its scores to float32 rounding of the network
    (1e-5 of the largest score: the two run the same operations at other batch shapes)."""
    described = run["description"]["stablehlo"]
    assert described["input"] == {"dtype": "uint8", "shape": ["b", 8, 8, 1]}
    assert described["platforms"] == ["cpu", "cuda", "tpu"]
    assert set(described["outputs"]) == {"label", "score", "p_value", "known"}
    images = run["test_images"]
    batch_sizes = (5, len(images))
    compiled = run_stablehlo(run["exported"], images, run["root"], batch_sizes)
    predicted = {name: run["predictions"][f"test/{name}"] for name in ("label", "score", "p_value", "known")}
    for n in batch_sizes:
        out = compiled[n]
        assert out["score"].shape == (n,) and out["score"].dtype == np.float32
        np.testing.assert_array_equal(out["label"], predicted["label"][:n])
        np.testing.assert_array_equal(out["known"], predicted["known"][:n])
        np.testing.assert_array_equal(out["p_value"], predicted["p_value"][:n])
        np.testing.assert_allclose(out["score"], predicted["score"][:n], rtol=0,
                                   atol=1e-5 * np.abs(predicted["score"]).max())


@pytest.mark.parametrize("shape, dtype", [
    ((2, 8, 8), np.float32),   # rank and dtype
    ((2, 8, 8, 1), np.float32),  # dtype
    ((2, 8, 8, 3), np.uint8),  # channels
    ((2, 7, 8, 1), np.uint8),  # spatial size
    ((8, 8, 1), np.uint8),     # one image without the batch axis
])
def test_wrong_images_are_value_errors_that_give_the_expected_shape(loaded, shape, dtype):
    model, run = loaded
    got = f"got {np.dtype(dtype).name} {list(shape)}"
    with pytest.raises(ValueError, match=re.escape(f"images must be uint8 [N, 8, 8, 1], {got}")):
        model.predict(np.zeros(shape, dtype))
    assert model.predict(run["test_images"][:0])["log_posterior"].shape == (0, len(KNOWN))


def test_incomplete_export_names_the_missing_file(run, tmp_path):
    broken = str(tmp_path / "broken")
    shutil.copytree(run["exported"], broken)
    os.remove(os.path.join(broken, "variables", "_METADATA"))
    with pytest.raises(FileNotFoundError, match=re.escape("variables/_METADATA is missing")) as error:
        inference.load(broken)
    assert "\n" not in str(error.value)
    message = one_line_error(run["completed"]["evaluate_broken"])
    assert "model.json is missing" in message


def test_export_refuses_to_overwrite_and_never_leaves_half_an_export(run, tmp_path):
    message = one_line_error(run["completed"]["export_over"])
    assert run["exported"] in message and "new --output" in message and "delete" in message
    with pytest.raises(FileExistsError):
        export.export_model(run["workdir"], run["exported"])
    assert sorted(os.listdir(run["exported"])) == [
        "calibration_classes.npy", "calibration_scores.npy", "model.json", "model.stablehlo", "variables"]

    target = tmp_path / "crashed"
    with mock.patch.object(export.json, "dump", side_effect=OSError("disk full")):
        with pytest.raises(OSError, match="disk full"):
            export.export_model(run["workdir"], str(target))
    assert os.listdir(tmp_path) == []  # no output, no temporary folder

    os.makedirs(target)  # an empty folder is fine
    assert export.export_model(run["workdir"], str(target))["score"] == "likelihood"
    with pytest.raises(ValueError, match="--score=msp is not a score of a deployed lgmm model"):
        export.export_model(run["workdir"], str(tmp_path / "other"), score_name="msp")


def test_lgmm_model_exports_with_its_tempered_class_posterior(run, tmp_path):
    exported = str(tmp_path / "posterior")
    description = export.export_model(run["workdir"], exported, score_name="posterior")
    # The threshold is the one the training run's evaluation fitted for the same score.
    assert description["score"] == "posterior"
    assert description["threshold"] == pytest.approx(
        run["results"]["conformal"]["scores"]["posterior"]["threshold"], abs=1e-6)
    predicted = inference.load(exported).predict(run["test_images"])
    assert configs.default.get_config().loss.discriminative_temperature != 1.0  # else T's use goes untested
    # The log-odds of the largest class posterior, from predict's own (tempered) log posterior.
    log_posterior = np.sort(predicted["log_posterior"].astype(np.float64), axis=-1)
    expected = log_posterior[:, -1] - special.logsumexp(log_posterior[:, :-1], axis=-1)
    np.testing.assert_allclose(predicted["score"], expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(predicted["known"], predicted["score"] >= description["threshold"])


def test_softmax_model_exports_with_msp(tmp_path_factory):
    """The session's softmax run exports with MSP, the default score of a softmax model, and its threshold."""
    workdir = tiny_softmax_run(tmp_path_factory, "export_softmax")
    exported = str(workdir.parent / "exported")
    with open(workdir / "results.json") as f:
        results = json.load(f)
    description = export.export_model(str(workdir), exported)
    assert description["score"] == "msp"
    assert description["threshold"] == results["conformal"]["scores"]["msp"]["threshold"]
    model = inference.load(exported)
    images, labels = known_images("test")
    predicted = model.predict(images)
    assert np.mean(predicted["label"] == labels) == pytest.approx(results["closed_set"]["top1"], abs=1e-12)
    probabilities = np.exp(predicted["log_posterior"].astype(np.float64))
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(predicted["score"], probabilities.max(-1), atol=1e-5)  # MSP


def test_an_exported_model_loads_without_the_trainer_or_the_evaluator():
    """Imports run one way: inference needs the forward pass and the models, not evaluate/train/state."""
    code = ("import sys, lgmm_jax.deploy.inference; "
            "print(sorted(m for m in ('lgmm_jax.evaluate', 'lgmm_jax.training.train', 'lgmm_jax.training.state', "
            "'lgmm_jax.export') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
