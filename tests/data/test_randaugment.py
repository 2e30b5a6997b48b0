"""RandAugment ops against numpy recomputations of mmcv's definitions, and the policy against mmcls's config."""

import collections

import numpy as np
import pytest

from lgmm_jax.data import randaugment as ra

FILL = (124, 116, 104)


def _random_image(shape, seed=0, low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, shape, dtype=np.uint8)


def _gray(image):
    """ITU-R 601-2 luma as pillow's "L" conversion computes it (rounded)."""
    weights = np.array([299, 587, 114]) / 1000
    return np.floor(image.astype(np.float64) @ weights + 0.5)[..., None]


def _blend(degenerate, image, factor):
    """pillow / mmcv blend ``degenerate + factor * (image - degenerate)``, truncated and clipped to uint8."""
    out = degenerate + factor * (image.astype(np.float64) - degenerate)
    return np.clip(np.trunc(out), 0, 255)


def _assert_close_uint8(actual, expected, tolerance=1):
    """Equal up to one grey level (pillow's float32 arithmetic against float64 here)."""
    assert actual.dtype == np.uint8 and actual.shape == expected.shape
    difference = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
    assert difference.max() <= tolerance and np.mean(difference > 0) < 0.02


# ------------------------------------------------------------------------------------------------ policies


def test_policies_are_mmcls_rand_increasing():
    # mmcls configs/_base_/datasets/pipelines/rand_aug.py (= timm _RAND_INCREASING_TRANSFORMS).
    expected = [("AutoContrast", None), ("Equalize", None), ("Invert", None), ("Rotate", (0, 30)),
                ("Posterize", (4, 0)), ("Solarize", (256, 0)), ("SolarizeAdd", (0, 110)),
                ("ColorTransform", (0, 0.9)), ("Contrast", (0, 0.9)), ("Brightness", (0, 0.9)),
                ("Sharpness", (0, 0.9)), ("ShearX", (0, 0.3)), ("ShearY", (0, 0.3)),
                ("TranslateX", (0, 0.45)), ("TranslateY", (0, 0.45))]
    assert [(p.name, p.magnitude_range) for p in ra.RAND_INCREASING_POLICIES] == expected
    # mmcls: Posterize, Solarize and SolarizeAdd set random_negative_prob=0; the others with a magnitude 0.5.
    signed = {p.name for p in ra.RAND_INCREASING_POLICIES if p.signed}
    assert signed == {name for name, span in expected if span is not None} - {"Posterize", "Solarize", "SolarizeAdd"}
    assert set(ra.OPERATIONS) == {name for name, _ in expected}


def test_level_nine_of_ten_gives_mmcls_magnitudes():
    by_name = {p.name: p for p in ra.RAND_INCREASING_POLICIES}
    assert ra.magnitude_of(by_name["Rotate"], 9) == pytest.approx(27.0)
    assert ra.magnitude_of(by_name["Posterize"], 9) == pytest.approx(0.4)  # ceil -> 1 bit kept
    assert ra.magnitude_of(by_name["Solarize"], 9) == pytest.approx(25.6)
    assert ra.magnitude_of(by_name["TranslateX"], 9) == pytest.approx(0.405)
    assert ra.magnitude_of(by_name["Invert"], 9) == 0.0


def test_ops_at_their_level_zero_are_the_identity_except_posterize():
    image = _random_image((9, 11, 3), seed=1)
    for policy in ra.RAND_INCREASING_POLICIES:
        if policy.magnitude_range is None:
            continue
        out = ra.apply_policy(image, policy, ra.magnitude_of(policy, 0), FILL)
        if policy.name == "Posterize":  # the increasing range starts at 4 bits, not 8
            np.testing.assert_array_equal(out, image & 0xF0)
        else:
            np.testing.assert_array_equal(out, image, err_msg=policy.name)


def test_level_sampling_is_a_clipped_normal():
    rng = np.random.default_rng(0)
    levels = np.array([ra.sample_level(rng) for _ in range(4000)])
    assert levels.min() >= 0 and levels.max() <= 10
    assert abs(np.median(levels) - 9) < 0.05 and abs(np.mean(levels > 9.5) - 0.1587) < 0.03
    assert ra.sample_level(rng, magnitude_level=9, magnitude_std=0) == 9
    assert abs(np.mean(levels == 10) - 0.0228) < 0.01  # N(9, 0.5) above 10: clipped


# ---------------------------------------------------------------------------------------------- operations


