"""Segmentation sources: ADE20K folders and zips written here, TFDS Cityscapes through mock_data, anomaly
folders written here, scenes."""

import os
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from lgmm_jax.data import catalog, sources

VOID = 255


@pytest.fixture
def tfds_prepared():
    """mock_data serves data without preparing it: let the preparation check pass inside it."""
    with mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True):
        yield


def _serve(records):
    def data_source(builder, split, decoders=None, **kwargs):
        return records
    return tfds.testing.mock_data(as_data_source_fn=data_source)


# -------------------------------------------------------------------------------------------------- TFDS


def test_cityscapes_label_ids_become_the_19_train_ids(tfds_prepared):
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    records = [{"image_id": "a", "image_left": np.zeros((16, 16, 3), np.uint8), "segmentation_label": raw}]
    with _serve(records):
        label = catalog.get_segmentation_source("cityscapes", "validation")[0]["label"]
    # cityscapesScripts labels.py, written out: (label id, train id) of every evaluated class.
    evaluated = [(7, 0), (8, 1), (11, 2), (12, 3), (13, 4), (17, 5), (19, 6), (20, 7), (21, 8), (22, 9),
                 (23, 10), (24, 11), (25, 12), (26, 13), (27, 14), (28, 15), (31, 16), (32, 17), (33, 18)]
    expected = np.full(256, VOID)
    for label_id, train_id in evaluated:
        expected[label_id] = train_id
    np.testing.assert_array_equal(label.ravel(), expected)


def test_cityscapes_mock_data_has_the_real_shapes(tfds_prepared):
    with tfds.testing.mock_data(num_examples=2):
        source = catalog.get_segmentation_source("cityscapes", "train")
        example = source[1]
    assert len(source) == 2 and source.num_classes == 19
    assert example["image"].shape == (1024, 2048, 3) and example["label"].shape == (1024, 2048)
    assert set(np.unique(example["label"])) <= set(range(19)) | {VOID}


def test_a_record_whose_label_size_differs_from_its_image_is_refused(tfds_prepared):
    records = [{"image_left": np.zeros((4, 5, 3), np.uint8), "segmentation_label": np.zeros((4, 6, 1), np.uint8)}]
    with _serve(records):
        source = catalog.get_segmentation_source("cityscapes", "test")
        with pytest.raises(ValueError, match=r"record 0 of cityscapes test: image is 4x5 but its label is 4x6"):
            source[0]


@pytest.mark.parametrize("name, tfds_name", [("cityscapes", "cityscapes/semantic_segmentation")])
def test_unprepared_datasets_fail_fast_with_the_build_instruction(tmp_path, name, tfds_name):
    start = time.perf_counter()
    with pytest.raises(sources.DatasetNotAvailableError, match=f"tfds build {tfds_name} ") as info:
        catalog.get_segmentation_source(name, "train", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 5.0
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_unknown_datasets_and_splits_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown segmentation dataset 'ade'"):
        catalog.get_segmentation_source("ade", "train")
    with pytest.raises(ValueError, match="unknown split 'train' for folder="):
        catalog.get_segmentation_source(f"folder={tmp_path}", "train")


# ------------------------------------------------------------------------------ ADE20K (ADEChallengeData2016)


def _write_ade20k(root, split_folder, labels, seed=0):
    """ADEChallengeData2016/images/<split>/<stem>.jpg and annotations/<split>/<stem>.png, as the zip ships."""
    rng = np.random.default_rng(seed)
    for index, label in enumerate(labels):
        stem = f"ADE_{split_folder[:5]}_{index + 1:08d}"
        _write(os.path.join(root, "ADEChallengeData2016", "images", split_folder, f"{stem}.jpg"),
               rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8))
        _write(os.path.join(root, "ADEChallengeData2016", "annotations", split_folder, f"{stem}.png"), label)


def _zip_folder(folder, archive):
    import zipfile

    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(str(p) for p in folder.rglob("*") if p.is_file()):
            zipped.write(path, os.path.relpath(path, folder.parent))


