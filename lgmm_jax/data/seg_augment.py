"""mmseg's training augmentation, applied jointly to an image and its label map, as a grain transform.

The steps and their defaults are those of mmsegmentation's ADE20K / Cityscapes recipes::

    RandomResize(scale, ratio_range=(0.5, 2.0), keep_ratio=True)
    RandomCrop(crop_size, cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()
    (normalise, then pad to crop_size: image 0 after normalisation, label 255; SegDataPreProcessor)

- Resize (mmcv ``rescale_size`` with ``keep_ratio``): the scale ``(long, short)`` is multiplied by a ratio
  drawn uniformly from ``ratio_range``; the image is resized by the largest factor that fits its long
  side within ``long * ratio`` and its short side within ``short * ratio``. The image is resampled
  bilinearly and the label by nearest neighbour, with pillow.
- Crop: a random ``crop_size`` window (the whole side where the image is smaller); when
  ``cat_max_ratio < 1`` it is redrawn up to 10 times until no class covers ``cat_max_ratio`` or more of
  its labelled pixels and it holds at least two classes; after 10 failures the 11th window is taken
  unchecked, as mmseg does.
- Flip: image and label mirrored left-right together with probability 0.5.
- Photometric distortion (image only), mmseg's order: brightness (+-32), then contrast (x 0.5-1.5) either
  here or last (a coin decides), saturation (x 0.5-1.5), hue (+-18 of OpenCV's 180 hue steps, i.e.
  +-36 degrees), each applied with probability 1/2. Brightness and contrast are mmseg's uint8
  arithmetic (float, clip, truncate); saturation and hue go through scikit-image's float HSV
  (``rgb2hsv`` / ``hsv2rgb``) in one round trip where mmseg makes one OpenCV 8-bit HSV round trip
  per step: the same colour change without the intermediate quantisation.

Every random choice comes from the ``np.random.Generator`` passed in; inside grain that is the generator
grain derives from the pipeline seed and the element's position, so the stream is deterministic.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image
from skimage import color as sk_color

from lgmm_jax.data import augment, reading
from lgmm_jax.data.pipeline import NORMALIZATION as DATASET_NORMALIZATION
from lgmm_jax.data.pipeline import Normalization, readable_example

# mmseg's data preprocessor for every recipe: ImageNet's mean and std.
NORMALIZATION = DATASET_NORMALIZATION["imagenet2012"]

VOID = 255
RATIO_RANGE = (0.5, 2.0)
CAT_MAX_RATIO = 0.75
CROP_TRIES = 10
BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18  # in OpenCV's 8-bit hue steps: 180 to the full turn
OPENCV_HUE_STEPS = 180


# ----------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------


def rescale_size(height: int, width: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv's ``rescale_size`` with ``keep_ratio``: the largest size that fits ``scale`` = (long, short)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_label(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 label map ``[H, W]`` with pillow (no new values appear)."""
    if label.shape == (height, width):
        return label
    return np.asarray(Image.fromarray(label).resize((width, height), resample=Image.NEAREST))


def random_resize(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, scale: Sequence[float],
                  ratio_range: Sequence[float] = RATIO_RANGE) -> tuple[np.ndarray, np.ndarray]:
    """mmseg's ``RandomResize(scale, ratio_range, keep_ratio=True)``: bilinear image, nearest label."""
    ratio = rng.uniform(ratio_range[0], ratio_range[1])
    height, width = rescale_size(image.shape[0], image.shape[1], (scale[0] * ratio, scale[1] * ratio))
    return augment.resize(image, height, width), resize_label(label, height, width)


