"""Segmentation as a task: dense inference, per-pixel scores and mmseg's metrics against independent
computations, and the testbed run end to end (train, evaluate, export, predict) for both heads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import scenes as scenes_config
from lgmm_jax.runtime import checkpointing
from lgmm_jax.training import experiment, restore
from lgmm_jax.data import scenes
from lgmm_jax import heads
from lgmm_jax.heads import create_model
from lgmm_jax.models.configured import initial_variables
from lgmm_jax.runtime.sharding import make_mesh
from lgmm_jax.tasks.segmentation import evaluation as segmentation_evaluation
from lgmm_jax.tasks.segmentation import forward as pixel_forward
from lgmm_jax.tasks.segmentation.forward import DenseSettings, Fitted, SmlStatistics
from tests.shared_runs import initial_parameters, shared_export
from tests.subprocesses import run_stablehlo
from tests.test_cli import REPO, SEGMENTATION_ARGS, compilation_cache, run_main, segmentation_reference_run

EVAL_IMAGES = 20  # SEGMENTATION_ARGS' segmentation.eval_images: the first images of each set


def test_window_spans_are_mmsegs():
    """mmseg's slide_inference: h_grids = max(H - h + s - 1, 0) // s + 1 windows, the last one ending at
    the border; a side shorter than the crop is one window."""
    assert pixel_forward.window_spans(64, 32, 16) == [(0, 32), (16, 48), (32, 64)]
    assert pixel_forward.window_spans(70, 32, 20) == [(0, 32), (20, 52), (38, 70)]
    assert pixel_forward.window_spans(20, 32, 16) == [(0, 20)]
    assert pixel_forward.window_spans(769, 769, 513) == [(0, 769)]
    assert pixel_forward.window_spans(1024, 769, 513) == [(0, 769), (255, 1024)]


def test_slide_inference_averages_the_windows_that_cover_each_pixel():
    """A 'network' whose output depends on the window (its mean): slide's maps equal a numpy loop that
    sums each window's (upsampled) output and divides by the count of windows over each pixel."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 40, 56, 3)).astype(np.float32)

    def maps_fn(x):  # [B, h, w, 3] -> [B, h/4, w/4, 2], constant per window
        mean = jnp.mean(x, axis=(1, 2, 3))
        return jnp.broadcast_to(jnp.stack([mean, 2 * mean + 1], -1)[:, None, None], (x.shape[0], x.shape[1] // 4,
                                                                                        x.shape[2] // 4, 2))

    settings = DenseSettings(inference="slide", crop=(24, 32), stride=(16, 20))
    got = np.asarray(pixel_forward.dense_maps(maps_fn, jnp.asarray(images), settings))
    total, count = np.zeros((2, 40, 56, 2)), np.zeros((40, 56))
    for top in (0, 16):  # 40 rows, crop 24, stride 16: windows [0, 24), [16, 40)
        for left in (0, 20, 24):  # 56 columns, crop 32, stride 20: [0, 32), [20, 52), [24, 56)
            mean = images[:, top:top + 24, left:left + 32].mean(axis=(1, 2, 3))
            total[:, top:top + 24, left:left + 32] += np.stack([mean, 2 * mean + 1], -1)[:, None, None]
            count[top:top + 24, left:left + 32] += 1
    np.testing.assert_allclose(got, total / count[None, :, :, None], rtol=1e-5, atol=1e-6)


def _authors_sml_post_processing(score: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Jung et al.'s `BoundarySuppressionWithSmoothing.forward` (github.com/shjung13/Standardized-max-logits,
    network/deepv3.py) with their defaults, written out pixel by pixel in numpy: kornia's dilation and
    erosion (geodesic borders), the boundary loop, the replicate-padded 3x3 sums, the dilated Gaussian."""
    height, width = score.shape

    def morph(x, offsets, reduce):
        out = x.copy()
        for i in range(height):
            for j in range(width):
                values = [x[i + di, j + dj] for di, dj in offsets if 0 <= i + di < height and 0 <= j + dj < width]
                out[i, j] = reduce(values)
        return out

    cross = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
    full = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]
    labels = prediction.astype(np.float64)
    boundaries = (morph(labels, cross, max) != morph(labels, full, min)).astype(np.float64)
    out = score.astype(np.float64)
    for iteration in range(4):  # boundary_width 4, boundary_iteration 4: expansion 3, 2, 1, 0
        radius = 0 if iteration == 3 else 4 - iteration - 1
        ball = [(di, dj) for di in range(-radius, radius + 1) for dj in range(-radius, radius + 1)
                if abs(di) + abs(dj) <= radius]
        non_boundary = (morph(boundaries, ball, max) == 0).astype(np.float64)
        masked, padded_mask = np.pad(out * non_boundary, 1, mode="edge"), np.pad(non_boundary, 1, mode="edge")
        new = out.copy()
        for i in range(height):
            for j in range(width):
                count = padded_mask[i:i + 3, j:j + 3].sum()
                average = out[i, j] if count == 0 else masked[i:i + 3, j:j + 3].sum() / count
                new[i, j] = average if non_boundary[i, j] == 0 else out[i, j]
        out = new
    x, y = np.meshgrid(np.arange(7), np.arange(7), indexing="ij")
    gaussian = np.exp(-((x - 3) ** 2 + (y - 3) ** 2) / 2.0) / (2 * np.pi)
    gaussian /= gaussian.sum()
    padded = np.pad(out, 18, mode="edge")
    smoothed = np.zeros_like(out)
    for i in range(height):
        for j in range(width):
            smoothed[i, j] = sum(gaussian[a, b] * padded[i + 6 * a, j + 6 * b] for a in range(7) for b in range(7))
    return smoothed


def test_sml_post_processing_follows_its_authors_code():
    rng = np.random.default_rng(5)
    prediction = np.zeros((23, 29), np.int32)
    prediction[5:15, 4:20], prediction[12:, 15:] = 1, 2  # regions with boundaries, one touching the border
    prediction[rng.random(prediction.shape) < 0.03] = 3  # and isolated pixels
    score = rng.normal(size=prediction.shape).astype(np.float32) * 2
    got = pixel_forward.sml_post_processing(jnp.asarray(score), jnp.asarray(prediction))
    np.testing.assert_allclose(got, _authors_sml_post_processing(score, prediction), rtol=1e-5, atol=1e-5)
    # The evaluation's `sml` is the standardised max logit post-processed at the label's size.
    logits = rng.normal(size=(23, 29, 4)).astype(np.float32)
    statistics = SmlStatistics(jnp.asarray([0.5, 1.0, -0.2, 0.1]), jnp.asarray([1.5, 0.7, 2.0, 1.0]))
    out = pixel_forward.finish(jnp.asarray(logits), Fitted(sml=statistics), label_size=(23, 29), num_classes=4,
                               chosen=("sml",))
    predicted = logits.argmax(-1)
    standardised = (logits.max(-1) - np.asarray(statistics.mean)[predicted]) / np.asarray(statistics.std)[predicted]
    np.testing.assert_allclose(out["sml"], _authors_sml_post_processing(standardised, predicted), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_segmenter():
    config = scenes_config.get_config()
    config.model.head = "softmax"
    model = create_model(config.model, scenes.NUM_CLASSES)
    variables = jax.jit(lambda key: initial_variables(model, key, (64, 64, 3)))(jax.random.PRNGKey(0))
    return config, model, variables


def test_a_batch_of_different_sizes_scores_each_image_as_alone_and_padding_would_not(tiny_segmenter):
    """mmseg tests one image at a time, unpadded: batched evaluation (size_divisor 0) must give each image
    the numbers it gets alone. Padding the batch to one shape (size_divisor 32, the earlier default) lets
    the zeros into SegFormer's attention and border context, and the smaller images' numbers move."""
    config, model, variables = tiny_segmenter
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 56, 3), (64, 64, 3), (40, 56, 3))]
    mesh = make_mesh()

    def predict(settings, batch):
        forward = pixel_forward.make_dense_forward(model, mesh, settings)
        return pixel_forward.predict_dense(forward, variables, mesh, Fitted(), batch, [i.shape[:2] for i in batch],
                                           4, settings, scenes.NUM_CLASSES, ("maxlogit",))

    unpadded = DenseSettings(size_divisor=0)
    together = predict(unpadded, images)
    for image, batched in zip(images, together):
        alone = predict(unpadded, [image])[0]
        np.testing.assert_array_equal(batched["maxlogit"], alone["maxlogit"])
        np.testing.assert_array_equal(batched["prediction"], alone["prediction"])
    padded = predict(DenseSettings(size_divisor=32), images)
    assert not np.allclose(padded[0]["maxlogit"], together[0]["maxlogit"], atol=1e-4)


def test_slide_with_a_window_covering_the_image_equals_whole(tiny_segmenter):
    config, model, variables = tiny_segmenter
    images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 64, 3)), jnp.float32)
    def dense(settings):
        maps_fn = lambda x: pixel_forward.network_maps(model, variables, x, None)  # noqa: E731
        return jax.jit(lambda x: pixel_forward.dense_maps(maps_fn, x, settings))(images)

    whole = dense(DenseSettings(inference="whole"))
    slide = dense(DenseSettings(inference="slide", crop=(64, 64), stride=(48, 48)))
    assert whole.shape == (2, 64, 64, scenes.NUM_CLASSES)
    np.testing.assert_allclose(np.asarray(slide), np.asarray(whole), rtol=1e-6, atol=1e-6)


def test_pixel_scores_against_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(5, 6, 4)).astype(np.float32) * 3
    maps = np.concatenate([logits, rng.normal(size=(5, 6, 1)).astype(np.float32)], -1)
    sml = SmlStatistics(jnp.asarray([1.0, -1.0, 0.5, 2.0]), jnp.asarray([2.0, 0.5, 1.0, 4.0]))
    got = pixel_forward.score_maps(jnp.asarray(maps), 4, ("msp", "maxlogit", "entropy", "sml", "mahalanobis"),
                                   Fitted(sml=sml))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    predicted = logits.argmax(-1)
    np.testing.assert_allclose(got["msp"], p.max(-1), rtol=1e-5)
    np.testing.assert_allclose(got["maxlogit"], logits.max(-1), rtol=1e-6)
    np.testing.assert_allclose(got["entropy"], (p * np.log(p)).sum(-1), rtol=1e-4, atol=1e-6)
    mean, std = np.array([1.0, -1.0, 0.5, 2.0]), np.array([2.0, 0.5, 1.0, 4.0])
    np.testing.assert_allclose(got["sml"], (logits.max(-1) - mean[predicted]) / std[predicted], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["mahalanobis"], maps[..., 4])


def test_scores_are_resized_to_the_label_size_before_the_argmax():
    """eval_scale resizes the image for the network; the maps come back to the label's size (bilinear,
    align_corners=False, as torch's F.interpolate) before the argmax."""
    maps = np.random.default_rng(3).normal(size=(8, 10, 3)).astype(np.float32)
    out = pixel_forward.finish(maps, Fitted(), label_size=(16, 20), num_classes=3, chosen=("maxlogit",))
    # Half-pixel centres: output pixel i samples input (i + 0.5) / 2 - 0.5, edges clamped.
    def axis_weights(size_in, size_out):
        position = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, size_in - 1)
        weights = np.zeros((size_out, size_in))
        weights[np.arange(size_out), low] += 1 - (position - low)
        weights[np.arange(size_out), high] += position - low
        return weights
    reference = np.einsum("ai,bj,ijc->abc", axis_weights(8, 16), axis_weights(10, 20), maps)
    np.testing.assert_array_equal(out["prediction"], reference.argmax(-1))
    np.testing.assert_allclose(out["maxlogit"], reference.max(-1), rtol=1e-5, atol=1e-5)
    assert pixel_forward.rescaled_size(64, 48, (128, 32)) == (43, 32)  # mmcv rescale_size, keep_ratio


class FewScenes:
    """The first images of a testbed split, as a segmentation source."""

    def __init__(self, split: str, count: int):
        self.arrays = {key: value[:count] for key, value in scenes.load(split).items()}
        self.num_classes, self.label_names = scenes.NUM_CLASSES, scenes.LABEL_NAMES

    def __len__(self):
        return len(self.arrays["image"])

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.arrays.items()}


