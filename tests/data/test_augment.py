"""Image operations against brute-force numpy references and the torchvision formulas."""

import numpy as np
import pytest
from PIL import Image

from lgmm_jax.data import augment


def _random_image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_horizontal_flip_twice_is_identity_and_mirrors_columns():
    image = _random_image((5, 7, 3))
    np.testing.assert_array_equal(augment.horizontal_flip(augment.horizontal_flip(image)), image)
    np.testing.assert_array_equal(augment.horizontal_flip(image)[:, 0], image[:, -1])


def test_random_crop_with_padding_is_a_window_of_the_zero_padded_image():
    image = _random_image((8, 8, 3), seed=1) | 1  # no zero pixel in the original: padding is recognisable
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    offsets = set()
    for seed in range(40):
        out = augment.random_crop_with_padding(image, 4, np.random.default_rng(seed))
        assert out.shape == image.shape
        windows = [(t, l) for t in range(9) for l in range(9) if np.array_equal(padded[t:t + 8, l:l + 8], out)]
        assert len(windows) == 1
        offsets.add(windows[0])
        # The non-zero pixels are exactly the original pixels that stayed inside the window.
        top, left = windows[0]
        visible = image[max(0, top - 4):top + 4, max(0, left - 4):left + 4]
        assert np.count_nonzero(out.all(axis=-1)) == visible.shape[0] * visible.shape[1]
    assert len(offsets) > 10  # offsets vary with the generator


def test_random_horizontal_flip_happens_about_half_the_time():
    image = _random_image((4, 4, 1))
    flips = sum(not np.array_equal(augment.random_horizontal_flip(image, np.random.default_rng(s)), image)
                for s in range(400))
    assert 160 < flips < 240


def test_resize_shorter_side_and_center_crop_follow_torchvision():
    image = _random_image((300, 451, 3))
    resized = augment.resize_shorter_side(image, 256)
    assert resized.shape == (256, int(256 * 451 / 300), 3) and resized.dtype == np.uint8
    tall = augment.resize_shorter_side(_random_image((451, 300, 1)), 256)
    assert tall.shape == (int(256 * 451 / 300), 256, 1)
    cropped = augment.center_crop(resized, 224)
    top, left = int(round((256 - 224) / 2)), int(round((resized.shape[1] - 224) / 2))
    np.testing.assert_array_equal(cropped, resized[top:top + 224, left:left + 224])
    with pytest.raises(ValueError, match="resize first"):
        augment.center_crop(_random_image((10, 300, 3)), 224)


def test_resize_of_a_constant_image_stays_constant():
    image = np.full((13, 17, 3), 77, np.uint8)
    np.testing.assert_array_equal(augment.resize(image, 40, 9), np.full((40, 9, 3), 77, np.uint8))


def test_random_resized_crop_windows_respect_scale_and_ratio():
    height, width = 300, 451
    for seed in range(200):
        top, left, h, w = augment.random_resized_crop_window(height, width, np.random.default_rng(seed))
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        # Rounding of h and w moves area and aspect slightly outside the sampled ranges.
        assert 0.08 * 0.95 <= h * w / (height * width) <= 1.0
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_random_resized_crop_fallback_is_a_central_crop_with_clamped_ratio():
    # A 1 x 100 strip admits no window with aspect in [3/4, 4/3] of 8%+ area: the fallback is taken.
    top, left, h, w = augment.random_resized_crop_window(1, 100, np.random.default_rng(0))
    assert (h, w) == (1, int(round(1 * 4 / 3))) and left == (100 - w) // 2


def test_random_resized_crop_output():
    out = augment.random_resized_crop(_random_image((300, 451, 3)), 224, np.random.default_rng(3))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8


def test_normalize_matches_the_formula():
    image = _random_image((4, 4, 3))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    expected = (image.astype(np.float64) / 255 - np.array(mean)) / np.array(std)
    out = augment.normalize(image, mean, std)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="one value per channel"):
        augment.normalize(_random_image((4, 4, 1)), mean, std)


# ------------------------------------------------------------------------------------ resampling, erasing


@pytest.mark.parametrize("resample", [augment.BILINEAR, augment.BICUBIC])
def test_resampling_filter_is_pillows(resample):
    image = _random_image((30, 45, 3), seed=4)
    expected = np.asarray(Image.fromarray(image).resize((20, 13), resample=resample))
    np.testing.assert_array_equal(augment.resize(image, 13, 20, resample), expected)
    np.testing.assert_array_equal(augment.resize_shorter_side(image, 20, resample),
                                  np.asarray(Image.fromarray(image).resize((30, 20), resample=resample)))
    top, left, h, w = augment.random_resized_crop_window(30, 45, np.random.default_rng(7))
    cropped = np.asarray(Image.fromarray(image[top:top + h, left:left + w]).resize((16, 16), resample=resample))
    np.testing.assert_array_equal(augment.random_resized_crop(image, 16, np.random.default_rng(7), resample=resample),
                                  cropped)


def test_bicubic_differs_from_the_bilinear_default():
    image = _random_image((30, 45, 3), seed=5)
    np.testing.assert_array_equal(augment.resize(image, 13, 20), augment.resize(image, 13, 20, augment.BILINEAR))
    assert not np.array_equal(augment.resize(image, 13, 20), augment.resize(image, 13, 20, augment.BICUBIC))


def test_random_erasing_windows_follow_mmcls_ranges():
    for seed in range(300):
        top, left, h, w = augment.random_erasing_window(224, 224, np.random.default_rng(seed))
        assert 0 <= top and top + h <= 224 and 0 <= left and left + w <= 224
        # Rounding of h and w moves the area and aspect slightly outside the sampled ranges.
        assert 0.02 * 0.9 <= h * w / 224 ** 2 <= 1 / 3 * 1.1
        assert 0.3 * 0.9 <= h / w <= 10 / 3 * 1.1
        assert top < 224 - h or h == 224  # mmcls's randint(0, H - h) never takes the last offset
    # A rectangle as tall as the image sits at the top.
    assert augment.random_erasing_window(4, 100, np.random.default_rng(0), 0.9, 0.9, (10.0, 10.0))[0] == 0


def test_random_erasing_fills_one_rectangle_with_clipped_normal_noise():
    image = np.full((64, 64, 3), 0, np.uint8)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    erased = augment.random_erasing(image, np.random.default_rng(1), mean, std, probability=1.0)
    assert not image.any()  # the input is left as it is
    # The erased pixels form the rectangle drawn right after the probability draw, from the same generator.
    rng = np.random.default_rng(1)
    rng.random()
    top, left, h, w = augment.random_erasing_window(64, 64, rng)
    noise = np.clip(rng.normal(mean, std, (h, w, 3)).astype(np.int32), 0, 255)
    expected = np.zeros_like(image)
    expected[top:top + h, left:left + w] = noise
    np.testing.assert_array_equal(erased, expected)
    assert 0.02 * 64 * 64 * 0.9 <= np.count_nonzero(erased.any(axis=-1)) <= h * w


def test_random_erasing_happens_with_its_probability_and_checks_channels():
    image = _random_image((16, 16, 1), seed=6)
    erased = sum(not np.array_equal(augment.random_erasing(image, np.random.default_rng(s), (128,), (50,)), image)
                 for s in range(800))
    assert 160 < erased < 240  # probability 0.25 (an erasure could leave the image unchanged: negligible)
    with pytest.raises(ValueError, match="the erasing mean has 3 values for an image with 1 channels"):
        augment.random_erasing(image, np.random.default_rng(0), (1, 2, 3), (1, 2, 3))