def test_ade20k_reads_the_challenge_folder_and_reduces_the_zero_label_as_mmseg(tmp_path):
    raw = np.array([[0, 1, 2], [150, 151, 255]], np.uint8)
    _write_ade20k(tmp_path, "training", [raw, raw[::-1]])
    _write_ade20k(tmp_path, "validation", [raw[:, ::-1]], seed=1)
    source = catalog.get_segmentation_source("ade20k", "train", data_dir=str(tmp_path))
    assert len(source) == 2 and source.num_classes == 150 and len(source.label_names) == 150
    assert source.label_names[0] == "wall" and source.label_names[-1] == "flag"
    # mmseg's reduce_zero_label written out: 0 -> 255, k -> k - 1; above 150 no class (void here).
    np.testing.assert_array_equal(source[0]["label"], [[VOID, 0, 1], [149, VOID, VOID]])
    np.testing.assert_array_equal(source[1]["label"], [[149, VOID, VOID], [VOID, 0, 1]])
    image_file = tmp_path / "ADEChallengeData2016/images/training/ADE_train_00000001.jpg"
    np.testing.assert_array_equal(source[0]["image"], np.asarray(Image.open(image_file).convert("RGB")))
    assert source[0]["label"].dtype == np.uint8 and source[0]["image"].dtype == np.uint8
    validation = catalog.get_segmentation_source("ade20k", "validation", data_dir=str(tmp_path))
    np.testing.assert_array_equal(validation[0]["label"], [[1, 0, VOID], [VOID, VOID, 149]])


def test_ade20k_reads_the_official_zip_in_place_with_the_folders_numbers(tmp_path):
    raw = np.array([[0, 7, 150], [3, 3, 0]], np.uint8)
    _write_ade20k(tmp_path / "unpacked", "training", [raw, raw.T.copy().reshape(2, 3)])
    (tmp_path / "zipped").mkdir()
    _zip_folder(tmp_path / "unpacked" / "ADEChallengeData2016", tmp_path / "zipped" / "ADEChallengeData2016.zip")
    folder = catalog.get_segmentation_source("ade20k", "train", data_dir=str(tmp_path / "unpacked"))
    archive = catalog.get_segmentation_source("ade20k", "train", data_dir=str(tmp_path / "zipped"))
    assert len(archive) == len(folder) == 2
    for index in range(2):
        for key in ("image", "label"):
            np.testing.assert_array_equal(archive[index][key], folder[index][key])


def test_ade20k_missing_data_and_scene_parse150_are_one_line_errors(tmp_path):
    with pytest.raises(sources.DatasetNotAvailableError, match="neither .*ADEChallengeData2016/ nor .*zip exists"):
        catalog.get_segmentation_source("ade20k", "train", data_dir=str(tmp_path))
    with pytest.raises(sources.DatasetNotAvailableError, match="pass the folder that holds it"):
        catalog.get_segmentation_source("ade20k", "train")
    _write_ade20k(tmp_path, "training", [np.zeros((2, 2), np.uint8)])
    os.remove(tmp_path / "ADEChallengeData2016/annotations/training/ADE_train_00000001.png")
    with pytest.raises(sources.DatasetNotAvailableError, match="ADE_train_00000001.jpg has no annotation"):
        catalog.get_segmentation_source("ade20k", "train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown split 'test' for ade20k"):
        catalog.get_segmentation_source("ade20k", "test", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="scene_parse150 holds ADE20K's instance-challenge masks") as info:
        catalog.get_segmentation_source("scene_parse150", "train")
    assert "\n" not in str(info.value) and "--config.dataset=ade20k" in str(info.value)


# --------------------------------------------------------------------------------------- anomaly folders


