"""`python -m lgmm_jax.predict` at scale: folders, batches, CSV, progress, output files, segmenters.

The classifier is the session's export of the shared default run (digits, 8x8 grayscale, made once per
session and shared with test_tasks.py), and a copy of it whose model.json takes any size and resizes to
8x8 (what `data.image_size=(8, 8)` would have written: the same network). Its inputs are a folder this
module writes: images of several sizes and modes (grayscale and palette PNG, RGB JPEG, RGBA PNG, an
EXIF-rotated JPEG in a subfolder), a corrupt JPEG, an empty file, a hidden image and a text file.
References: pillow's own decode resized as model.json says, predicted as one array; the rows at other
batch sizes; for segmenters a stand-in model whose maps are functions of the pixels, and (slow) the
session's segmentation export predicting each image alone.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageOps

from lgmm_jax import predict
from lgmm_jax.deploy import inference
from lgmm_jax.data import catalog, images
from tests.shared_runs import shared_default_run, shared_export
from tests.subprocesses import finish, one_line_error, start

ROTATED = 6  # EXIF orientation "rotate 90 clockwise to view": a stored W x H image is shown H x W
GOOD = ("gray.png", "palette.png", "rgb.jpg", "rgba.png", os.path.join("sub", "rotated.jpg"))
BAD = {"corrupt.jpg": "damaged or truncated", "empty.png": "empty file (0 bytes)"}


def digit(index: int) -> np.ndarray:
    """uint8 [8, 8] digit of the digits test split."""
    return catalog.get_source("digits", "test")[index]["image"][..., 0]


def write_image_folder(folder) -> None:
    """The module's input folder (see the module docstring)."""
    os.makedirs(folder / "sub")
    os.makedirs(folder / ".thumbnails")
    Image.fromarray(digit(0)).save(folder / "gray.png")
    Image.fromarray(digit(1)).convert("P").save(folder / "palette.png")
    big = Image.fromarray(digit(2)).resize((20, 13), Image.Resampling.NEAREST)
    Image.merge("RGB", (big, big.point(lambda v: v // 2), big)).save(folder / "rgb.jpg", quality=95)
    rgba = Image.fromarray(digit(3)).resize((11, 9)).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = ROTATED
    Image.fromarray(digit(4)).resize((12, 6)).convert("RGB").save(folder / "sub" / "rotated.jpg", exif=exif)
    (folder / "corrupt.jpg").write_bytes((folder / "rgb.jpg").read_bytes()[:60])
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(digit(5)).save(folder / ".hidden.png")
    Image.fromarray(digit(6)).save(folder / ".thumbnails" / "seven.png")
    (folder / "notes.txt").write_text("not an image\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The two classifier exports, the input folder and the CLI runs (two subprocesses, side by side)."""
    fixed = shared_export(tmp_path_factory, shared_default_run(tmp_path_factory))
    root = tmp_path_factory.mktemp("predict")
    any_size = root / "any_size_export"
    shutil.copytree(fixed, any_size)
    description = json.loads((any_size / "model.json").read_text())
    description.update(image_shape=[None, None, 1], image_size=[8, 8])
    (any_size / "model.json").write_text(json.dumps(description))
    folder = root / "images"
    write_image_folder(folder)
    (root / "existing.jsonl").write_text("earlier results\n")
    processes = {
        "csv": start("-m", "lgmm_jax.predict", f"--model={any_size}", "--format=csv", f"--output={root / 'p.csv'}",
                     "--progress_every=2", str(folder), str(folder / "notes.txt")),
        "existing": start("-m", "lgmm_jax.predict", f"--model={any_size}", f"--output={root / 'existing.jsonl'}",
                          str(folder)),
    }
    completed = {name: finish(process) for name, process in processes.items()}
    return {"fixed": str(fixed), "any_size": str(any_size), "folder": folder, "root": root, "completed": completed}


@pytest.fixture(scope="module")
def models(setup):
    """The any-size classifier compiled for batches of 32 and of 1."""
    return {size: inference.load(setup["any_size"], batch_size=size) for size in (32, 1)}


def inputs_of(setup):
    return predict.expand_arguments([str(setup["folder"]), str(setup["folder"] / "notes.txt")])[0]


def rows_and_errors(results):
    """([rows], [(file, why)]) of `classify` / `segment` results, in order."""
    results = list(results)
    return ([r for _, r in results if not isinstance(r, str)],
            [(item.path, r) for item, r in results if isinstance(r, str)])


def test_a_folder_stands_for_its_image_files_sorted_and_a_named_file_is_used_as_given(setup):
    folder = setup["folder"]
    inputs, empty = predict.expand_arguments([str(folder), str(folder / "notes.txt")])
    expected = sorted([*GOOD, *BAD])
    assert [item.path for item in inputs] == [str(folder / name) for name in expected] + [str(folder / "notes.txt")]
    assert [item.name for item in inputs] == [*expected, "notes.txt"] and empty == []
    os.makedirs(setup["root"] / "nothing", exist_ok=True)
    assert predict.expand_arguments([str(setup["root"] / "nothing")]) == ([], [str(setup["root"] / "nothing")])


def test_one_row_per_good_image_in_order_and_one_error_per_bad_file(setup, models):
    rows, errors = rows_and_errors(predict.classify(models[32], inputs_of(setup), batch_size=32))
    folder = setup["folder"]
    assert [row["file"] for row in rows] == [str(folder / name) for name in GOOD]
    expected = [("corrupt.jpg", BAD["corrupt.jpg"]), ("empty.png", BAD["empty.png"]),
                ("notes.txt", "not an image pillow can read")]
    assert [path for path, _ in errors] == [str(folder / name) for name, _ in expected]
    assert all(why.startswith(start) for (_, why), (_, start) in zip(errors, expected)), errors
    for row in rows:
        assert list(row) == list(predict.CLASSIFIER_FIELDS)
        assert row["name"] == str(row["label"]) and row["known"] == (row["p_value"] > 0.05)


def test_each_row_is_the_model_on_pillows_own_decode_resized_as_model_json_says(setup, models):
    """EXIF applied (the rotated JPEG stands 12 x 6), any mode to one channel, then the bilinear resize to
    model.json's image_size; all five predicted as one array."""
    model = models[32]
    assert model.image_shape == (None, None, 1) and model.image_size == (8, 8)
    decoded = []
    for name in GOOD:
        with Image.open(setup["folder"] / name) as image:
            upright = ImageOps.exif_transpose(image).convert("L")
        if name.endswith("rotated.jpg"):
            assert upright.size == (6, 12)  # (W, H): stored 12 wide, 6 high
        decoded.append(np.asarray(upright.resize((8, 8), Image.Resampling.BILINEAR))[..., None])
    expected = model.predict(np.stack(decoded))
    rows, _ = rows_and_errors(predict.classify(model, inputs_of(setup), batch_size=32))
    assert [row["label"] for row in rows] == expected["label"].tolist()
    np.testing.assert_allclose([row["score"] for row in rows], expected["score"], rtol=1e-6)
    assert [row["known"] for row in rows] == expected["known"].tolist()


def test_rows_do_not_depend_on_the_batch_size(setup, models):
    """Batches of 3 from a model compiled for 32 give the rows of one batch exactly (chunks, order, the
    prefetch); a model compiled for batches of 1 gives the same rows but for the scores' last float32 digits
    (another floating-point path of the network), so the same p-values and decisions away from a
    calibration score."""
    inputs = inputs_of(setup)
    at_32 = list(predict.classify(models[32], inputs, batch_size=32))
    assert list(predict.classify(models[32], inputs, batch_size=3)) == at_32
    at_1 = list(predict.classify(models[1], inputs, batch_size=1))
    assert [item for item, _ in at_1] == [item for item, _ in at_32]
    rows_32, errors_32 = rows_and_errors(at_32)
    rows_1, errors_1 = rows_and_errors(at_1)
    assert errors_1 == errors_32
    calibration = models[32].calibration.scores
    for a, b in zip(rows_32, rows_1):
        assert {k: v for k, v in a.items() if k not in ("score", "p_value", "known")} == \
            {k: v for k, v in b.items() if k not in ("score", "p_value", "known")}
        assert a["score"] == pytest.approx(b["score"], rel=1e-5)
        if np.abs(calibration - a["score"]).min() > 1e-4 * abs(a["score"]):
            assert (a["p_value"], a["known"]) == (b["p_value"], b["known"])


def test_a_fixed_size_model_refuses_other_sizes_one_line_each(setup):
    model = inference.load(setup["fixed"], batch_size=32)
    rows, errors = rows_and_errors(predict.classify(model, inputs_of(setup), batch_size=32))
    assert [os.path.basename(row["file"]) for row in rows] == ["gray.png", "palette.png"]
    sizes = {os.path.basename(path): why for path, why in errors}
    assert sizes["rgb.jpg"] == "13x20 pixels, the model takes 8x8: resize the image first"
    assert sizes["rgba.png"].startswith("9x11 pixels") and sizes["rotated.jpg"].startswith("12x6 pixels")


def test_csv_and_json_lines_hold_the_same_rows(setup, models):
    rows, _ = rows_and_errors(predict.classify(models[32], inputs_of(setup), batch_size=32))
    rows.append(dict(rows[0], p_value=None))  # an export without calibration has no p-values
    written = {}
    for format_name in predict.FORMATS:
        stream = io.StringIO()
        writer = predict.RowWriter(stream, predict.CLASSIFIER_FIELDS, format_name)
        for row in rows:
            writer.write(row)
        written[format_name] = stream.getvalue()
    assert [json.loads(line) for line in written["jsonl"].splitlines()] == rows
    assert parse_csv(written["csv"]) == rows


def parse_csv(text: str) -> list[dict]:
    """The classifier rows of a CSV file, with JSON's types."""
    lines = list(csv.DictReader(io.StringIO(text)))
    assert lines and list(lines[0]) == list(predict.CLASSIFIER_FIELDS)
    return [{"file": line["file"], "label": int(line["label"]), "name": line["name"], "score": float(line["score"]),
             "p_value": float(line["p_value"]) if line["p_value"] else None, "known": json.loads(line["known"])}
            for line in lines]


def test_the_cli_writes_csv_reports_bad_files_and_progress(setup, models):
    completed = setup["completed"]["csv"]
    assert completed.returncode == 0, completed.stderr
    rows, _ = rows_and_errors(predict.classify(models[32], inputs_of(setup), batch_size=32))
    assert parse_csv((setup["root"] / "p.csv").read_text()) == rows
    stderr = completed.stderr.splitlines()
    errors = [line for line in stderr if line.startswith("error: ")]
    assert [line.split(": ")[1] for line in errors] == [
        str(setup["folder"] / name) for name in ("corrupt.jpg", "empty.png", "notes.txt")]
    progress = [line.split(",")[0] for line in stderr if line.startswith("progress: ")]
    assert progress == [f"progress: {n}/8 images" for n in (2, 4, 6, 8)]
    assert completed.stdout == ""


def test_an_existing_output_is_never_overwritten(setup, tmp_path):
    message = one_line_error(setup["completed"]["existing"])
    assert "existing.jsonl exists" in message and "--overwrite" in message
    assert (setup["root"] / "existing.jsonl").read_text() == "earlier results\n"
    existing = tmp_path / "a.jsonl"
    existing.write_text("x")
    predict.check_output_file(str(existing), overwrite=True)
    with pytest.raises(ValueError, match="is a folder"):
        predict.check_output_file(str(tmp_path), overwrite=True)
    with pytest.raises(ValueError, match="does not exist: create it first"):
        predict.check_output_file(str(tmp_path / "no" / "a.jsonl"), overwrite=False)
    predict.check_output_folder(str(tmp_path / "new"), overwrite=False)
    with pytest.raises(ValueError, match="is not empty"):
        predict.check_output_folder(str(tmp_path), overwrite=False)
    predict.check_output_folder(str(tmp_path), overwrite=True)
    with pytest.raises(ValueError, match="pass --output=FOLDER"):
        predict.check_output_folder(None, overwrite=False)


class FakeStream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_is_a_bar_on_a_terminal_and_lines_every_n_images_otherwise():
    clock = iter(np.arange(0.0, 100.0, 0.5)).__next__  # 0.5 s per reading
    log = FakeStream(tty=False)
    progress = predict.Progress(5, every=2, stream=log, clock=clock)
    for _ in range(5):
        progress.advance()
    progress.error("x.png", "empty file (0 bytes)")
    progress.close()
    lines = log.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines[:2]] == ["progress: 2/5 images", "progress: 4/5 images"]
    assert lines[2] == "error: x.png: empty file (0 bytes)" and len(lines) == 3

    terminal = FakeStream(tty=True)
    progress = predict.Progress(4, every=1000, stream=terminal, clock=clock)
    for _ in range(4):
        progress.advance()
    progress.close()
    text = terminal.getvalue()
    assert text.startswith("\r[") and text.endswith("\n") and "\n" not in text[:-1]
    assert text.split("\r")[-1].startswith(f"[{'#' * predict.BAR_WIDTH}] 4/4 images ")
    assert predict.progress_bar(1200, 5000, 85.2, width=10) == "[##........] 1200/5000 images 85 img/s"
    silent = FakeStream(tty=True)
    progress = predict.Progress(4, every=0, stream=silent)
    progress.advance()
    progress.close()
    assert silent.getvalue() == ""


def test_output_stems_are_distinct():
    names = ["a.png", "a.jpg", "b.png", os.path.join("sub", "a.png"), "B.PNG", "c.png", "c.png", "c_2.png"]
    assert predict.output_stems(names) == [
        "a.png", "a.jpg", "b.png", os.path.join("sub", "a"), "B.PNG_2", "c.png", "c.png_2", "c_2"]
    # b.png and B.PNG share a stem case-insensitively: both keep the extension, then differ by case only


class StandInSegmenter:
    """Maps that are functions of each pixel: class = red % 3, score = green / 255, known = blue >= 128
    (the ids of the classes 0, 1, 2 are 7, 8, 9). Records the image size of each call."""

    description = {"known_labels": [7, 8, 9], "num_classes": 3, "void_label": 255}

    def __init__(self):
        self.calls = []

    def predict(self, batch, alpha=None):
        assert batch.dtype == np.uint8 and batch.ndim == 4 and batch.shape[-1] == 3
        self.calls.append(batch.shape)
        return {"label": (batch[..., 0] % 3).astype(np.int64), "score": batch[..., 1] / np.float32(255),
                "known": batch[..., 2] >= 128}


def test_a_segmenter_writes_a_label_png_and_a_score_map_per_image_at_its_size(setup, tmp_path):
    out = tmp_path / "maps"
    model = StandInSegmenter()
    inputs = inputs_of(setup)
    rows, errors = rows_and_errors(predict.segment(model, inputs, batch_size=4, folder=str(out)))
    assert [os.path.basename(path) for path, _ in errors] == ["corrupt.jpg", "empty.png", "notes.txt"]
    # Chunks of four: (corrupt, empty, gray, palette), (rgb, rgba, rotated, notes.txt); one call per size.
    assert model.calls == [(2, 8, 8, 3), (1, 13, 20, 3), (1, 9, 11, 3), (1, 12, 6, 3)]
    for row, name in zip(rows, GOOD):
        assert list(row) == list(predict.SEGMENTER_FIELDS) and row["file"] == str(setup["folder"] / name)
        stem = os.path.splitext(name)[0]
        assert row["label_file"] == str(out / f"{stem}_label.png") and row["score_file"] == str(out / f"{stem}_score.npy")
        image = images.read_image(row["file"], 3)
        with Image.open(row["label_file"]) as png:
            assert png.mode == "L"
            labels = np.asarray(png)
        scores = np.load(row["score_file"])
        assert labels.shape == scores.shape == image.shape[:2] and scores.dtype == np.float32
        known = image[..., 2] >= 128
        np.testing.assert_array_equal(labels, np.where(known, np.array([7, 8, 9])[image[..., 0] % 3], 255))
        np.testing.assert_array_equal(scores, image[..., 1] / np.float32(255))
        assert row["unknown_share"] == pytest.approx(1 - known.mean())
    assert sorted(os.listdir(out)) == sorted(
        [f"{os.path.splitext(n)[0]}{s}" for n in GOOD if "/" not in n for s in ("_label.png", "_score.npy")] + ["sub"])


def test_a_segmenter_whose_ids_do_not_fit_a_png_is_refused():
    with pytest.raises(ValueError, match="do not fit distinct uint8 values"):
        predict.label_ids({"known_labels": [0, 1, 255], "void_label": 255})
    ids, void = predict.label_ids({"known_labels": [0, 1, 2]})  # void: 255 unless model.json says
    assert ids.tolist() == [0, 1, 2] and void == 255


@pytest.mark.slow  # the session's segmentation reference run: the testbed trained in a subprocess
def test_the_cli_segments_with_the_sessions_segmentation_export(tmp_path, tmp_path_factory):
    from lgmm_jax.data import scenes
    from tests.test_cli import segmentation_reference_run

    exported = shared_export(tmp_path_factory, segmentation_reference_run(tmp_path_factory))
    validation = scenes.load("validation")["image"][:3]
    folder = tmp_path / "scenes"
    os.makedirs(folder)
    pictures = {"a.png": validation[0], "b.png": validation[1][:40, :52], "c.jpg": validation[2]}
    for name, picture in pictures.items():
        Image.fromarray(picture).save(folder / name, quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "maps"
    completed = finish(start("-m", "lgmm_jax.predict", f"--model={exported}", f"--output={out}", "--batch_size=2",
                             str(folder)), timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert [line for line in completed.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {folder / 'broken.png'}: not an image pillow can read"]
    rows = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [row["file"] for row in rows] == [str(folder / name) for name in sorted(pictures)]
    model = inference.load(str(exported), batch_size=2)
    void = model.description["void_label"]
    for row in rows:
        image = images.read_image(row["file"], 3)
        alone = model.predict(image[None])
        labels = np.asarray(Image.open(row["label_file"]))
        scores = np.load(row["score_file"])
        assert labels.shape == scores.shape == image.shape[:2]
        np.testing.assert_allclose(scores, alone["score"][0], rtol=1e-5, atol=1e-5 * np.abs(scores).max())
        agree = np.abs(scores - model.threshold) > 1e-5 * np.abs(scores).max()  # away from the threshold
        expected = np.where(alone["known"][0], alone["label"][0], void)
        np.testing.assert_array_equal(labels[agree], expected[agree])
        assert row["unknown_share"] == pytest.approx(np.mean(labels == void))
    refused = finish(start("-m", "lgmm_jax.predict", f"--model={exported}", f"--output={out}", str(folder)))
    assert "is not empty" in one_line_error(refused)
