"""Batch augmentation of the Swin recipe on device: label smoothing, Mixup and CutMix (pure JAX, jit-friendly).

mmclassification's ``swin-base_16xb64_in1k`` trains the softmax classifier on mixed batches::

    train_cfg=dict(augments=[dict(type='BatchMixup', alpha=0.8, prob=0.5),
                             dict(type='BatchCutMix', alpha=1.0, prob=0.5)])
    loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')

Each batch is mixed by exactly one of the two (equal odds), with one ``lam ~ Beta(alpha, alpha)`` for the
whole batch and a random permutation of the batch as the partners (``torch.randperm`` in mmcls):

- Mixup: ``x = lam * x + (1 - lam) * x[partner]``, ``t = lam * t + (1 - lam) * t[partner]``.
- CutMix: a box of sides ``int(H * sqrt(1 - lam))`` x ``int(W * sqrt(1 - lam))`` centred on a uniform
  pixel and clipped to the image takes the partner's pixels; ``lam`` becomes the share of the image left
  unpasted (mmcls / timm ``correct_lam=True``) before the targets are mixed.

Label smoothing is ``(1 - s) * t + s / C`` (mmcls ``mode='original'`` = ``optax.smooth_labels``). It is affine
with weights summing to one, so smoothing the one-hot labels before mixing (as here) equals mmcls's
smoothing of the mixed labels.

Padded rows (``mask`` False) are left exactly as they are, their targets are zero (their loss vanishes),
and real rows take partners among the real rows only: the partners are a uniformly random permutation of
the real rows, the padded rows being their own partners. So a padded image never leaks into a real
example, and the mixing statistics of the real rows are those of mmcls on the real batch.

Images are ``[B, H, W, C]``; ``alpha`` values are Python numbers (static under ``jax.jit``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The Swin recipe (mmcls swin-base_16xb64_in1k).
MIXUP_ALPHA = 0.8
CUTMIX_ALPHA = 1.0
LABEL_SMOOTHING = 0.1


def _all_real(batch_size: int) -> jax.Array:
    return jnp.ones((batch_size,), bool)


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float,
                  mask: jax.Array | None = None) -> jax.Array:
    """float32 ``[B, C]``: ``(1 - smoothing) * one_hot(labels) + smoothing / C``; zero rows where ``mask`` is False."""
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    smoothed = (1.0 - smoothing) * one_hot + smoothing / num_classes
    mask = _all_real(labels.shape[0]) if mask is None else mask
    return jnp.where(mask[:, None], smoothed, 0.0)


def partner_permutation(key: jax.Array, mask: jax.Array) -> jax.Array:
    """int ``[B]``: a uniformly random permutation of the real rows among themselves; padded rows map to themselves.

    Real rows in index order are matched with the real rows in a random order (sorting uniform keys); the
    padded rows come last in both orders, in index order (stable sorts), so each is its own partner.
    """
    in_order = jnp.argsort(~mask, stable=True)
    shuffled = jnp.argsort(jnp.where(mask, jax.random.uniform(key, mask.shape), jnp.inf), stable=True)
    return jnp.zeros_like(in_order).at[in_order].set(shuffled)


def _mix(lam: jax.Array, values: jax.Array, partner: jax.Array) -> jax.Array:
    lam = lam.astype(values.dtype)
    return lam * values + (1 - lam) * values[partner]


def _keep_padded(mixed: jax.Array, original: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask.reshape(mask.shape + (1,) * (original.ndim - 1)), mixed, original)


def blend(lam: jax.Array, partner: jax.Array, images: jax.Array, targets: jax.Array,
          mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mixup with a given ``lam`` and partners: ``lam * row + (1 - lam) * partner row``; padded rows kept."""
    return (_keep_padded(_mix(lam, images, partner), images, mask),
            _keep_padded(_mix(lam, targets, partner), targets, mask))