def _write(path, array, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(array)
    if palette:
        image = image.convert("P")  # a palette PNG whose indices are the label values
        image.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    image.save(path)


def _anomaly_labels(rng, count, shape, values):
    return [rng.choice(values, size=shape).astype(np.uint8) for _ in range(count)]


def test_fishyscapes_layout_reads_images_and_anomaly_maps_as_written(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 12, 16, 3), dtype=np.uint8)
    labels = _anomaly_labels(rng, 3, (12, 16), [0, 1, VOID])
    for i in range(3):
        _write(str(tmp_path / "images" / f"frame{i}.png"), images[i])
        _write(str(tmp_path / "labels" / f"frame{i}.png"), labels[i], palette=(i == 1))
    source = catalog.get_segmentation_source(f"folder={tmp_path}", "test")
    assert len(source) == 3 and source.layout == "fishyscapes"
    for i in range(3):
        example = source[i]
        np.testing.assert_array_equal(example["image"], images[i])
        np.testing.assert_array_equal(example["anomaly"], labels[i])
        assert example["anomaly"].dtype == np.uint8


def test_road_anomaly_raw_masks_read_as_they_ship(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    raw = _anomaly_labels(rng, 1, (10, 14), [0, 2])[0]
    _write(str(tmp_path / "frames" / "animals01.png"), image)
    _write(str(tmp_path / "frames" / "animals01.labels" / "labels_semantic.png"), raw)
    source = catalog.get_segmentation_source(f"folder={tmp_path}", "test")
    assert source.layout == "road_anomaly" and len(source) == 1
    np.testing.assert_array_equal(source[0]["anomaly"], (raw == 2).astype(np.uint8))


def test_a_label_of_another_size_is_refused_naming_the_file(tmp_path):
    _write(str(tmp_path / "images" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    _write(str(tmp_path / "labels" / "a.png"), np.zeros((8, 9), np.uint8))
    source = catalog.get_segmentation_source(f"folder={tmp_path}", "test")
    label_path = str(tmp_path / "labels" / "a.png")
    with pytest.raises(ValueError, match="image is 8x8 but its label is 8x9") as info:
        source[0]
    assert str(info.value).startswith(label_path) and "\n" not in str(info.value)


@pytest.mark.parametrize("layout, values, bad", [("fishyscapes", [0, 1, VOID], 2), ("road_anomaly", [0, 2], 1)])
def test_label_values_outside_the_layouts_set_are_refused_naming_the_file(tmp_path, layout, values, bad):
    label = np.array([values + [bad]], np.uint8)
    image = np.zeros((1, len(values) + 1, 3), np.uint8)
    if layout == "fishyscapes":
        label_path = tmp_path / "labels" / "x.png"
        _write(str(tmp_path / "images" / "x.png"), image)
    else:
        label_path = tmp_path / "frames" / "x.labels" / "labels_semantic.png"
        _write(str(tmp_path / "frames" / "x.png"), image)
    _write(str(label_path), label)
    source = catalog.get_segmentation_source(f"folder={tmp_path}", "test")
    with pytest.raises(ValueError, match=rf"label values \[{bad}\] are outside the known set") as info:
        source[0]
    assert str(info.value).startswith(str(label_path)) and "\n" not in str(info.value)


def test_missing_labels_or_layouts_say_what_is_missing(tmp_path):
    _write(str(tmp_path / "a" / "images" / "x.png"), np.zeros((2, 2, 3), np.uint8))
    os.makedirs(tmp_path / "a" / "labels")
    with pytest.raises(sources.DatasetNotAvailableError, match="x.png has no label"):
        catalog.get_segmentation_source(f"folder={tmp_path / 'a'}", "test")
    os.makedirs(tmp_path / "b")
    with pytest.raises(sources.DatasetNotAvailableError, match="neither images/ \\+ labels/"):
        catalog.get_segmentation_source(f"folder={tmp_path / 'b'}", "test")


# ------------------------------------------------------------------------------------------------ scenes


@pytest.mark.skipif(not os.path.isfile(os.path.join(sources.FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
                    reason="Fashion-MNIST not installed")
def test_scenes_source_serves_the_cached_testbed(tmp_path):
    source = catalog.get_segmentation_source("scenes", "validation", data_dir=str(tmp_path))
    example = source[3]
    assert len(source) == 200 and source.num_classes == 8 and source.label_names[0] == "background"
    assert example["image"].shape == (64, 64, 3) and example["label"].shape == example["anomaly"].shape == (64, 64)
