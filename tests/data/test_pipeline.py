"""grain pipelines: determinism, exact resume, process sharding, eval coverage and masks, presets."""

import itertools
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from PIL import Image

from lgmm_jax.data import augment, catalog
from lgmm_jax.data import pipeline
from lgmm_jax.data import randaugment
from lgmm_jax.data import sources

# Images whose pixels spell the example index: channel 0 = index % 256, channel 1 = index // 256.
IDENTITY = pipeline.Normalization((0.0,), (1 / 255,))  # float image == uint8 pixel values


def index_source(num_examples: int, num_classes: int = 10, size: int = 4) -> sources.ArraySource:
    index = np.arange(num_examples)
    images = np.zeros((num_examples, size, size, 3), np.uint8)
    images[..., 0] = (index % 256)[:, None, None]
    images[..., 1] = (index // 256)[:, None, None]
    labels = (index * 7) % num_classes  # not aligned with the index order
    return sources.ArraySource("synthetic", images, labels, [str(c) for c in range(num_classes)])


def decode_indices(images: np.ndarray) -> np.ndarray:
    pixels = np.rint(images[:, 0, 0, :2]).astype(np.int64)
    return pixels[:, 0] + 256 * pixels[:, 1]


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def digits_iterator(seed=0, **kwargs):
    source = catalog.get_source("digits", "train")
    options = dict(batch_size=32, seed=seed, preprocess="shift", known_classes=(2, 4, 5, 9, 8, 3))
    options.update(kwargs)
    return pipeline.train_iterator(source, **options)


# ------------------------------------------------------------------------------------------------ training


def test_train_batches_have_the_promised_types():
    (batch,) = take(digits_iterator(), 1)
    assert set(batch) == {"image", "label", "replaced"}
    assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["replaced"].tolist() == [""] * 32  # no unreadable file stood in for
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    assert set(np.unique(batch["label"])) <= set(range(6))


def test_same_seed_same_batches_other_seed_other_batches():
    assert_batches_equal(take(digits_iterator(seed=3), 4), take(digits_iterator(seed=3), 4))
    first, other = take(digits_iterator(seed=3), 1)[0], take(digits_iterator(seed=4), 1)[0]
    assert not np.array_equal(first["image"], other["image"])


def test_resume_from_state_gives_the_same_following_batches():
    # 609 known-class digits / 32 = 19 steps per epoch: the resumed stretch crosses an epoch boundary.
    uninterrupted = take(digits_iterator(), 24)
    interrupted = digits_iterator()
    take(interrupted, 17)
    state = interrupted.get_state()
    resumed = digits_iterator()
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 7), uninterrupted[17:])


def test_each_epoch_is_a_new_permutation_of_every_example():
    source = index_source(96)
    batches = take(pipeline.train_iterator(source, batch_size=32, seed=1, preprocess="none",
                                           num_epochs=2, normalization=IDENTITY), 10)
    assert len(batches) == 6  # the stream ends after two epochs
    seen = decode_indices(np.concatenate([b["image"] for b in batches]))
    first, second = seen[:96], seen[96:]
    np.testing.assert_array_equal(np.sort(first), np.arange(96))
    np.testing.assert_array_equal(np.sort(second), np.arange(96))
    assert not np.array_equal(first, second) and not np.array_equal(first, np.arange(96))


def test_finite_epochs_end_after_the_last_full_global_batch_on_every_process():
    source = index_source(100)
    counts = [len(take(pipeline.train_iterator(source, batch_size=24, seed=0, preprocess="none", num_epochs=1,
                                               process_index=p, process_count=4), 100)) for p in range(4)]
    assert counts == [pipeline.steps_per_epoch(100, 24)] * 4 == [4] * 4


@pytest.mark.parametrize("preprocess", ["none", "cifar"])
def test_process_slices_laid_end_to_end_are_the_global_batch(preprocess):
    source = index_source(192, size=8)  # 6 global batches per epoch: no batch straddles two epochs
    kwargs = dict(batch_size=32, seed=5, preprocess=preprocess, normalization=IDENTITY)
    global_batches = take(pipeline.train_iterator(source, **kwargs), 8)
    local = [take(pipeline.train_iterator(source, process_index=p, process_count=4, **kwargs), 8) for p in range(4)]
    for step, global_batch in enumerate(global_batches):
        for p in range(4):
            for key in ("image", "label"):
                # Augmentation included: it depends on the position in the global stream only.
                np.testing.assert_array_equal(local[p][step][key], global_batch[key][8 * p:8 * (p + 1)])
        ids = [decode_indices(local[p][step]["image"]) for p in range(4)] if preprocess == "none" else None
        if ids is not None:
            assert len(set(np.concatenate(ids))) == 32  # disjoint