def cutmix_box(lam: jax.Array, centre: jax.Array, height: int, width: int) -> jax.Array:
    """int32 ``[4]`` = (top, bottom, left, right), bottom / right exclusive: mmcls / timm ``rand_bbox``.

    Sides ``int(H * sqrt(1 - lam))`` and ``int(W * sqrt(1 - lam))`` around ``centre`` = (row, column),
    corners ``centre -/+ side // 2`` clipped to the image (`random_centre` draws the centre).
    """
    size = jnp.array([height, width])
    cut = jnp.floor(size * jnp.sqrt(1.0 - lam)).astype(jnp.int32)
    low = jnp.clip(centre - cut // 2, 0, size)
    high = jnp.clip(centre + cut // 2, 0, size)
    return jnp.stack([low[0], high[0], low[1], high[1]]).astype(jnp.int32)


def random_centre(key: jax.Array, height: int, width: int) -> jax.Array:
    """int32 ``[2]``: a uniform pixel (row, column), the CutMix box's centre."""
    return jax.random.randint(key, (2,), 0, jnp.array([height, width]))


def box_mask(box: jax.Array, height: int, width: int) -> jax.Array:
    """bool ``[H, W]``: True inside ``box`` = (top, bottom, left, right) (static shape, no dynamic slice)."""
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    return (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])


def paste(lam: jax.Array, centre: jax.Array, partner: jax.Array, images: jax.Array, targets: jax.Array,
          mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """CutMix with a given Beta draw ``lam``, box centre and partners; padded rows kept.

    The box (`cutmix_box`) takes the partner's pixels; the targets are mixed with the share of the image
    outside the box, not ``lam`` (mmcls / timm ``correct_lam=True``).
    """
    height, width = images.shape[1:3]
    pasted = box_mask(cutmix_box(lam, centre, height, width), height, width)
    kept_share = 1.0 - jnp.mean(pasted.astype(jnp.float32))
    mixed_images = jnp.where(pasted[None, :, :, None], images[partner], images)
    return (_keep_padded(mixed_images, images, mask),
            _keep_padded(_mix(kept_share, targets, partner), targets, mask))


def mixup(key: jax.Array, images: jax.Array, targets: jax.Array, alpha: float,
          mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """mmcls ``BatchMixupLayer``: every real row blended with a random real partner, ``lam ~ Beta(alpha, alpha)``."""
    mask = _all_real(images.shape[0]) if mask is None else mask
    lam_key, partner_key = jax.random.split(key)
    lam = jax.random.beta(lam_key, alpha, alpha)
    return blend(lam, partner_permutation(partner_key, mask), images, targets, mask)


def cutmix(key: jax.Array, images: jax.Array, targets: jax.Array, alpha: float,
           mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """mmcls ``BatchCutMixLayer``: one box of every real row replaced by a random real partner's pixels
    (`paste`), the box from ``lam ~ Beta(alpha, alpha)`` and a uniform centre."""
    mask = _all_real(images.shape[0]) if mask is None else mask
    lam_key, centre_key, partner_key = jax.random.split(key, 3)
    lam = jax.random.beta(lam_key, alpha, alpha)
    centre = random_centre(centre_key, *images.shape[1:3])
    return paste(lam, centre, partner_permutation(partner_key, mask), images, targets, mask)


def mix_batch(key: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int, *,
              mixup_alpha: float = MIXUP_ALPHA, cutmix_alpha: float = CUTMIX_ALPHA,
              label_smoothing: float = LABEL_SMOOTHING,
              mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The Swin recipe's batch: (images, soft targets float32 ``[B, C]``) (see the module docstring).

    Mixup or CutMix with equal odds (only the one whose alpha is positive when the other is 0; neither
    when both are 0), applied to the smoothed one-hot ``labels``. Padded rows (``mask`` False) keep their
    images and get zero targets. One Beta draw serves whichever mixer is chosen (its alpha).
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0 (0 = off), got {mixup_alpha}, {cutmix_alpha}")
    mask = _all_real(images.shape[0]) if mask is None else mask
    targets = smooth_labels(labels, num_classes, label_smoothing, mask)
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return images, targets
    choice_key, lam_key, centre_key, partner_key = jax.random.split(key, 4)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_mixup = jax.random.bernoulli(choice_key)
    else:
        use_mixup = jnp.asarray(mixup_alpha > 0)
    alpha = jnp.where(use_mixup, mixup_alpha, cutmix_alpha)
    lam = jax.random.beta(lam_key, alpha, alpha)
    partner = partner_permutation(partner_key, mask)
    centre = random_centre(centre_key, *images.shape[1:3])
    return jax.lax.cond(use_mixup,
                        lambda: blend(lam, partner, images, targets, mask),
                        lambda: paste(lam, centre, partner, images, targets, mask))