def test_invert_solarize_solarize_add_posterize_match_their_formulas():
    image = _random_image((7, 9, 3), seed=2)
    np.testing.assert_array_equal(ra.invert(image), 255 - image)
    for threshold in (0, 25.6, 128, 200.5, 256):
        np.testing.assert_array_equal(ra.solarize(image, threshold), np.where(image < threshold, image, 255 - image))
    for addition in (0, 37.9, 110):
        expected = np.where(image < 128, np.minimum(image.astype(int) + int(addition), 255), image)
        np.testing.assert_array_equal(ra.solarize_add(image, addition), expected)
    for bits in range(9):  # mmcv: (x >> (8 - bits)) << (8 - bits); bits 0 -> black
        shift = 8 - bits
        expected = np.zeros_like(image) if bits == 0 else (image >> shift) << shift
        np.testing.assert_array_equal(ra.posterize(image, bits), expected)
    with pytest.raises(ValueError, match="0 to 8 bits"):
        ra.posterize(image, 9)


def test_auto_contrast_stretches_each_channel_to_the_full_range():
    image = _random_image((8, 10, 3), seed=3, low=40, high=180)
    image[..., 2] = 77  # a constant channel stays as it is (mmcv: low >= high)
    low, high = image.min(axis=(0, 1)), image.max(axis=(0, 1))
    scale = np.where(high > low, 255.0 / np.maximum(high - low, 1), 1.0)
    expected = np.clip(np.trunc((image - low) * scale), 0, 255)
    expected[..., 2] = 77
    np.testing.assert_array_equal(ra.auto_contrast(image), expected)


