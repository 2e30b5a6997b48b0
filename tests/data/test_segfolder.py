"""A user's labelled segmentation folder in mmseg's custom-dataset layout (`segfolder=PATH`), written here
from real photographs (scikit-image's) with hand-made label maps: pairs, pixels, labels, mmseg's
reduce_zero_label, bad files, one-line refusals, and a tiny SegFormer trained and evaluated on it."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data as skimage_data

import configs.default
from lgmm_jax.data import catalog, images, segfolder
from lgmm_jax.data.seg_augment import NORMALIZATION, SegmentationTrainExample
from lgmm_jax.data.sources import DatasetNotAvailableError
from lgmm_jax.tasks.segmentation import evaluation
from lgmm_jax.tasks.segmentation import task as segmentation_task
from lgmm_jax.tasks.segmentation import data as segmentation_data
from tests.subprocesses import one_line_error
from tests.test_cli import compilation_cache, run_main

VOID = 255
CLASS_NAMES = ("sky", "ground", "thing")
EXIF_ORIENTATION = 0x0112
ROTATED_90_CLOCKWISE = 6  # EXIF orientation 6: the stored picture is shown turned 90 degrees clockwise


def photo(name: str, top: int, left: int, height: int, width: int) -> np.ndarray:
    """A crop of one of scikit-image's photographs (uint8, RGB or grayscale as the photograph is)."""
    return getattr(skimage_data, name)()[top:top + height, left:left + width]


def band_label(height: int, width: int, values=(0, 1, 2)) -> np.ndarray:
    """Horizontal bands of ``values`` top to bottom with a void (255) frame one pixel wide."""
    rows = np.arange(height) * len(values) // height
    label = np.asarray(values, np.uint8)[np.broadcast_to(rows[:, None], (height, width))]
    label[[0, -1], :] = VOID
    label[:, [0, -1]] = VOID
    return label


def write_file(path, content: bytes = b"") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    return str(path)


def write_jpeg(path, pixels: np.ndarray, orientation: int | None = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    exif = Image.Exif()
    if orientation is not None:
        exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, quality=90, exif=exif)
    return str(path)