def test_known_class_filtering_and_remapping():
    source = index_source(300)
    known = (7, 2, 5)
    batches = take(pipeline.train_iterator(source, batch_size=16, seed=0, preprocess="none", known_classes=known,
                                           normalization=IDENTITY), 12)
    reference = {c: i for i, c in enumerate(known)}
    for batch in batches:
        originals = source.labels[decode_indices(batch["image"])]
        assert set(originals) <= set(known)
        np.testing.assert_array_equal(batch["label"], [reference[int(c)] for c in originals])
    assert pipeline.count_examples(source, known) == sum(int(c) in reference for c in source.labels)


def test_bad_training_requests_are_value_errors():
    source = index_source(40)
    with pytest.raises(ValueError, match="multiple of process_count"):
        pipeline.train_iterator(source, batch_size=10, seed=0, preprocess="none", process_count=4)
    with pytest.raises(ValueError, match="unknown preprocess preset 'flip'"):
        pipeline.train_iterator(source, batch_size=8, seed=0, preprocess="flip")
    with pytest.raises(ValueError, match="only 40 training examples"):
        pipeline.train_iterator(source, batch_size=64, seed=0, preprocess="none")
    with pytest.raises(ValueError, match="known_classes is empty"):
        pipeline.train_iterator(source, batch_size=8, seed=0, preprocess="none", known_classes=())


# -------------------------------------------------------------------------------------------------- eval


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_covers_every_example_once_with_masks_and_equal_batch_counts(process_count):
    source = index_source(103)
    known = (3, 8)
    per_process = [list(pipeline.eval_batches(source, batch_size=16, preprocess="none", known_classes=known,
                                              process_index=p, process_count=process_count,
                                              normalization=IDENTITY))
                   for p in range(process_count)]
    assert [len(b) for b in per_process] == [pipeline.num_eval_batches(103, 16)] * process_count == [7] * process_count
    seen = []
    for batches in per_process:
        for batch in batches:
            assert batch["image"].shape == (16 // process_count, 4, 4, 3) and batch["mask"].dtype == bool
            real = batch["mask"]
            ids = decode_indices(batch["image"][real])
            seen.extend(ids)
            np.testing.assert_array_equal(batch["original_label"][real], source.labels[ids])
            expected = [known.index(c) if c in known else -1 for c in source.labels[ids]]
            np.testing.assert_array_equal(batch["label"][real], expected)
            assert (batch["label"][~real] == -1).all() and (batch["original_label"][~real] == -1).all()
            assert not batch["image"][~real].any()
    assert sorted(seen) == list(range(103))


def test_eval_order_is_deterministic_and_follows_the_source():
    source = index_source(40)
    batches = list(pipeline.eval_batches(source, batch_size=16, preprocess="none", normalization=IDENTITY))
    ids = decode_indices(np.concatenate([b["image"] for b in batches]))[:40]
    np.testing.assert_array_equal(ids, np.arange(40))
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:40], source.labels)  # no remap


def test_eval_restricted_to_classes_and_all_unknown():
    source = index_source(120)
    batches = list(pipeline.eval_batches(source, batch_size=32, preprocess="none", classes=(1, 4),
                                         known_classes=(), normalization=IDENTITY))
    mask = np.concatenate([b["mask"] for b in batches])
    originals = np.concatenate([b["original_label"] for b in batches])[mask]
    np.testing.assert_array_equal(np.sort(originals), np.sort(source.labels[np.isin(source.labels, (1, 4))]))
    assert (np.concatenate([b["label"] for b in batches]) == -1).all()


def test_ood_data_is_normalised_with_the_training_datasets_statistics():
    source = catalog.get_source("mnist_5k", "test")
    (batch,) = take(iter(pipeline.eval_batches(source, batch_size=8, preprocess="none",
                                               normalization="fashion_mnist")), 1)
    mean, std = pipeline.NORMALIZATION["fashion_mnist"].mean[0], pipeline.NORMALIZATION["fashion_mnist"].std[0]
    expected = (np.stack([source[i]["image"] for i in range(8)]) / 255.0 - mean) / std
    np.testing.assert_allclose(batch["image"], expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize("name", ["digits", "fashion_mnist"])
def test_bundled_normalisation_values_are_the_training_split_statistics(name):
    try:
        source = catalog.get_source(name, "train")
    except sources.DatasetNotAvailableError as error:
        pytest.skip(str(error))
    pixels = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.float64) / 255
    stats = pipeline.NORMALIZATION[name]
    assert abs(pixels.mean() - stats.mean[0]) < 5e-4 and abs(pixels.std() - stats.std[0]) < 5e-4