def test_equalize_matches_mmcv_imequalize():
    image = _random_image((16, 12, 3), seed=4, low=30, high=120)
    expected = np.empty_like(image)
    for channel in range(3):  # mmcv _scale_channel (the PIL algorithm)
        values = image[..., channel]
        histogram = np.bincount(values.ravel(), minlength=256)
        nonzero = histogram[histogram > 0]
        step = (nonzero.sum() - nonzero[-1]) // 255
        if step:
            lookup = np.concatenate([[0], ((np.cumsum(histogram) + step // 2) // step)[:-1]])
        else:
            lookup = np.arange(256)
        expected[..., channel] = np.minimum(lookup, 255)[values]
    np.testing.assert_array_equal(ra.equalize(image), expected)


@pytest.mark.parametrize("factor", [0.1, 0.6, 1.0, 1.9])
def test_enhancers_blend_with_their_degenerate_image(factor):
    image = _random_image((12, 10, 3), seed=5)
    gray = _gray(image)
    _assert_close_uint8(ra.adjust_brightness(image, factor), _blend(0.0, image, factor))
    _assert_close_uint8(ra.adjust_color(image, factor), _blend(gray, image, factor))
    _assert_close_uint8(ra.adjust_contrast(image, factor), _blend(np.floor(gray.mean() + 0.5), image, factor))
    # Sharpness: blend with the 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, borders kept (mmcv).
    padded = image.astype(np.float64)
    smooth = padded.copy()
    window = sum(padded[1 + dy:image.shape[0] - 1 + dy, 1 + dx:image.shape[1] - 1 + dx]
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    smooth[1:-1, 1:-1] = np.floor((window + 4 * padded[1:-1, 1:-1]) / 13 + 0.5)
    _assert_close_uint8(ra.adjust_sharpness(image, factor), _blend(smooth, image, factor))


def test_rotate_is_clockwise_about_the_centre_and_fills_the_corners():
    square = _random_image((7, 7, 3), seed=6)
    np.testing.assert_array_equal(ra.rotate(square, 90, FILL), np.rot90(square, k=-1))  # clockwise
    np.testing.assert_array_equal(ra.rotate(square, -90, FILL), np.rot90(square, k=1))
    tilted = ra.rotate(square, 30, FILL)
    np.testing.assert_array_equal(tilted[3, 3], square[3, 3])
    for corner in (tilted[0, 0], tilted[0, -1], tilted[-1, 0], tilted[-1, -1]):
        np.testing.assert_array_equal(corner, FILL)


@pytest.mark.parametrize("direction", ["horizontal", "vertical"])
def test_integer_shear_and_translate_move_pixels_exactly(direction):
    image = _random_image((6, 12, 3), seed=7)
    turn = (lambda x: x) if direction == "horizontal" else (lambda x: x.transpose(1, 0, 2))
    sheared, translated = np.empty_like(image), np.empty_like(image)
    sheared[:], translated[:] = FILL, FILL
    for y in range(6):  # shear 1: row y moves y pixels (mmcv imshear about the first row's centres)
        sheared[y, y:] = image[y, :12 - y]
    translated[:, 3:] = image[:, :-3]
    np.testing.assert_array_equal(turn(ra.shear(turn(image).copy(), 1.0, direction, FILL)), sheared)
    np.testing.assert_array_equal(turn(ra.translate(turn(image).copy(), 3, direction, FILL)), translated)


def test_translate_policy_moves_by_a_fraction_of_the_size():
    image = _random_image((10, 20, 3), seed=8)
    by_name = {p.name: p for p in ra.RAND_INCREASING_POLICIES}
    np.testing.assert_array_equal(ra.apply_policy(image, by_name["TranslateX"], 0.25, FILL),
                                  ra.translate(image, 5, "horizontal", FILL))
    np.testing.assert_array_equal(ra.apply_policy(image, by_name["TranslateY"], -0.3, FILL),
                                  ra.translate(image, -3, "vertical", FILL))


def test_every_op_keeps_grey_images_grey_shaped_and_rejects_bad_input():
    gray = _random_image((9, 9, 1), seed=9)
    for policy in ra.RAND_INCREASING_POLICIES:
        out = ra.apply_policy(gray, policy, ra.magnitude_of(policy, 7), (124,))
        assert out.shape == gray.shape and out.dtype == np.uint8, policy.name
    with pytest.raises(ValueError, match="uint8 image"):
        ra.invert(_random_image((4, 4, 4)))
    with pytest.raises(ValueError, match="fill has 3 values"):
        ra.rotate(gray, 10, FILL)
    with pytest.raises(ValueError, match="direction"):
        ra.shear(gray, 0.1, "diagonal", (0,))
    with pytest.raises(ValueError, match="unknown RandAugment operation 'Cutout'"):
        ra.apply_policy(gray, ra.Policy("Cutout"), 0.0, (0,))


# -------------------------------------------------------------------------------------------- RandAugment


def test_rand_augment_is_deterministic_for_a_generator_and_keeps_the_shape():
    image = _random_image((32, 40, 3), seed=10)
    first = ra.rand_augment(image, np.random.default_rng(5), FILL)
    np.testing.assert_array_equal(first, ra.rand_augment(image, np.random.default_rng(5), FILL))
    assert first.shape == image.shape and first.dtype == np.uint8
    outputs = [ra.rand_augment(image, np.random.default_rng(seed), FILL) for seed in range(30)]
    assert len({out.tobytes() for out in outputs}) > 15
    np.testing.assert_array_equal(ra.rand_augment(image, np.random.default_rng(0), FILL, num_policies=0), image)


def test_each_chosen_op_runs_with_probability_one_half_and_signed_ops_flip_sign_half_the_time():
    image = _random_image((9, 9, 3), seed=11)
    rotate = ra.Policy("Rotate", (0, 30), signed=True)
    outcomes = {"none": image, "+27": ra.rotate(image, 27, FILL), "-27": ra.rotate(image, -27, FILL)}
    counts = collections.Counter()
    for seed in range(600):
        out = ra.rand_augment(image, np.random.default_rng(seed), FILL, policies=(rotate,), num_policies=1,
                              magnitude_std=0)
        (name,) = [name for name, expected in outcomes.items() if np.array_equal(out, expected)]
        counts[name] += 1
    assert 250 < counts["none"] < 350 and 120 < counts["+27"] < 180 and 120 < counts["-27"] < 180


def test_two_policies_are_drawn_with_replacement():
    image = _random_image((5, 5, 3), seed=12)
    # Invert twice is the identity: the image changes iff exactly one of the two draws runs (probability 1/2).
    changed = sum(not np.array_equal(ra.rand_augment(image, np.random.default_rng(seed), FILL,
                                                     policies=(ra.Policy("Invert"),)), image)
                  for seed in range(600))
    assert 250 < changed < 350
    # Two distinct policies: both get drawn, sometimes the same one twice.
    policies = (ra.Policy("Invert"), ra.Policy("Solarize", (256, 0)))
    results = {ra.rand_augment(image, np.random.default_rng(seed), FILL, policies=policies,
                               magnitude_std=0).tobytes() for seed in range(200)}
    assert len(results) >= 3