def test_miou_of_the_accumulated_confusion_equals_a_direct_computation(tiny_segmenter):
    """mmseg's mIoU (whole-set intersection / union, void excluded, classes with a union) from the
    evaluation equals numpy on the predictions collected image by image; an odd batch pads."""
    config, model, variables = tiny_segmenter
    source = FewScenes("test", 7)
    mesh = make_mesh()
    settings = segmentation_evaluation.settings_of(config)
    predictor = segmentation_evaluation.Predictor(
        forward=pixel_forward.make_dense_forward(model, mesh, settings), variables=variables, mesh=mesh,
        fitted=Fitted(), batch_size=4, settings=settings, num_classes=scenes.NUM_CLASSES)
    result = segmentation_evaluation.closed_set(predictor, source, 255)
    predictions = np.stack([out["prediction"] for _, out in predictor.examples_and_outputs(source, "label", ())])
    labels = source.arrays["label"].astype(np.int64)
    labelled = labels != 255
    intersection = np.array([np.sum((predictions == c) & (labels == c)) for c in range(8)])
    union = np.array([np.sum(((predictions == c) | (labels == c)) & labelled) for c in range(8)])
    iou = intersection / np.where(union > 0, union, 1)
    assert result["num_images"] == 7
    assert result["miou"] == pytest.approx(iou[union > 0].mean(), abs=1e-12)
    assert result["aacc"] == pytest.approx(np.mean(predictions[labelled] == labels[labelled]), abs=1e-12)
    assert [v for v in result["iou"] if v is not None] == pytest.approx(list(iou[union > 0]), abs=1e-12)


