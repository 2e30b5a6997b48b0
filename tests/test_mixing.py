"""Mixup, CutMix and label smoothing against numpy recomputations, optax and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgmm_jax.method import mixing

BATCH, HEIGHT, WIDTH = 8, 12, 10
MASK = np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)  # two padded rows in the middle and near the end
PADDING_VALUE = 1e6  # a padded image that leaked into a real row would show
ALL_REAL = np.ones(BATCH, bool)

# Compiled once for the whole file (every call has the same shapes): jax.random.beta is slow to compile.
MIX_BATCH = jax.jit(mixing.mix_batch, static_argnames=("num_classes", "mixup_alpha", "cutmix_alpha"))
MIXUP = jax.jit(mixing.mixup, static_argnames="alpha")
CUTMIX = jax.jit(mixing.cutmix, static_argnames="alpha")
PARTNERS = jax.jit(jax.vmap(mixing.partner_permutation, in_axes=(0, None)))


def _batch(seed=0):
    """Random real images, huge padded ones; label i for row i so that the targets name the partners."""
    images = np.random.default_rng(seed).uniform(0, 1, (BATCH, HEIGHT, WIDTH, 3)).astype(np.float32)
    images[~MASK] = PADDING_VALUE
    return jnp.asarray(images), jnp.arange(BATCH)


def _constant_batch():
    """Row i is the constant i + 1: a CutMix output reveals each pixel's source row."""
    images = np.broadcast_to(np.arange(1, BATCH + 1, dtype=np.float32)[:, None, None, None],
                             (BATCH, HEIGHT, WIDTH, 3)).copy()
    return jnp.asarray(images), jnp.arange(BATCH)


def _one_hot(labels):
    return mixing.smooth_labels(labels, BATCH, 0.0, jnp.asarray(MASK))


def _partners_from_targets(targets):
    """Row i's partner: the class other than i with weight (or i itself when the target is one-hot)."""
    off_diagonal = np.where(np.eye(BATCH, dtype=bool), 0.0, targets)
    return np.where(off_diagonal.max(axis=1) > 1e-6, off_diagonal.argmax(axis=1), np.arange(BATCH))


def test_smoothing_is_optax_smooth_labels_with_padded_rows_zero():
    labels = jnp.array([3, 0, -1, 4, 4, 1, -1, 2])
    targets = mixing.smooth_labels(labels, 5, 0.1, jnp.asarray(MASK))
    expected = optax.smooth_labels(jax.nn.one_hot(labels, 5), 0.1)
    np.testing.assert_allclose(targets[MASK], expected[MASK], rtol=1e-6)
    assert not np.asarray(targets[~MASK]).any() and targets.dtype == jnp.float32
    np.testing.assert_allclose(targets[MASK].sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixing.smooth_labels(labels[:2], 5, 0.0), jax.nn.one_hot(labels[:2], 5))


def test_partners_permute_the_real_rows_uniformly_and_fix_the_padded_rows():
    partners = np.asarray(PARTNERS(jax.random.split(jax.random.key(0), 400), jnp.asarray(MASK)))
    real = np.flatnonzero(MASK)
    for row in partners:
        assert sorted(row[real]) == list(real) and (row[~MASK] == np.flatnonzero(~MASK)).all()
    # Every real row meets every real row (itself included, as with mmcls's torch.randperm) about equally.
    counts = np.array([[np.sum(partners[:, i] == j) for j in real] for i in real])
    assert counts.min() > 400 / len(real) * 0.5 and counts.max() < 400 / len(real) * 1.6


def test_mixup_blends_images_and_one_hot_targets_with_one_lam():
    images, labels = _batch()
    mixed, targets = MIXUP(jax.random.key(3), images, _one_hot(labels), 0.8, jnp.asarray(MASK))
    targets, mixed = np.asarray(targets), np.asarray(mixed)
    np.testing.assert_allclose(targets[MASK].sum(axis=1), 1.0, rtol=1e-6)
    partners = _partners_from_targets(targets)
    lam = np.diag(targets)[MASK & (partners != np.arange(BATCH))][0]
    for i in np.flatnonzero(MASK):
        expected = images[i] if partners[i] == i else lam * images[i] + (1 - lam) * images[partners[i]]
        np.testing.assert_allclose(mixed[i], expected, rtol=1e-5, atol=1e-6)
        assert MASK[partners[i]]
    np.testing.assert_array_equal(mixed[~MASK], images[~MASK])  # padded rows exactly as they were
    assert mixed[MASK].max() < 2


def test_mixup_lam_is_beta_distributed():
    images, labels = _batch()
    keys = jax.random.split(jax.random.key(1), 2000)
    mask = jnp.ones((BATCH,), bool)
    _, targets = jax.jit(jax.vmap(lambda key: mixing.mixup(key, images, _one_hot(labels), 0.8, mask)))(keys)
    # With partner != 0, row 0's own class keeps weight lam ~ Beta(0.8, 0.8): mean 1/2, variance 0.0962.
    lams = np.asarray(targets[:, 0, 0])[np.asarray(targets[:, 0, 0]) < 1 - 1e-6]
    assert abs(lams.mean() - 0.5) < 0.03 and abs(lams.var() - 0.64 / (2.56 * 2.6)) < 0.01


