"""mmseg's joint image / label augmentation: geometry, the cat_max_ratio crop, colour, and the grain step."""

import grain
import numpy as np
import pytest

from lgmm_jax.data import seg_augment
from lgmm_jax.data.pipeline import Normalization

VOID = 255


def block_scene(height=60, width=80):
    """A label of four 20-px-wide-or-more blocks and an image whose red channel is 40 * label + 20."""
    label = np.zeros((height, width), np.uint8)
    label[:, width // 2:] = 1
    label[height // 2:, : width // 4] = 2
    label[: height // 3, width * 3 // 4:] = 3
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 40 * label + 20
    return image, label


# ------------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("size, scale, expected", [
    ((480, 640), (2048, 512), (512, 683)),    # factor min(2048 / 640, 512 / 480) = 1.0667
    ((1024, 2048), (2048, 1024), (1024, 2048)),
    ((100, 1000), (2048, 512), (205, 2048)),  # the long side binds: 2.048
    ((64, 64), (32, 32), (32, 32)),
])
def test_rescale_size_is_mmcvs_keep_ratio_rule(size, scale, expected):
    assert seg_augment.rescale_size(*size, scale) == expected


def test_random_resize_keeps_image_and_label_aligned_with_no_new_label_values():
    image, label = block_scene()
    for seed in range(5):
        rng = np.random.default_rng(seed)
        ratio = np.random.default_rng(seed).uniform(0.5, 2.0)
        resized_image, resized_label = seg_augment.random_resize(image, label, rng, scale=(80, 60))
        assert resized_image.shape[:2] == resized_label.shape
        assert resized_label.shape == seg_augment.rescale_size(60, 80, (80 * ratio, 60 * ratio))
        assert set(np.unique(resized_label)) == {0, 1, 2, 3}
        # Away from the block edges the bilinear image and the nearest label still agree.
        agree = resized_image[..., 0] == 40 * resized_label.astype(int) + 20
        assert agree.mean() > 0.9


def mmseg_random_crop_reference(label, crop_size, rng, cat_max_ratio):
    """mmseg's RandomCrop.transform loop, transcribed: (top, left) of the window it keeps."""
    def crop_bbox():
        margin_h, margin_w = max(label.shape[0] - crop_size[0], 0), max(label.shape[1] - crop_size[1], 0)
        return int(rng.integers(0, margin_h + 1)), int(rng.integers(0, margin_w + 1))

    top, left = crop_bbox()
    for _ in range(10):
        window = label[top:top + crop_size[0], left:left + crop_size[1]]
        classes, counts = np.unique(window, return_counts=True)
        counts = counts[classes != VOID]
        if len(counts) > 1 and np.max(counts) / np.sum(counts) < cat_max_ratio:
            break
        top, left = crop_bbox()
    return top, left


@pytest.mark.parametrize("seed", range(8))
def test_random_crop_redraws_windows_as_mmseg(seed):
    label = np.zeros((100, 100), np.uint8)
    label[80:, 80:] = 1  # most 30x30 windows see only class 0
    label[:5] = VOID
    image = np.arange(100 * 100 * 3, dtype=np.int64).reshape(100, 100, 3)
    top, left = mmseg_random_crop_reference(label, (30, 30), np.random.default_rng(seed), 0.75)
    cropped_image, cropped_label = seg_augment.random_crop(image, label, (30, 30), np.random.default_rng(seed))
    np.testing.assert_array_equal(cropped_label, label[top:top + 30, left:left + 30])
    np.testing.assert_array_equal(cropped_image, image[top:top + 30, left:left + 30])


def test_a_one_class_label_takes_the_eleventh_window_unchecked():
    label = np.zeros((50, 50), np.uint8)
    rng, reference = np.random.default_rng(0), np.random.default_rng(0)
    windows = [(int(reference.integers(0, 31)), int(reference.integers(0, 31))) for _ in range(11)]
    image = np.arange(50 * 50, dtype=np.int64).reshape(50, 50, 1)
    cropped, _ = seg_augment.random_crop(image, label, (20, 20), rng)
    top, left = windows[-1]
    np.testing.assert_array_equal(cropped, image[top:top + 20, left:left + 20])


def test_crop_of_a_smaller_image_keeps_it_whole_and_padding_fills_void():
    image, label = block_scene(20, 30)
    cropped_image, cropped_label = seg_augment.random_crop(image, label, (32, 32), np.random.default_rng(0))
    assert cropped_image.shape == (20, 30, 3) and cropped_label.shape == (20, 30)
    padded_image, padded_label = seg_augment.pad_to(cropped_image.astype(np.float32), cropped_label, (32, 32))
    assert padded_image.shape == (32, 32, 3) and padded_label.shape == (32, 32)
    assert (padded_label[20:] == VOID).all() and (padded_label[:, 30:] == VOID).all()
    assert (padded_image[20:] == 0).all() and (padded_image[:, 30:] == 0).all()
    np.testing.assert_array_equal(padded_label[:20, :30], label)


def test_flip_mirrors_image_and_label_together():
    image, label = block_scene()
    for seed in range(6):
        flipped_image, flipped_label = seg_augment.random_flip(image, label, np.random.default_rng(seed))
        flipped = np.random.default_rng(seed).random() < 0.5
        np.testing.assert_array_equal(flipped_label, label[:, ::-1] if flipped else label)
        np.testing.assert_array_equal(flipped_image[..., 0], 40 * flipped_label.astype(int) + 20)


# -------------------------------------------------------------------------------------------------- colour


def test_scale_and_shift_is_mmsegs_clipped_truncating_convert():
    image = np.array([[[0, 100, 250]]], np.uint8)
    np.testing.assert_array_equal(seg_augment.scale_and_shift(image, beta=10.7), [[[10, 110, 255]]])
    np.testing.assert_array_equal(seg_augment.scale_and_shift(image, alpha=1.5), [[[0, 150, 255]]])


def test_hue_turns_by_opencv_steps_and_saturation_scales():
    red = np.array([[[255, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(seg_augment.saturate_and_rotate_hue(red, 1.0, 60), [[[0, 255, 0]]])  # 120 deg
    np.testing.assert_array_equal(seg_augment.saturate_and_rotate_hue(red, 1.0, -60), [[[0, 0, 255]]])
    np.testing.assert_array_equal(seg_augment.saturate_and_rotate_hue(red, 0.5, 0), [[[255, 128, 128]]])
    photo = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(seg_augment.saturate_and_rotate_hue(photo, 1.0, 0), photo)  # round trip
    gray = seg_augment.saturate_and_rotate_hue(photo, 0.0, 0)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_photometric_distortion_changes_colour_not_shape_and_sometimes_nothing():
    photo = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    outputs = [seg_augment.photometric_distortion(photo, np.random.default_rng(seed)) for seed in range(40)]
    assert all(o.shape == photo.shape and o.dtype == np.uint8 for o in outputs)
    unchanged = sum(np.array_equal(o, photo) for o in outputs)
    assert 0 < unchanged < 10  # each of four steps is skipped half the time: 1/16 of images untouched


# ------------------------------------------------------------------------------------------------- grain


class BlockSource:
    def __init__(self, count=6):
        self.items = [block_scene(40 + 4 * i, 60) for i in range(count)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        image, label = self.items[index]
        return {"image": image, "label": label}


def _stream(seed, transform):
    return grain.MapDataset.source(list(range(6))).random_map(transform, seed=seed)


def test_grain_step_is_deterministic_per_seed_and_gives_crop_sized_normalised_examples():
    transform = seg_augment.SegmentationTrainExample(
        BlockSource(), scale=(60, 40), crop_size=(32, 32), normalization=Normalization((0.5,), (0.25,)))
    first, again, other = _stream(0, transform), _stream(0, transform), _stream(1, transform)
    for i in range(6):
        example = first[i]
        assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.float32
        assert example["label"].shape == (32, 32) and example["label"].dtype == np.int32
        assert set(np.unique(example["label"])) <= {0, 1, 2, 3, VOID}
        np.testing.assert_array_equal(example["image"], again[i]["image"])
        np.testing.assert_array_equal(example["label"], again[i]["label"])
        padded = example["label"] == VOID
        assert (example["image"][padded] == 0).all()  # padding is 0 after normalisation, as mmseg
    assert any(not np.array_equal(first[i]["image"], other[i]["image"]) for i in range(6))


def test_mismatched_image_and_label_are_refused():
    with pytest.raises(ValueError, match="same height and width"):
        seg_augment.augment_segmentation(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8),
                                         np.random.default_rng(0), scale=(4, 4), crop_size=(4, 4))