def test_normalisation_lookup():
    source = index_source(4)
    assert pipeline.get_normalization(None, source) == pipeline.DEFAULT_NORMALIZATION
    assert pipeline.get_normalization("cifar10:3.0.2", source) == pipeline.NORMALIZATION["cifar10"]
    assert pipeline.get_normalization(IDENTITY, source) is IDENTITY


# ------------------------------------------------------------------------------------------------ presets


def test_cifar_preset_shapes_and_changes_images():
    source = index_source(64, size=32)
    source._images[:] = np.random.default_rng(0).integers(1, 256, source._images.shape, dtype=np.uint8)
    kwargs = dict(batch_size=64, seed=0, num_epochs=1, normalization=IDENTITY)
    (plain,) = take(pipeline.train_iterator(source, preprocess="none", **kwargs), 1)
    (augmented,) = take(pipeline.train_iterator(source, preprocess="cifar", **kwargs), 1)
    assert augmented["image"].shape == (64, 32, 32, 3) and augmented["image"].dtype == np.float32
    np.testing.assert_array_equal(plain["label"], augmented["label"])  # same shuffle, images transformed
    changed = [not np.array_equal(a, p) for a, p in zip(augmented["image"], plain["image"])]
    assert sum(changed) > 48  # identity needs offset (4, 4) and no flip: probability 1/162
    eval_batch = next(iter(pipeline.eval_batches(source, batch_size=64, preprocess="cifar", normalization=IDENTITY)))
    np.testing.assert_allclose(eval_batch["image"], source._images, atol=1e-3)  # eval: untouched


@pytest.mark.parametrize("preset", ["imagenet", "imagenet_swin"])
def test_imagenet_preset_from_an_odd_sized_image(preset):
    rng = np.random.default_rng(0)
    source = sources.ArraySource("imagenet2012", rng.integers(0, 256, (4, 300, 451, 3), dtype=np.uint8),
                                 np.arange(4), ["a", "b", "c", "d"])
    (train_batch,) = take(pipeline.train_iterator(source, batch_size=4, seed=0, preprocess=preset), 1)
    eval_batch = next(iter(pipeline.eval_batches(source, batch_size=4, preprocess=preset)))
    for batch in (train_batch, eval_batch):
        assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.float32
    assert abs(float(eval_batch["image"].mean()) - float(
        np.mean((np.array([0.5] * 3) - pipeline.NORMALIZATION["imagenet2012"].mean)
                / pipeline.NORMALIZATION["imagenet2012"].std))) < 0.1


def test_imagenet_swin_training_is_mmcls_swin_pipeline_in_order():
    image = np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    imagenet = pipeline.NORMALIZATION["imagenet2012"]
    for seed in range(6):
        rng = np.random.default_rng(seed)
        # mmcls imagenet_bs64_swin_224.py: RandomResizedCrop(224, bicubic) -> RandomFlip(0.5) ->
        # RandAugment(pad_val = the mean pixel) -> RandomErasing(0.25, 'rand', N(mean, std) in pixels).
        expected = augment.random_resized_crop(image, 224, rng, resample=augment.BICUBIC)
        expected = augment.random_horizontal_flip(expected, rng)
        expected = randaugment.rand_augment(expected, rng, fill=(124, 116, 104))
        expected = augment.random_erasing(expected, rng, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375),
                                          probability=0.25)
        out = pipeline.augment_train(image, "imagenet_swin", np.random.default_rng(seed), imagenet)
        np.testing.assert_array_equal(out, expected)


def test_imagenet_swin_evaluation_is_a_bicubic_resize_and_a_center_crop():
    image = np.random.default_rng(2).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(image).resize((int(256 * 451 / 300), 256), resample=Image.BICUBIC))
    left = int(round((resized.shape[1] - 224) / 2))
    np.testing.assert_array_equal(pipeline.preprocess_eval(image, "imagenet_swin"),
                                  resized[16:240, left:left + 224])
    assert not np.array_equal(pipeline.preprocess_eval(image, "imagenet_swin"),
                              pipeline.preprocess_eval(image, "imagenet"))  # the ResNet preset stays bilinear


