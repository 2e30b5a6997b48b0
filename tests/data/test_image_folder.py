"""Image folders as out-of-distribution sets (ODIN's LSUN / iSUN / TinyImageNet files): `folder=PATH`."""

import os

import numpy as np
import pytest
from PIL import Image

import configs.default
from lgmm_jax import tasks
from lgmm_jax.training import experiment
from lgmm_jax.data import catalog, pipeline, protocols, sources
from lgmm_jax.tasks.classification import evaluation
from lgmm_jax.data.protocols import DataRef


def write_pngs(folder, images, names=None):
    """uint8 [N, H, W, C] images as PNG files (grayscale for C == 1), named 000.png, 001.png, ..."""
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        name = names[i] if names else f"{i:03d}.png"
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(os.path.join(folder, name))


def random_images(n, shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def test_every_image_file_under_the_folder_in_sorted_order_with_its_exact_pixels(tmp_path):
    images = random_images(5, (32, 32, 3))
    write_pngs(tmp_path / "a", images[:3])
    write_pngs(tmp_path / "a" / "nested", images[3:], names=["x.PNG", "y.png"])
    (tmp_path / "a" / "README.txt").write_text("not an image")
    source = catalog.get_source(f"folder={tmp_path / 'a'}", "test")
    assert len(source) == 5
    assert source.image_shape == (32, 32, 3) and source.num_classes == 1
    expected_order = ["000.png", "001.png", "002.png", "nested/x.PNG", "nested/y.png"]
    assert [os.path.relpath(p, tmp_path / "a") for p in source.paths] == expected_order
    for i in range(5):
        example = source[i]
        assert example["image"].dtype == np.uint8 and example["label"] == 0
        np.testing.assert_array_equal(example["image"], images[i])  # PNG is lossless
    np.testing.assert_array_equal(source.labels, np.zeros(5, np.int64))


def test_grayscale_files_decode_to_one_channel_and_jpeg_to_rgb(tmp_path):
    gray = random_images(2, (8, 8, 1))
    write_pngs(tmp_path / "gray", gray)
    source = catalog.get_source(f"folder={tmp_path / 'gray'}", "test")
    assert source.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(np.stack([source[i]["image"] for i in range(2)]), gray)

    os.makedirs(tmp_path / "jpeg")
    Image.fromarray(random_images(1, (32, 32, 3))[0]).save(tmp_path / "jpeg" / "0.jpg", quality=95)
    jpeg = catalog.get_source(f"folder={tmp_path / 'jpeg'}", "test")
    assert jpeg[0]["image"].shape == (32, 32, 3) and jpeg[0]["image"].dtype == np.uint8


def test_missing_empty_or_imageless_folders_are_not_available(tmp_path):
    os.makedirs(tmp_path / "empty")
    os.makedirs(tmp_path / "text")
    (tmp_path / "text" / "notes.txt").write_text("no images here")
    for folder, words in [("missing", "not found"), ("empty", "no image files"), ("text", "no image files")]:
        with pytest.raises(sources.DatasetNotAvailableError, match=words) as error:
            catalog.get_source(f"folder={tmp_path / folder}", "test")
        assert "\n" not in str(error.value)


def test_a_file_of_another_size_and_a_split_other_than_test_are_errors(tmp_path):
    write_pngs(tmp_path / "mixed", random_images(1, (32, 32, 3)))
    write_pngs(tmp_path / "mixed", random_images(1, (16, 16, 3)), names=["001.png"])
    source = catalog.get_source(f"folder={tmp_path / 'mixed'}", "test")
    with pytest.raises(ValueError, match="001.png is 16x16.*resize"):
        source[1]
    with pytest.raises(ValueError, match="unknown split 'train'"):
        catalog.get_source(f"folder={tmp_path / 'mixed'}", "train")


def test_ood_datasets_entry_keeps_colons_in_the_path_and_names_the_set_by_the_folder(tmp_path):
    folder = tmp_path / "LSUN:resize"
    write_pngs(folder, random_images(3, (8, 8, 1)))
    assert experiment.parse_data_ref(f"folder={folder}") == DataRef(f"folder={folder}", "test")
    assert experiment.parse_data_ref("cifar100:test") == DataRef("cifar100", "test")  # unchanged
    with pytest.raises(ValueError, match="no path"):
        experiment.parse_data_ref("folder=")

    config = configs.default.get_config()
    config.ood_datasets = (f"folder={folder}", f"folder={folder}/")
    protocol = experiment.resolve_protocol(config)
    refs = protocol.unknown[-2:]
    classification = tasks.get("classification")
    names = [protocols.unknown_set_name(ref, protocol, classification.own_split_name) for ref in refs]
    assert names == ["LSUN_resize", "LSUN_resize"]  # a file-name-safe key
    assert protocols.unique_name(names[1], {names[0]: None}) == "LSUN_resize_2"
    source = experiment.data_source(refs[0], config=config)
    assert len(source) == 3


def test_folder_images_go_through_the_eval_pipeline_as_unknown_with_the_training_normalisation(tmp_path):
    images = random_images(3, (8, 8, 1))
    write_pngs(tmp_path / "ood", images)
    source = catalog.get_source(f"folder={tmp_path / 'ood'}", "test")
    batch = next(iter(pipeline.eval_batches(source, batch_size=4, preprocess="shift", known_classes=(),
                                            normalization="digits")))
    np.testing.assert_array_equal(batch["mask"], [True, True, True, False])
    np.testing.assert_array_equal(batch["label"], [-1, -1, -1, -1])
    mean, std = pipeline.NORMALIZATION["digits"].mean[0], pipeline.NORMALIZATION["digits"].std[0]
    np.testing.assert_allclose(batch["image"][:3], (images / 255.0 - mean) / std, rtol=1e-5, atol=1e-6)


def test_an_unknown_set_of_another_image_shape_is_refused_before_evaluation(tmp_path):
    write_pngs(tmp_path / "rgb", random_images(1, (8, 8, 3)))
    known = catalog.get_source("digits", "train")
    unknown = catalog.get_source(f"folder={tmp_path / 'rgb'}", "test")
    with pytest.raises(ValueError, match="8x8x3 images .* trained on 8x8x1"):
        evaluation.check_unknown_image_shape("rgb", unknown, known, "shift")
    evaluation.check_unknown_image_shape("rgb", catalog.get_source(f"folder={tmp_path / 'rgb'}", "test"),
                                       sources.ArraySource("x", random_images(1, (64, 64, 3)), [0], ["a"]),
                                       "imagenet")  # resized anyway: only the channels must match