def random_crop_window(height: int, width: int, crop_size: Sequence[int],
                       rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random ``crop_size`` window, clipped to the image (mmseg's crop_bbox)."""
    top = int(rng.integers(0, max(height - crop_size[0], 0) + 1))
    left = int(rng.integers(0, max(width - crop_size[1], 0) + 1))
    return top, left, min(crop_size[0], height), min(crop_size[1], width)


def dominated(label: np.ndarray, cat_max_ratio: float, ignore_index: int = VOID) -> bool:
    """mmseg's rejection test: fewer than two classes, or one covering ``cat_max_ratio`` of the labelled."""
    classes, counts = np.unique(label, return_counts=True)
    counts = counts[classes != ignore_index]
    return not (len(counts) > 1 and np.max(counts) / np.sum(counts) < cat_max_ratio)


def random_crop(image: np.ndarray, label: np.ndarray, crop_size: Sequence[int], rng: np.random.Generator,
                cat_max_ratio: float = CAT_MAX_RATIO, ignore_index: int = VOID) -> tuple[np.ndarray, np.ndarray]:
    """mmseg's ``RandomCrop(crop_size, cat_max_ratio)``: up to 10 redraws of a dominated window."""
    window = random_crop_window(image.shape[0], image.shape[1], crop_size, rng)
    if cat_max_ratio < 1.0:
        for _ in range(CROP_TRIES):
            if not dominated(augment.crop(label, *window), cat_max_ratio, ignore_index):
                break
            window = random_crop_window(image.shape[0], image.shape[1], crop_size, rng)
    return augment.crop(image, *window), augment.crop(label, *window)


def random_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                probability: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Mirrors image and label left-right together with the given probability."""
    if rng.random() < probability:
        return augment.horizontal_flip(image), label[:, ::-1]
    return image, label


def pad_to(image: np.ndarray, label: np.ndarray, size: Sequence[int], image_value: float = 0.0,
           label_value: int = VOID) -> tuple[np.ndarray, np.ndarray]:
    """Pads image and label at the bottom and right up to ``size`` (never crops)."""
    extra_rows = max(size[0] - image.shape[0], 0)
    extra_columns = max(size[1] - image.shape[1], 0)
    image = np.pad(image, ((0, extra_rows), (0, extra_columns), (0, 0)), constant_values=image_value)
    label = np.pad(label, ((0, extra_rows), (0, extra_columns)), constant_values=label_value)
    return image, label


# ----------------------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------------------


def scale_and_shift(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``convert``: ``uint8(clip(image * alpha + beta, 0, 255))`` in float32, truncating."""
    return np.clip(image.astype(np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)


def saturate_and_rotate_hue(image: np.ndarray, saturation: float, hue_steps: int) -> np.ndarray:
    """Scales the HSV saturation (clipped to 1) and turns the hue by ``hue_steps`` / 180 of a full turn."""
    hsv = sk_color.rgb2hsv(image)
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0.0, 1.0)
    hsv[..., 0] = np.mod(hsv[..., 0] + hue_steps / OPENCV_HUE_STEPS, 1.0)
    return np.clip(np.rint(sk_color.hsv2rgb(hsv) * 255.0), 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion`` on a uint8 RGB image (see the module docstring)."""
    if rng.integers(2):
        image = scale_and_shift(image, beta=rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA))
    contrast_first = bool(rng.integers(2))
    contrast = rng.uniform(*CONTRAST_RANGE) if rng.integers(2) else None
    if contrast_first and contrast is not None:
        image = scale_and_shift(image, alpha=contrast)
    saturation = rng.uniform(*SATURATION_RANGE) if rng.integers(2) else 1.0
    hue_steps = int(rng.integers(-HUE_DELTA, HUE_DELTA + 1)) if rng.integers(2) else 0
    if saturation != 1.0 or hue_steps != 0:
        image = saturate_and_rotate_hue(image, saturation, hue_steps)
    if not contrast_first and contrast is not None:
        image = scale_and_shift(image, alpha=contrast)
    return image


# ----------------------------------------------------------------------------------------------------------
# The pipeline step
# ----------------------------------------------------------------------------------------------------------


def augment_segmentation(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *,
                         scale: Sequence[float], crop_size: Sequence[int],
                         ratio_range: Sequence[float] = RATIO_RANGE,
                         cat_max_ratio: float = CAT_MAX_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """Resize, crop, flip and photometric distortion of a uint8 image ``[H, W, 3]`` and label ``[H, W]``.

    Returns uint8 arrays of at most ``crop_size`` (smaller where the resized image is; see `pad_to`).
    """
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape} and label {label.shape} must have the same height and width")
    image, label = random_resize(image, label, rng, scale, ratio_range)
    image, label = random_crop(image, label, crop_size, rng, cat_max_ratio)
    image, label = random_flip(image, label, rng)
    return photometric_distortion(image, rng), label


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentationTrainExample(grain.transforms.RandomMap):
    """Source index -> ``{"image": float32 [h, w, 3], "label": int32 [h, w]}`` with ``(h, w) = crop_size``.

    The source's ``image`` and ``label`` go through `augment_segmentation`, the image is normalised
    (``(x / 255 - mean) / std``) and both are padded to ``crop_size`` (image 0, label 255) as mmseg's
    data preprocessor does. An example whose image cannot be decoded (`images.UnreadableImageError`) is
    replaced by another example of the source drawn with the element's generator, as classification's
    (`pipeline.readable_example`).
    """

    source: Any
    scale: tuple[float, float]
    crop_size: tuple[int, int]
    normalization: Normalization
    ratio_range: tuple[float, float] = RATIO_RANGE
    cat_max_ratio: float = CAT_MAX_RATIO

    def random_map(self, index, rng: np.random.Generator) -> dict[str, np.ndarray]:
        example, replaced = readable_example(self.source, int(index), range(len(self.source)), rng)

        def transform():
            image, label = augment_segmentation(
                np.asarray(example["image"]), np.asarray(example["label"]), rng, scale=self.scale,
                crop_size=self.crop_size, ratio_range=self.ratio_range, cat_max_ratio=self.cat_max_ratio)
            image = augment.normalize(image, self.normalization.mean, self.normalization.std)
            return pad_to(image, label, self.crop_size)

        image, label = reading.guarded(self.source, int(index), transform)
        return {"image": image, "label": label.astype(np.int32), "replaced": replaced}