def test_imagenet_swin_fills_and_erases_with_the_normalisation_of_the_model(monkeypatch):
    grey = sources.ArraySource("grey", np.full((8, 40, 40, 1), 50, np.uint8), np.arange(8) % 2, ["a", "b"])
    statistics = pipeline.Normalization((0.5,), (0.2,))
    batch = next(pipeline.train_iterator(grey, batch_size=8, seed=0, preprocess="imagenet_swin",
                                         normalization=statistics))
    assert batch["image"].shape == (8, 224, 224, 1)
    seen = {}

    def rand_augment(image, rng, fill):
        seen["fill"] = fill
        return image

    def random_erasing(image, rng, fill_mean, fill_std, probability):
        seen["erasing"] = (fill_mean, fill_std, probability)
        return image

    monkeypatch.setattr(randaugment, "rand_augment", rand_augment)
    monkeypatch.setattr(augment, "random_erasing", random_erasing)
    pipeline.augment_train(grey[0]["image"], "imagenet_swin", np.random.default_rng(0), statistics)
    assert seen == {"fill": (128,), "erasing": ((127.5,), (51.0,), 0.25)}


def test_presets_that_resize_to_the_network_input():
    assert [p for p in pipeline.PREPROCESS_PRESETS if pipeline.resizes_to_network_input(p)] == [
        "imagenet", "imagenet_swin"]
    with pytest.raises(ValueError, match="unknown preprocess preset 'imagenet_vit'"):
        pipeline.resizes_to_network_input("imagenet_vit")


def test_shift_preset_moves_digits_by_at_most_one_pixel():
    source = catalog.get_source("digits", "test")
    (batch,) = take(pipeline.train_iterator(source, batch_size=64, seed=0, preprocess="shift", num_epochs=1,
                                            normalization=pipeline.Normalization((0.0,), (1 / 255,))), 1)
    # Every augmented image is a window of its zero-padded original; the shuffle hides which one, so
    # check that some original matches each image under a shift of at most one pixel.
    originals = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.float32)
    padded = np.pad(originals, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.stack([padded[:, t:t + 8, l:l + 8] for t in range(3) for l in range(3)], axis=1)
    for image in batch["image"][:16]:
        assert (np.abs(windows - image).reshape(len(source), 9, -1).max(-1) < 1e-3).any()


# --------------------------------------------------------------------------------------------------- TFDS


def _fake_cifar(builder, split, decoders=None, **kwargs):
    num_classes = builder.info.features["label"].num_classes
    rng = np.random.default_rng(num_classes)
    return [{"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "label": (i * 3) % num_classes,
             "id": str(i)} for i in range(120)]


@pytest.fixture
def mocked_tfds():
    with mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True), \
            tfds.testing.mock_data(as_data_source_fn=_fake_cifar):
        yield


def test_tfds_cifar10_known_classes_through_the_pipeline(mocked_tfds):
    source = catalog.get_source("cifar10", "train[:95%]")
    known = (0, 6, 4, 9, 1, 7)
    batches = take(pipeline.train_iterator(source, batch_size=16, seed=0, preprocess="cifar", known_classes=known), 3)
    for batch in batches:
        assert batch["image"].shape == (16, 32, 32, 3) and set(batch["label"]) <= set(range(6))
    evaluated = list(pipeline.eval_batches(source, batch_size=50, preprocess="cifar", known_classes=known))
    labels = np.concatenate([b["label"] for b in evaluated])[np.concatenate([b["mask"] for b in evaluated])]
    np.testing.assert_array_equal(labels, [known.index(c) if c in known else -1 for c in source.labels])


def test_tfds_cifar100_unknown_classes_through_eval(mocked_tfds):
    source = catalog.get_source("cifar100", "test")
    classes = (30, 25, 1, 9, 8, 0, 46, 52, 49, 71)
    batches = list(pipeline.eval_batches(source, batch_size=8, preprocess="cifar", classes=classes,
                                         known_classes=(), normalization="cifar10"))
    mask = np.concatenate([b["mask"] for b in batches])
    originals = np.concatenate([b["original_label"] for b in batches])[mask]
    np.testing.assert_array_equal(originals, [c for c in source.labels if c in classes])
    assert (np.concatenate([b["label"] for b in batches]) == -1).all()
