"""The offline segmentation testbed: label / anomaly conventions, provenance, determinism and the cache."""

import os

import numpy as np
import pytest

from lgmm_jax.data import scenes, sources

needs_fashion = pytest.mark.skipif(
    not os.path.isfile(os.path.join(sources.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")


# ------------------------------------------------------------------------------------------ pasting rules


def test_paste_blends_by_alpha_and_marks_opaque_partial_and_clear_pixels():
    image = np.full((4, 4, 3), 100.0, np.float32)
    classes = np.full((4, 4), 2, np.uint8)
    alpha = np.array([[1.0, 0.5], [0.3, 0.05]], np.float32)
    colour = np.full((2, 2, 3), 200.0, np.float32)
    new_image, new_classes = scenes.paste(image, classes, colour, alpha, top=1, left=2, class_id=5)
    np.testing.assert_allclose(new_image[1:3, 2:4, 0], [[200, 150], [130, 105]])
    np.testing.assert_array_equal(new_classes[1:3, 2:4], [[5, 5], [scenes.VOID, 2]])
    assert (new_classes[0] == 2).all() and (new_image[0] == 100).all()  # outside the window: untouched
    assert (classes == 2).all() and (image == 100).all()  # inputs are not modified


def test_label_and_anomaly_maps_follow_the_fishyscapes_format():
    unknown = scenes._UNKNOWN_CLASS  # pylint: disable=protected-access
    classes = np.array([[0, 3, unknown, scenes.VOID]], np.uint8)
    label, anomaly = scenes.label_and_anomaly(classes)
    np.testing.assert_array_equal(label, [[0, 3, 255, 255]])
    np.testing.assert_array_equal(anomaly, [[0, 0, 1, 255]])


def test_object_layer_alpha_comes_from_intensity():
    intensity = np.zeros((28, 28), np.uint8)
    intensity[:, 14:] = 255
    intensity[:, 10:14] = 64
    colour, alpha = scenes.object_layer(intensity, 28, np.array([1.0, 0.5, 0.25]))
    assert alpha.shape == (28, 28) and colour.shape == (28, 28, 3)
    np.testing.assert_allclose(alpha[:, :10], 0.0)
    np.testing.assert_allclose(alpha[:, 10:14], 0.5)
    np.testing.assert_allclose(alpha[:, 14:], 1.0)
    np.testing.assert_allclose(colour[0, 20], [255, 127.5, 63.75])


def test_photographs_of_train_and_test_are_disjoint_real_rgb_pictures():
    assert not set(scenes.TRAIN_PHOTOGRAPHS) & set(scenes.TEST_PHOTOGRAPHS)
    assert not {"cat", "chelsea"} <= set(scenes.TRAIN_PHOTOGRAPHS) | set(scenes.TEST_PHOTOGRAPHS)  # one cat
    train = [scenes.load_photograph(n) for n in scenes.TRAIN_PHOTOGRAPHS]
    test = [scenes.load_photograph(n) for n in scenes.TEST_PHOTOGRAPHS]
    for photograph in train + test:
        assert photograph.dtype == np.uint8 and photograph.ndim == 3 and photograph.shape[2] == 3
        assert min(photograph.shape[:2]) >= 256
    assert not any(a.shape == b.shape and np.array_equal(a, b) for a in train for b in test)


def test_random_background_is_a_resized_crop_of_the_photograph():
    photograph = np.zeros((300, 400, 3), np.uint8)
    photograph[..., 0] = 200  # a flat red picture stays flat red through any crop and resampling
    background = scenes.random_background(photograph, 64, np.random.default_rng(0))
    assert background.shape == (64, 64, 3)
    np.testing.assert_array_equal(background[..., 0], 200)
    np.testing.assert_array_equal(background[..., 1:], 0)


# ------------------------------------------------------------------------------------------------ splits


@needs_fashion
@pytest.mark.parametrize("split", scenes.SPLITS)
def test_every_split_follows_the_conventions(split):
    data = scenes.build_split(split, num_scenes=40)
    image, label, anomaly = data["image"], data["label"], data["anomaly"]
    size = scenes.SCENE_SIZE
    assert image.shape == (40, size, size, 3) and image.dtype == np.uint8
    assert label.shape == anomaly.shape == (40, size, size) and label.dtype == anomaly.dtype == np.uint8
    assert set(np.unique(label)) <= set(range(scenes.NUM_CLASSES)) | {255}
    assert set(np.unique(anomaly)) <= {0, 1, 255}
    np.testing.assert_array_equal(anomaly == 0, label != 255)  # known pixels are exactly the labelled ones
    assert (label[anomaly == 1] == 255).all()
    assert 0.0 < np.mean(label == 255) < 0.3  # a thin void rim (and the unknowns), not a void scene
    has_anomaly = (anomaly == 1).any(axis=(1, 2))
    if split in ("test_near", "test_far"):
        assert has_anomaly.all()  # one unknown object in every scene
    else:
        assert not has_anomaly.any()
    objects_per_scene = [len(np.unique(l[(l != 0) & (l != 255)])) for l in label]
    assert max(objects_per_scene) >= 2
    assert np.mean(label == 0) > 0.5  # background dominates, as in a real photograph with a few objects


@needs_fashion
def test_garments_come_from_the_matching_fashion_mnist_split_and_classes():
    fashion_test = sources.load_fashion_mnist_source("test")
    pool = scenes.garment_pool("test", scenes.KNOWN_GARMENTS, known=True)
    expected = np.isin(fashion_test.labels, scenes.KNOWN_GARMENTS)
    np.testing.assert_array_equal(pool.images, fashion_test.images[expected, ..., 0])
    garments = fashion_test.labels[expected]
    np.testing.assert_array_equal(pool.classes, [scenes.KNOWN_GARMENTS.index(g) + 1 for g in garments])
    near = scenes.garment_pool("test", scenes.NEAR_GARMENTS, known=False)
    assert len(near.images) == 3000 and (near.classes == scenes._UNKNOWN_CLASS).all()  # pylint: disable=protected-access
    assert scenes.LABEL_NAMES[1:] == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Sandal", "Sneaker", "Bag")


@needs_fashion
def test_scenes_are_deterministic_per_seed_and_independent_of_the_split_length():
    first = scenes.build_split("test_far", seed=3, num_scenes=6)
    again = scenes.build_split("test_far", seed=3, num_scenes=9)
    other_seed = scenes.build_split("test_far", seed=4, num_scenes=6)
    for key in ("image", "label", "anomaly"):
        np.testing.assert_array_equal(first[key], again[key][:6])
    assert not np.array_equal(first["image"], other_seed["image"])


@needs_fashion
def test_load_builds_once_then_reads_the_cache(tmp_path):
    data = scenes.load("validation", str(tmp_path))
    path = scenes.cache_path("validation", str(tmp_path))
    assert os.path.isfile(path) and data["image"].shape[0] == scenes.SPLIT_SIZES["validation"]
    modified = os.path.getmtime(path)
    cached = scenes.load("validation", str(tmp_path))
    assert os.path.getmtime(path) == modified
    for key in ("image", "label", "anomaly"):
        np.testing.assert_array_equal(cached[key], data[key])
    assert [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")] == []


def test_default_data_dir_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert scenes.cache_path("train") == os.path.join(str(tmp_path), "lgmm_jax", "scenes", "v1-seed0", "train.npz")


def test_unknown_split_is_a_one_line_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown split 'val' for scenes") as info:
        scenes.load("val", str(tmp_path))
    assert "\n" not in str(info.value)