def test_segmentation_config_checks_are_one_line_value_errors():
    config = scenes_config.get_config()
    config.model.encoder = "small_cnn"
    with pytest.raises(ValueError, match="task='segmentation' needs a segmenter"):
        experiment.check_config(config, 1)
    config = scenes_config.get_config()
    config.segmentation.inference = "sliding"
    with pytest.raises(ValueError, match="segmentation.inference='sliding' is not one of"):
        experiment.check_config(config, 1)


def test_decode_head_learning_rate_is_a_parameter_group():
    """SegFormer's recipe: the decode head (and the classifier or projection closing it) at 10x the rate."""
    from lgmm_jax.training.state import create_optimizer, parameter_groups

    config = scenes_config.get_config()
    config.optimizer.decode_head_lr_mult = 10.0
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_epochs = 0.0
    config.optimizer.weight_decay = 0.0
    model = create_model(config.model, 8)
    params = jax.eval_shape(lambda: initial_variables(model, jax.random.PRNGKey(0), (64, 64, 3)))["params"]
    params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), params)
    groups = parameter_groups(params, heads.named("lgmm"), separate_decode_head=True)
    assert set(jax.tree.leaves(groups["decoder"]["decode_head"])) == {"decode_head"}
    assert set(jax.tree.leaves(groups["decoder"]["backbone"])) == {"encoder"}
    assert set(jax.tree.leaves(groups["projection"])) == {"decode_head"}
    assert set(jax.tree.leaves(groups["head"])) == {"gmm"}
    optimizer, _ = create_optimizer(config, 1, 10)
    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(optimizer.update)(ones, optimizer.init(params), params)
    backbone = np.abs(jax.tree.leaves(updates["decoder"]["backbone"])[0]).max()
    head = np.abs(jax.tree.leaves(updates["decoder"]["decode_head"])[0]).max()
    assert head == pytest.approx(10 * backbone, rel=1e-5)