def test_cutmix_box_is_mmcls_rand_bbox():
    rng = np.random.default_rng(0)
    for lam in (0.0, 0.13, 0.4, 0.61, 0.9, 0.999):
        for _ in range(10):
            cy, cx = int(rng.integers(0, HEIGHT)), int(rng.integers(0, WIDTH))
            # mmcls BatchCutMixLayer.rand_bbox (numpy, margin 0).
            cut_h, cut_w = int(HEIGHT * np.sqrt(1 - lam)), int(WIDTH * np.sqrt(1 - lam))
            expected = [np.clip(cy - cut_h // 2, 0, HEIGHT), np.clip(cy + cut_h // 2, 0, HEIGHT),
                        np.clip(cx - cut_w // 2, 0, WIDTH), np.clip(cx + cut_w // 2, 0, WIDTH)]
            box = mixing.cutmix_box(jnp.float32(lam), jnp.array([cy, cx]), HEIGHT, WIDTH)
            np.testing.assert_array_equal(box, expected)
            sliced = np.zeros((HEIGHT, WIDTH), bool)
            sliced[expected[0]:expected[1], expected[2]:expected[3]] = True
            np.testing.assert_array_equal(mixing.box_mask(box, HEIGHT, WIDTH), sliced)


@pytest.mark.parametrize("seed", range(4))
def test_cutmix_target_weights_are_the_pasted_area_shares(seed):
    images, labels = _constant_batch()
    mixed, targets = CUTMIX(jax.random.key(seed), images, _one_hot(labels), 1.0, jnp.asarray(MASK))
    mixed, targets = np.asarray(mixed), np.asarray(targets)
    boxes = []
    for i in np.flatnonzero(MASK):
        sources = mixed[i, :, :, 0].astype(int) - 1  # the row each pixel came from
        shares = np.bincount(sources.ravel(), minlength=BATCH) / sources.size
        np.testing.assert_allclose(targets[i], shares, atol=1e-6)
        assert set(np.unique(sources)) <= {i} | set(np.flatnonzero(MASK))
        pasted = sources != i
        if pasted.any():  # one rectangle, the same for every row of the batch
            rows, cols = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
            assert pasted[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and pasted.sum() == len(rows) * len(cols)
            boxes.append((rows[0], rows[-1], cols[0], cols[-1]))
    assert len(set(boxes)) <= 1
    np.testing.assert_array_equal(mixed[~MASK], np.asarray(images)[~MASK])


def test_mix_batch_picks_mixup_or_cutmix_with_equal_odds_under_jit():
    images, labels = _constant_batch()
    cutmix_count = 0
    for key in jax.random.split(jax.random.key(2), 60):
        mixed, targets = MIX_BATCH(key, images, labels, BATCH, label_smoothing=0.0, mask=ALL_REAL)
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)
        # CutMix copies pixels (integer values); Mixup blends them (almost surely fractional somewhere).
        cutmix_count += bool(np.all(np.asarray(mixed) == np.round(np.asarray(mixed))))
    assert 18 <= cutmix_count <= 42


def test_mix_batch_smooths_the_mixed_targets_and_is_deterministic():
    images, labels = _batch()
    key, mask = jax.random.key(5), jnp.asarray(MASK)
    plain_images, plain = MIX_BATCH(key, images, labels, BATCH, label_smoothing=0.0, mask=mask)
    smooth_images, smoothed = MIX_BATCH(key, images, labels, BATCH, label_smoothing=0.1, mask=mask)
    np.testing.assert_array_equal(plain_images, smooth_images)  # the same key: the same mixing
    np.testing.assert_allclose(smoothed[MASK], 0.9 * plain[MASK] + 0.1 / BATCH, rtol=1e-6)
    assert not np.asarray(smoothed[~MASK]).any()
    np.testing.assert_array_equal(smooth_images[~MASK], images[~MASK])
    other_images, _ = MIX_BATCH(jax.random.key(6), images, labels, BATCH, label_smoothing=0.1, mask=mask)
    assert not np.array_equal(other_images, smooth_images)


def test_mix_batch_with_one_or_no_mixer():
    images, labels = _constant_batch()
    key = jax.random.key(7)
    only_cutmix, _ = MIX_BATCH(key, images, labels, BATCH, mixup_alpha=0.0, label_smoothing=0.1, mask=ALL_REAL)
    assert np.all(np.asarray(only_cutmix) == np.round(np.asarray(only_cutmix)))
    unmixed, targets = mixing.mix_batch(key, images, labels, BATCH, mixup_alpha=0.0, cutmix_alpha=0.0)
    np.testing.assert_array_equal(unmixed, images)
    np.testing.assert_allclose(targets, optax.smooth_labels(jax.nn.one_hot(labels, BATCH), 0.1), rtol=1e-6)
    with pytest.raises(ValueError, match="must be >= 0"):
        mixing.mix_batch(key, images, labels, BATCH, mixup_alpha=-1.0)