def write_label(path, label: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(label).save(path)
    return str(path)


def truncated_jpeg(path) -> str:
    """A JPEG cut after half its bytes: pillow opens its header, its pixels do not decode."""
    write_jpeg(path, photo("astronaut", 0, 0, 48, 48))
    content = open(path, "rb").read()
    return write_file(path, content[: len(content) // 2])


def write_segfolder(root) -> dict:
    """A segfolder with train (5 pairs, two of them bad images, plus a hidden file and a text file) and val
    (2 pairs), no test folder, and classes.txt. Returns what was written: {"train": [(image, label, pixels
    or None, label map)], "val": [...]}, in the sorted image path order the source must give."""
    root = str(root)
    train = [
        ("a", photo("astronaut", 0, 0, 40, 56), None),
        ("b", photo("camera", 100, 60, 36, 44), None),  # a grayscale JPEG: read as RGB
        ("d", None, "truncated"),
        ("e", None, "empty"),
        ("sub/c", photo("coffee", 50, 80, 30, 40), ROTATED_90_CLOCKWISE),  # shown 40 high, 30 wide
    ]
    written = {"train": [], "val": []}
    for stem, pixels, kind in train:
        image = os.path.join(root, "img_dir", "train", f"{stem}.jpg")
        if kind == "truncated":
            truncated_jpeg(image)
            shape = (48, 48)
        elif kind == "empty":
            write_file(image)
            shape = (20, 20)
        else:
            write_jpeg(image, pixels, orientation=kind)
            shape = pixels.shape[:2][::-1] if kind == ROTATED_90_CLOCKWISE else pixels.shape[:2]
        label = band_label(*shape)
        written["train"].append((image, write_label(os.path.join(root, "ann_dir", "train", f"{stem}.png"), label),
                                 None if kind in ("truncated", "empty") else pixels, label))
    write_jpeg(os.path.join(root, "img_dir", "train", ".hidden.jpg"), photo("chelsea", 0, 0, 8, 8))
    write_label(os.path.join(root, "ann_dir", "train", ".hidden.png"), band_label(8, 8))
    write_file(os.path.join(root, "img_dir", "train", "notes.txt"), b"not an image")
    for stem, (top, left) in (("g", (20, 30)), ("h", (100, 200))):
        pixels = photo("chelsea", top, left, 44, 52)
        label = band_label(44, 52, values=(2, 1, 0))
        written["val"].append((write_jpeg(os.path.join(root, "img_dir", "val", f"{stem}.jpg"), pixels),
                               write_label(os.path.join(root, "ann_dir", "val", f"{stem}.png"), label), pixels, label))
    write_file(os.path.join(root, "classes.txt"), "\n".join(CLASS_NAMES).encode() + b"\n\n")
    return written


def pillow_rgb(path) -> np.ndarray:
    """The file as pillow shows it: EXIF orientation applied, converted to RGB."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def source_of(root, split: str, **options):
    return catalog.get_segmentation_source(f"segfolder={root}", split, options=options or None)


def assert_one_line_naming(error, *names: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, message


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "segfolder"
    return root, write_segfolder(root)


# ------------------------------------------------------------------------------------------------ reading


def test_pairs_in_sorted_order_hidden_and_non_image_files_left_out(folder):
    root, written = folder
    source = source_of(root, "train")
    expected = [(f"{root}/img_dir/train/{stem}.jpg", f"{root}/ann_dir/train/{stem}.png")
                for stem in ("a", "b", "d", "e", "sub/c")]
    assert source.paths == tuple(expected) == tuple((image, label) for image, label, _, _ in written["train"])
    assert len(source) == 5 and source.num_classes == 3 and source.label_names == CLASS_NAMES
    assert source.name == f"segfolder={root}"


def test_pixels_are_pillows_decode_and_labels_what_was_written(folder):
    root, written = folder
    source = source_of(root, "train")
    for index, (image_path, _, pixels, label) in enumerate(written["train"]):
        if pixels is None:
            continue
        example = source[index]
        assert example["image"].dtype == np.uint8 and example["image"].ndim == 3 and example["image"].shape[2] == 3
        np.testing.assert_array_equal(example["image"], pillow_rgb(image_path))
        np.testing.assert_array_equal(example["label"], label)
        assert example["label"].dtype == np.uint8
    assert source[4]["image"].shape == (40, 30, 3)  # the EXIF orientation stood the 30x40 picture up
    gray = source[1]["image"]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # the grayscale JPEG, its value in R, G and B


def test_unreadable_images_raise_naming_the_file_and_are_recorded(folder, capsys):
    root, written = folder
    source = source_of(root, "train")
    for index, reason in ((2, "damaged or truncated"), (3, "empty file")):
        with pytest.raises(images.UnreadableImageError) as error:
            source[index]
        assert error.value.path == written["train"][index][0] and reason in error.value.reason
    with pytest.raises(images.UnreadableImageError):
        source[2]  # met again: recorded (and warned about) once
    assert list(source.unreadable.items()) == [written["train"][2][0], written["train"][3][0]]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "d.jpg" in warnings[0] and "e.jpg" in warnings[1]


def test_an_unreadable_label_is_an_unreadable_file_too(folder):
    root, written = folder
    write_file(written["train"][0][1], b"\x89PNG not really")
    with pytest.raises(images.UnreadableImageError) as error:
        source_of(root, "train")[0]
    assert error.value.path == written["train"][0][1]


def test_validation_reads_val_and_test_falls_back_to_it(folder):
    root, written = folder
    expected = tuple((image, label) for image, label, _, _ in written["val"])
    assert source_of(root, "validation").paths == expected
    assert source_of(root, "test").paths == expected
    for index, (image_path, _, _, label) in enumerate(written["val"]):
        np.testing.assert_array_equal(source_of(root, "test")[index]["image"], pillow_rgb(image_path))
        np.testing.assert_array_equal(source_of(root, "test")[index]["label"], label)


def test_split_folders_may_have_the_long_names(tmp_path):
    pixels, label = photo("astronaut", 0, 0, 8, 8), band_label(8, 8)
    for split, folder_name in (("train", "training"), ("validation", "validation"), ("test", "testing")):
        write_jpeg(tmp_path / "img_dir" / folder_name / f"{split}.jpg", pixels)
        write_label(tmp_path / "ann_dir" / folder_name / f"{split}.png", label)
    write_file(tmp_path / "classes.txt", b"a\nb\nc\n")
    for split, folder_name in (("train", "training"), ("validation", "validation"), ("test", "testing")):
        assert source_of(tmp_path, split).paths == ((f"{tmp_path}/img_dir/{folder_name}/{split}.jpg",
                                                     f"{tmp_path}/ann_dir/{folder_name}/{split}.png"),)


def test_suffixes_and_class_names_file_are_options(tmp_path):
    """Cityscapes-style names: *_leftImg8bit.png images with *_labelTrainIds.png labels beside other
    annotation files, which are left out; a class-names file elsewhere in the folder."""
    pixels, label = photo("coffee", 0, 0, 12, 16), band_label(12, 16)
    for split in ("train", "val"):
        Image.fromarray(pixels).save(write_file(tmp_path / "img_dir" / split / "x_leftImg8bit.png"))
        write_label(tmp_path / "ann_dir" / split / "x_labelTrainIds.png", label)
        write_label(tmp_path / "ann_dir" / split / "x_color.png", label)
    write_file(tmp_path / "meta" / "names.txt", b"one\ntwo\nthree\n")
    source = source_of(tmp_path, "train", img_suffix="_leftImg8bit.png", seg_map_suffix="_labelTrainIds.png",
                       class_names="meta/names.txt")
    assert source.paths == ((f"{tmp_path}/img_dir/train/x_leftImg8bit.png",
                             f"{tmp_path}/ann_dir/train/x_labelTrainIds.png"),)
    assert source.label_names == ("one", "two", "three")
    np.testing.assert_array_equal(source[0]["image"], pixels)  # PNG: lossless
    np.testing.assert_array_equal(source[0]["label"], label)


def test_reduce_zero_label_is_mmsegs(tmp_path):
    """mmseg's LoadAnnotations(reduce_zero_label=True): gt[gt == 0] = 255; gt = gt - 1; gt[gt == 254] = 255,
    written out here on every raw value a 3-class label may hold (0..3 and 255)."""
    raw = np.array([[0, 1, 2, 3, 255], [3, 2, 1, 0, 255]], np.uint8)
    for split in ("train", "val"):
        write_jpeg(tmp_path / "img_dir" / split / "x.jpg", photo("chelsea", 0, 0, 2, 5))
        write_label(tmp_path / "ann_dir" / split / "x.png", raw)
    write_file(tmp_path / "classes.txt", b"a\nb\nc\n")
    expected = raw.astype(np.int64)
    expected[expected == 0] = 255
    expected = expected - 1
    expected[expected == 254] = 255
    label = source_of(tmp_path, "train", reduce_zero_label=True)[0]["label"]
    np.testing.assert_array_equal(label, expected.astype(np.uint8))
    with pytest.raises(ValueError, match=r"label values \[3\] are neither class ids 0..2") as error:
        source_of(tmp_path, "train")[0]  # without reduce_zero_label, 3 is no class of three
    assert_one_line_naming(error, tmp_path / "ann_dir" / "train" / "x.png")


def test_label_values_outside_the_classes_are_refused_naming_the_file_and_values(folder):
    root, written = folder
    path = written["train"][0][1]
    label = written["train"][0][3].copy()
    label[5, 5], label[6, 6] = 3, 254
    write_label(path, label)
    with pytest.raises(ValueError, match=r"label values \[3, 254\] are neither class ids 0..2") as error:
        source_of(root, "train")[0]
    assert_one_line_naming(error, path)


def test_a_label_of_another_size_is_refused_naming_the_file(folder):
    root, written = folder
    path = written["train"][0][1]
    write_label(path, band_label(40, 55))
    with pytest.raises(ValueError, match="image is 40x56 but its label is 40x55") as error:
        source_of(root, "train")[0]
    assert_one_line_naming(error, path)


# ------------------------------------------------------------------------------------- refused up front


def test_an_image_without_its_label_and_a_label_without_its_image_are_refused(folder):
    root, _ = folder
    os.remove(root / "ann_dir" / "train" / "b.png")
    with pytest.raises(DatasetNotAvailableError, match="has no label") as error:
        source_of(root, "train")
    assert_one_line_naming(error, root / "img_dir" / "train" / "b.jpg", root / "ann_dir" / "train" / "b.png")
    write_label(root / "ann_dir" / "val" / "orphan.png", band_label(4, 4))
    with pytest.raises(DatasetNotAvailableError, match="has no image") as error:
        source_of(root, "validation")
    assert_one_line_naming(error, root / "ann_dir" / "val" / "orphan.png", root / "img_dir" / "val" / "orphan.jpg")


def test_an_empty_split_is_refused_naming_its_folder_and_the_suffix_option(folder):
    root, _ = folder
    for name in os.listdir(root / "img_dir" / "val"):
        os.remove(root / "img_dir" / "val" / name)
    write_file(root / "img_dir" / "val" / "readme.txt", b"nothing here")
    with pytest.raises(DatasetNotAvailableError, match=r"no \*\.jpg images under") as error:
        source_of(root, "validation")
    assert_one_line_naming(error, root / "img_dir" / "val", "segfolder.img_suffix")


@pytest.mark.parametrize("content", [None, b"", b"\n\n"])
def test_a_missing_or_empty_class_names_file_is_refused(folder, content):
    root, _ = folder
    os.remove(root / "classes.txt")
    if content is not None:
        write_file(root / "classes.txt", content)
    with pytest.raises(DatasetNotAvailableError, match="not found" if content is None else "is empty") as error:
        source_of(root, "train")
    assert_one_line_naming(error, root / "classes.txt")


def test_a_blank_line_between_class_names_is_refused(folder):
    root, _ = folder
    write_file(root / "classes.txt", b"sky\n\nthing\n")
    with pytest.raises(ValueError, match="line 2 of the class-names file") as error:
        source_of(root, "train")
    assert_one_line_naming(error, root / "classes.txt")


def test_missing_folders_are_refused_saying_what_to_create(folder, tmp_path):
    root, _ = folder
    shutil.rmtree(root / "ann_dir" / "val")
    with pytest.raises(DatasetNotAvailableError, match="has no validation folder: create one of val/") as error:
        source_of(root, "train")  # every split needs val: refused whichever split is opened first
    assert_one_line_naming(error, root / "ann_dir")
    shutil.rmtree(root / "img_dir")
    with pytest.raises(DatasetNotAvailableError, match="not found") as error:
        source_of(root, "train")
    assert_one_line_naming(error, root / "img_dir")
    with pytest.raises(DatasetNotAvailableError, match="not found") as error:
        source_of(tmp_path / "nowhere", "train")
    assert_one_line_naming(error, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown split 'extra'"):
        source_of(root, "extra")
    with pytest.raises(ValueError, match="has no path"):
        catalog.get_segmentation_source("segfolder=", "train")


def test_options_are_checked_with_the_config():
    config = configs.default.get_config()
    config.task, config.model.encoder, config.protocol = "segmentation", "segformer_b0", ""
    segmentation_task.TASK.check_config(config)  # the defaults pass
    assert segmentation_data.segfolder_options(config) == {
        "img_suffix": ".jpg", "seg_map_suffix": ".png", "class_names": "", "reduce_zero_label": False}
    config.segfolder.img_suffix = ""
    with pytest.raises(ValueError, match="segfolder.img_suffix=''"):
        segmentation_task.TASK.check_config(config)
    with pytest.raises(ValueError, match="segfolder.suffix is not a segfolder option"):
        segfolder.SegFolderOptions.from_mapping({"suffix": ".png"})


def test_the_task_reads_the_options_of_the_config_it_is_given(tmp_path):
    raw = np.array([[0, 1, 2, 3]], np.uint8)
    for split in ("train", "val"):
        Image.fromarray(photo("astronaut", 0, 0, 1, 4)).save(write_file(tmp_path / "img_dir" / split / "x.png"))
        write_label(tmp_path / "ann_dir" / split / "x.png", raw)
    write_file(tmp_path / "names.txt", b"a\nb\nc\n")
    config = configs.default.get_config()
    config.segfolder.img_suffix, config.segfolder.class_names = ".png", "names.txt"
    config.segfolder.reduce_zero_label = True
    source = segmentation_task.TASK.data_source(config, f"segfolder={tmp_path}", "train")
    np.testing.assert_array_equal(source[0]["label"], [[VOID, 0, 1, 2]])


# ----------------------------------------------------------------------------------------- bad images


def test_training_replaces_an_unreadable_image_by_another_drawn_with_the_elements_rng(folder):
    root, written = folder
    source = source_of(root, "train")
    example = SegmentationTrainExample(source, scale=(32, 32), crop_size=(24, 24), normalization=NORMALIZATION)
    first = example.random_map(2, np.random.default_rng(7))  # d.jpg: truncated
    again = example.random_map(2, np.random.default_rng(7))
    for key in ("image", "label"):
        np.testing.assert_array_equal(first[key], again[key])
    assert first["image"].shape == (24, 24, 3) and first["label"].shape == (24, 24)
    assert set(np.unique(first["label"])) <= {0, 1, 2, VOID}
    recorded = set(source.unreadable.items())  # d.jpg, and e.jpg too where a draw landed on it
    assert written["train"][2][0] in recorded <= {written["train"][2][0], written["train"][3][0]}
    readable = example.random_map(0, np.random.default_rng(7))  # a.jpg reads: nothing is drawn instead
    assert readable["label"].shape == (24, 24)


def test_evaluation_leaves_unreadable_images_out_and_lists_them(folder):
    root, written = folder
    source = source_of(root, "train")
    examples = evaluation.readable_examples(source, range(len(source)))
    assert len(examples) == 3
    for example, index in zip(examples, (0, 1, 4)):
        np.testing.assert_array_equal(example["label"], written["train"][index][3])
    bad = {written["train"][i][0]: source.unreadable.items()[written["train"][i][0]] for i in (2, 3)}
    assert evaluation.excluded_files({"train": source, "none": object()}) == {"train": {"count": 2, "files": bad}}


# ------------------------------------------------------------------------------------------- end to end


def write_anomaly_folder(root) -> None:
    """Fishyscapes layout: images/ with labels/ of 0 known, 1 anomaly (a square of another photograph
    pasted in), 255 void."""
    for index, (top, left) in enumerate(((0, 0), (60, 90), (150, 20))):
        pixels = photo("chelsea", top, left, 48, 64).copy()
        pixels[10:26, 20:36] = photo("astronaut", 200, 200, 16, 16)
        anomaly = np.zeros((48, 64), np.uint8)
        anomaly[10:26, 20:36] = 1
        anomaly[0, :] = VOID
        write_jpeg(root / "images" / f"{index}.jpg", pixels)
        write_label(root / "labels" / f"{index}.png", anomaly)


def tiny_segfolder_args(root, anomalies) -> tuple[str, ...]:
    return (
        "--config=configs/scenes.py",
        f"--config.dataset=segfolder={root}",
        f"--config.ood_datasets=('folder={anomalies}',)",
        "--config.num_train_steps=20",
        "--config.batch_size=4",
        "--config.eval_batch_size=4",
        "--config.log_every_steps=10",
        "--config.checkpoint_every_steps=20",
        "--config.memory_size=200",
        "--config.loss.reseed_epochs=()",
        "--config.segmentation.scale=(48, 48)",
        "--config.segmentation.crop_size=(32, 32)",
        "--config.segmentation.fit_images=4",
        "--config.eval.figures=False",
    )


@pytest.mark.slow  # trains and evaluates a tiny SegFormer in a subprocess: 35-55 s on 2 shared cores
def test_a_tiny_segformer_trains_on_a_segfolder_and_evaluates(folder, tmp_path):
    """20 steps on the folder (its two bad training images replaced), then mIoU on its val split (no test
    folder: the val images are the test split too; a truncated one left out) and pixel AUROC on an anomaly
    folder."""
    root, written = folder
    bad_val = truncated_jpeg(root / "img_dir" / "val" / "z.jpg")
    write_label(root / "ann_dir" / "val" / "z.png", band_label(48, 48))
    write_anomaly_folder(tmp_path / "anomalies")
    workdir = tmp_path / "run"
    result = run_main(workdir, *tiny_segfolder_args(root, tmp_path / "anomalies"), cache=compilation_cache())
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    closed = results["closed_set"]
    assert results["label_names"] == list(CLASS_NAMES) and len(closed["iou"]) == 3
    assert 0 <= closed["miou"] <= 1 and closed["num_images"] == len(written["val"])
    (name, by_score), = results["open_set"].items()
    assert by_score["num_images"] == 3 and 0 <= by_score["likelihood"]["auroc"] <= 1
    bad = [written["train"][2][0], written["train"][3][0]]
    for path in bad:
        assert f"warning: skipping unreadable image {path}" in result.stderr
    listed = (workdir / "unreadable_files.txt").read_text().splitlines()  # met in training
    assert [line.split("\t")[0] for line in listed] == bad
    excluded = results["unreadable_files"]  # met in evaluation (L-GMM's likelihood fits nothing on train)
    for split in ("validation", "test"):
        assert excluded[split]["count"] == 1 and list(excluded[split]["files"]) == [bad_val]
    assert excluded["train"]["count"] == 0


def test_a_segfolder_refusal_is_one_cli_line_and_writes_nothing(folder, tmp_path):
    root, _ = folder
    os.remove(root / "ann_dir" / "train" / "a.png")
    workdir = tmp_path / "run"
    result = run_main(workdir, "--config=configs/scenes.py", f"--config.dataset=segfolder={root}",
                      "--config.ood_datasets=()", timeout=300)
    line = one_line_error(result)
    assert f"{root}/img_dir/train/a.jpg has no label" in line
    assert not workdir.exists()