@pytest.fixture(scope="module")
def softmax_quick_run(tmp_path_factory):
    """The softmax testbed trained by the CLI for a few steps (`tests.test_cli.SEGMENTATION_ARGS`):
    (workdir, the finished process)."""
    workdir = tmp_path_factory.mktemp("scenes_softmax") / "run"
    result = run_main(workdir, *SEGMENTATION_ARGS, "--config.model.head=softmax", cache=compilation_cache(tmp_path_factory))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


@pytest.fixture(scope="module", params=["lgmm", "softmax"])
def quick_run(request, tmp_path_factory):
    """The testbed trained for a few steps (`tests.test_cli.SEGMENTATION_ARGS`) with each head: (head,
    workdir, the finished process). L-GMM's is a copy of the session's segmentation reference run
    (test_faults.py and test_distributed.py compare with it)."""
    if request.param == "lgmm":
        source = segmentation_reference_run(tmp_path_factory)
        workdir = tmp_path_factory.mktemp("scenes_lgmm") / "run"
        shutil.copytree(source, workdir)
        result = subprocess.CompletedProcess([], 0, (source.parent / f"{source.name}.stdout").read_text(), "")
        return request.param, workdir, result
    return request.param, *request.getfixturevalue("softmax_quick_run")


@pytest.fixture(scope="module")
def exported(quick_run, tmp_path_factory):
    """(head, the quick run's export folder). L-GMM's is the session's export of the segmentation reference,
    made in-process (test_tasks.py uses it too); softmax's is made by the CLI, `python -m lgmm_jax.export`."""
    head, workdir, _ = quick_run
    if head == "lgmm":
        return head, shared_export(tmp_path_factory, segmentation_reference_run(tmp_path_factory))
    folder = tmp_path_factory.mktemp("scenes_softmax_export") / "exported"
    completed = subprocess.run([sys.executable, "-m", "lgmm_jax.export", f"--workdir={workdir}", f"--output={folder}"],
                               cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return head, folder


@pytest.mark.slow  # trains the testbed with each head in subprocesses: ~140 s of the quick tier
def test_the_testbed_trains_and_evaluates_end_to_end(quick_run):
    head, workdir, result = quick_run
    results = json.loads((workdir / "results.json").read_text())
    closed = results["closed_set"]
    assert results["task"] == "segmentation" and closed["num_images"] == EVAL_IMAGES
    assert set(closed) >= {"miou", "aacc", "iou"} and len(closed["iou"]) == scenes.NUM_CLASSES
    assert set(results["open_set"]) == {"near", "far"}
    expected = {"lgmm": {"likelihood"}, "softmax": {"msp", "maxlogit", "entropy", "sml", "mahalanobis"}}[head]
    for by_score in results["open_set"].values():
        assert {name for name, v in by_score.items() if isinstance(v, dict)} == expected
        for values in (v for v in by_score.values() if isinstance(v, dict)):
            assert 0 <= values["auroc"] <= 1 and 0 <= values["ap"] <= 1 and 0 <= values["fpr95"] <= 1
    report = (workdir / "report.md").read_text()
    assert f"{100 * closed['miou']:.2f}" in report and "Open-set segmentation: near" in report
    for name in ("pictures_near.png", "pictures_far.png", "roc_near.png", "roc_far.png"):
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mIoU" in result.stdout


@pytest.mark.slow  # trains the testbed with each head in subprocesses: ~140 s of the quick tier
def test_the_exported_segmenter_predicts_per_pixel_at_the_input_size(exported, tmp_path):
    _, exported = exported
    from lgmm_jax.deploy import inference
    from lgmm_jax.tasks.segmentation.exported import SegmentationModel

    model = inference.load(str(exported))
    assert isinstance(model, SegmentationModel)
    validation = scenes.load("validation")
    images = validation["image"][:EVAL_IMAGES]
    out = model.predict(images)
    assert out["label"].shape == out["score"].shape == out["known"].shape == images.shape[:3]
    labelled = validation["label"][:EVAL_IMAGES] != 255
    # The threshold keeps 95% of the held-out known pixels it was set on (all of them here).
    assert out["known"][labelled].mean() >= 0.95 - 1e-9
    # model.stablehlo without the library, at the validation images' size, two batch sizes.
    assert model.description["stablehlo"]["input"] == {"dtype": "uint8", "shape": ["b", *images.shape[1:]]}
    # The threshold is the score of one of these validation pixels, so a pixel's decision may differ where
    # its score lies within the scores' float tolerance of the threshold, and only there.
    tolerance = 1e-5 * np.abs(out["score"]).max()
    for n, compiled in run_stablehlo(exported, images, tmp_path, (3, EVAL_IMAGES)).items():
        np.testing.assert_array_equal(compiled["label"], out["label"][:n])
        assert np.abs(compiled["score"] - out["score"][:n]).max() <= tolerance
        differ = compiled["known"] != out["known"][:n]
        assert np.all(np.abs(out["score"][:n][differ] - model.threshold) <= tolerance), np.count_nonzero(differ)
    odd = np.pad(images[:3], ((0, 0), (0, 5), (0, 9), (0, 0)))  # any size: padded inside, cropped back
    assert model.predict(odd)["label"].shape == (3, 69, 73)
    with pytest.raises(ValueError, match="uint8"):
        model.predict(images.astype(np.float32))


@pytest.mark.slow  # trains the testbed with each head in subprocesses: ~140 s of the quick tier
def test_evaluating_the_workdir_again_reproduces_the_training_runs_results(softmax_quick_run, tmp_path):
    """`python -m lgmm_jax.evaluate --workdir` of the softmax testbed run: the same results.json. (The L-GMM
    reference's evaluation again is test_tasks.py's, in-process, on the same whole-results equality.)"""
    workdir, _ = softmax_quick_run
    completed = subprocess.run(
        [sys.executable, "-m", "lgmm_jax.evaluate", f"--workdir={workdir}", f"--output={tmp_path / 'again'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again == json.loads((workdir / "results.json").read_text())


@pytest.mark.slow  # trains the testbed with each head in subprocesses: ~140 s of the quick tier
def test_every_trainable_parameter_of_both_segmenters_moves(quick_run):
    """The comparison's two sides both learn: after the run's steps no leaf is at its initial value
    (decoder, projection, GMM head for L-GMM; decoder and classifier for softmax)."""
    _, workdir, _ = quick_run
    config = checkpointing.read_config(str(workdir))
    initial = initial_parameters(config)
    trained = jax.device_get(restore.restore_workdir(str(workdir), make_mesh(), config).variables["params"])
    leaves = jax.tree_util.tree_leaves_with_path(initial)
    frozen = [jax.tree_util.keystr(path) for (path, a), b in zip(leaves, jax.tree.leaves(trained)) if np.array_equal(a, b)]
    assert len(leaves) > 100 and not frozen, frozen
