"""RandAugment as mmclassification configures it for Swin (``swin-base_16xb64_in1k``), with pillow.

The recipe (mmcls ``configs/_base_/datasets/imagenet_bs64_swin_224.py``)::

    RandAugment(policies=rand_increasing_policies, num_policies=2, total_level=10,
                magnitude_level=9, magnitude_std=0.5)

mmcls's ``rand_increasing_policies`` are timm's ``_RAND_INCREASING_TRANSFORMS``
(``rand_augment_transform('rand-m9-mstd0.5-inc1')``, which Swin's own repository uses): fifteen operations
whose strength grows with the magnitude level. `RAND_INCREASING_POLICIES` lists them with mmcls's
``magnitude_range`` (value at level 0, value at ``total_level``).

One call of `rand_augment` (mmcls ``RandAugment.__call__`` and each op's ``__call__``, mmcls 0.x):

1. draw ``num_policies`` policies uniformly WITH replacement (``random.choices``);
2. for each, in order: the level ~ N(magnitude_level, magnitude_std) clipped to [0, total_level], the
   magnitude ``level / total_level * (end - start) + start``; the op runs with probability 1/2 (every
   op's default ``prob=0.5``) and signed ops negate the magnitude with probability 1/2
   (``random_negative_prob=0.5``; Posterize, Solarize and SolarizeAdd never negate).

The geometric ops (Rotate, Shear, Translate) resample bicubically and fill with ``fill``, the dataset mean
in pixels (mmcls: ``pad_val=round(img_norm_cfg.mean)``, i.e. (124, 116, 104) for ImageNet in RGB order).

Every op takes and returns a uint8 ``[H, W, C]`` numpy image with C = 1 or 3 (pillow modes "L" / "RGB").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

BICUBIC = Image.Resampling.BICUBIC
DIRECTIONS = ("horizontal", "vertical")


def _to_pil(image: np.ndarray) -> Image.Image:
    if image.ndim != 3 or image.shape[2] not in (1, 3) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image [H, W, 1 or 3], got {image.dtype} {image.shape}")
    return Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)


def _to_array(pil: Image.Image) -> np.ndarray:
    array = np.asarray(pil)
    return array[..., None] if array.ndim == 2 else array


def _pil_fill(fill: Sequence[int], channels: int) -> int | tuple[int, ...]:
    if len(fill) not in (1, channels):
        raise ValueError(f"fill has {len(fill)} values for an image with {channels} channels: give 1 or {channels}")
    values = tuple(int(value) for value in fill) * (channels // len(fill))
    return values[0] if channels == 1 else values


def _affine(image: np.ndarray, inverse: tuple[float, ...], fill: Sequence[int]) -> np.ndarray:
    """Bicubic affine warp; ``inverse`` maps output (x, y) to input ``(a x + b y + c, d x + e y + f)``."""
    pil = _to_pil(image)
    warped = pil.transform(pil.size, Image.Transform.AFFINE, inverse, resample=BICUBIC,
                           fillcolor=_pil_fill(fill, image.shape[2]))
    return _to_array(warped)


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'horizontal' or 'vertical', got {direction!r}")


# ---------------------------------------------------------------------------------------------- operations


def auto_contrast(image: np.ndarray) -> np.ndarray:
    """Stretches each channel to [0, 255] (``ImageOps.autocontrast``; mmcv ``auto_contrast``, cutoff 0)."""
    return _to_array(ImageOps.autocontrast(_to_pil(image)))


def equalize(image: np.ndarray) -> np.ndarray:
    """Histogram-equalises each channel (``ImageOps.equalize``; mmcv ``imequalize``)."""
    return _to_array(ImageOps.equalize(_to_pil(image)))


def invert(image: np.ndarray) -> np.ndarray:
    """``255 - image`` (``ImageOps.invert``; mmcv ``iminvert``)."""
    return _to_array(ImageOps.invert(_to_pil(image)))


def rotate(image: np.ndarray, angle: float, fill: Sequence[int]) -> np.ndarray:
    """Rotates ``angle`` degrees clockwise about the centre (mmcv ``imrotate``'s sign), bicubic."""
    pil = _to_pil(image)
    return _to_array(pil.rotate(-angle, resample=BICUBIC, fillcolor=_pil_fill(fill, image.shape[2])))


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
    """Keeps the ``bits`` high bits of every value (``ImageOps.posterize``); 0 bits gives black (mmcv)."""
    if not 0 <= bits <= 8:
        raise ValueError(f"posterize keeps 0 to 8 bits, got {bits}")
    _to_pil(image)  # the same input check as every op
    return image & np.uint8((0xFF << (8 - bits)) & 0xFF)


def solarize(image: np.ndarray, threshold: float) -> np.ndarray:
    """Inverts the values >= ``threshold`` (``ImageOps.solarize``); a threshold of 256 changes nothing."""
    return _to_array(ImageOps.solarize(_to_pil(image), threshold))


def solarize_add(image: np.ndarray, addition: float, threshold: float = 128) -> np.ndarray:
    """Adds ``int(addition)`` (capped at 255) to the values below ``threshold`` (mmcls ``SolarizeAdd``)."""
    lookup = [min(255, value + int(addition)) if value < threshold else value for value in range(256)]
    pil = _to_pil(image)
    return _to_array(pil.point(lookup * len(pil.getbands())))


def adjust_color(image: np.ndarray, factor: float) -> np.ndarray:
    """Blends with the grey image: 0 grey, 1 unchanged (``ImageEnhance.Color``; mmcv ``adjust_color``)."""
    return _to_array(ImageEnhance.Color(_to_pil(image)).enhance(factor))


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Blends with the mean grey level (``ImageEnhance.Contrast``; mmcv ``adjust_contrast``)."""
    return _to_array(ImageEnhance.Contrast(_to_pil(image)).enhance(factor))


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blends with black (``ImageEnhance.Brightness``; mmcv ``adjust_brightness``)."""
    return _to_array(ImageEnhance.Brightness(_to_pil(image)).enhance(factor))


def adjust_sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blends with the 3x3 smoothed image (``ImageEnhance.Sharpness``; mmcv ``adjust_sharpness``)."""
    return _to_array(ImageEnhance.Sharpness(_to_pil(image)).enhance(factor))


def shear(image: np.ndarray, magnitude: float, direction: str, fill: Sequence[int]) -> np.ndarray:
    """Horizontal: row y moves ``magnitude * y`` pixels right (vertical: column x moves down), mmcv ``imshear``.

    Pillow's affine map works in coordinates whose pixel centres sit at ``i + 0.5``; the offset
    ``magnitude / 2`` keeps the centres of row (column) 0 in place, as OpenCV's warp in mmcv does.
    """
    _check_direction(direction)
    if direction == "horizontal":
        return _affine(image, (1, -magnitude, magnitude / 2, 0, 1, 0), fill)
    return _affine(image, (1, 0, 0, -magnitude, 1, magnitude / 2), fill)


def translate(image: np.ndarray, offset: float, direction: str, fill: Sequence[int]) -> np.ndarray:
    """Moves the content ``offset`` pixels right (horizontal) or down (vertical) (mmcv ``imtranslate``)."""
    _check_direction(direction)
    inverse = (1, 0, -offset, 0, 1, 0) if direction == "horizontal" else (1, 0, 0, 0, 1, -offset)
    return _affine(image, inverse, fill)


# ------------------------------------------------------------------------------------------------ policies


@dataclasses.dataclass(frozen=True)
class Policy:
    """One entry of mmcls's RandAugment policy list.

    name: the operation (`OPERATIONS`). magnitude_range: the magnitude at level 0 and at ``total_level``
    (None: the op has no magnitude). signed: mmcls negates the magnitude with probability 1/2.
    """

    name: str
    magnitude_range: tuple[float, float] | None = None
    signed: bool = False


# name -> (image, magnitude, fill) -> image, with mmcls's reading of the magnitude.
OPERATIONS: dict[str, Callable[[np.ndarray, float, Sequence[int]], np.ndarray]] = {
    "AutoContrast": lambda image, magnitude, fill: auto_contrast(image),
    "Equalize": lambda image, magnitude, fill: equalize(image),
    "Invert": lambda image, magnitude, fill: invert(image),
    "Rotate": lambda image, angle, fill: rotate(image, angle, fill),
    # mmcls (as timm) rounds the bits up: level 9 of the range (4, 0) keeps ceil(0.4) = 1 bit.
    "Posterize": lambda image, bits, fill: posterize(image, math.ceil(bits)),
    "Solarize": lambda image, threshold, fill: solarize(image, threshold),
    "SolarizeAdd": lambda image, addition, fill: solarize_add(image, addition),
    # The enhancers take factor 1 + magnitude: magnitude 0 leaves the image as it is.
    "ColorTransform": lambda image, magnitude, fill: adjust_color(image, 1 + magnitude),
    "Contrast": lambda image, magnitude, fill: adjust_contrast(image, 1 + magnitude),
    "Brightness": lambda image, magnitude, fill: adjust_brightness(image, 1 + magnitude),
    "Sharpness": lambda image, magnitude, fill: adjust_sharpness(image, 1 + magnitude),
    "ShearX": lambda image, magnitude, fill: shear(image, magnitude, "horizontal", fill),
    "ShearY": lambda image, magnitude, fill: shear(image, magnitude, "vertical", fill),
    # Translate's magnitude is a fraction of the image size along its direction.
    "TranslateX": lambda image, magnitude, fill: translate(image, magnitude * image.shape[1], "horizontal", fill),
    "TranslateY": lambda image, magnitude, fill: translate(image, magnitude * image.shape[0], "vertical", fill),
}

# mmcls ``rand_increasing_policies`` = timm ``_RAND_INCREASING_TRANSFORMS`` (Shear/Translate with
# direction horizontal / vertical are named ShearX / ShearY / TranslateX / TranslateY here, as in timm).
RAND_INCREASING_POLICIES = (
    Policy("AutoContrast"),
    Policy("Equalize"),
    Policy("Invert"),
    Policy("Rotate", (0, 30), signed=True),
    Policy("Posterize", (4, 0)),
    Policy("Solarize", (256, 0)),
    Policy("SolarizeAdd", (0, 110)),
    Policy("ColorTransform", (0, 0.9), signed=True),
    Policy("Contrast", (0, 0.9), signed=True),
    Policy("Brightness", (0, 0.9), signed=True),
    Policy("Sharpness", (0, 0.9), signed=True),
    Policy("ShearX", (0, 0.3), signed=True),
    Policy("ShearY", (0, 0.3), signed=True),
    Policy("TranslateX", (0, 0.45), signed=True),
    Policy("TranslateY", (0, 0.45), signed=True),
)

# The Swin recipe's RandAugment settings.
NUM_POLICIES = 2
MAGNITUDE_LEVEL = 9
MAGNITUDE_STD = 0.5
TOTAL_LEVEL = 10
OP_PROBABILITY = 0.5
NEGATE_PROBABILITY = 0.5


def magnitude_of(policy: Policy, level: float, total_level: float = TOTAL_LEVEL) -> float:
    """mmcls's map of a level in [0, total_level] onto ``policy.magnitude_range`` (0 for magnitude-less ops)."""
    if policy.magnitude_range is None:
        return 0.0
    start, end = policy.magnitude_range
    return level / total_level * (end - start) + start


def apply_policy(image: np.ndarray, policy: Policy, magnitude: float, fill: Sequence[int]) -> np.ndarray:
    """Runs ``policy``'s operation with this (already signed) magnitude."""
    if policy.name not in OPERATIONS:
        raise ValueError(f"unknown RandAugment operation {policy.name!r}: use one of {', '.join(OPERATIONS)}")
    return OPERATIONS[policy.name](image, magnitude, fill)


def sample_level(rng: np.random.Generator, magnitude_level: float = MAGNITUDE_LEVEL,
                 magnitude_std: float = MAGNITUDE_STD, total_level: float = TOTAL_LEVEL) -> float:
    """N(magnitude_level, magnitude_std) clipped to [0, total_level]; exactly magnitude_level when std <= 0."""
    if magnitude_std <= 0:
        return float(magnitude_level)
    return float(np.clip(rng.normal(magnitude_level, magnitude_std), 0, total_level))


def rand_augment(image: np.ndarray, rng: np.random.Generator, fill: Sequence[int],
                 policies: Sequence[Policy] = RAND_INCREASING_POLICIES, num_policies: int = NUM_POLICIES,
                 magnitude_level: float = MAGNITUDE_LEVEL, magnitude_std: float = MAGNITUDE_STD,
                 total_level: float = TOTAL_LEVEL) -> np.ndarray:
    """mmcls ``RandAugment`` (see the module docstring): ``num_policies`` random policies in a row."""
    if not policies or num_policies < 0:
        raise ValueError(f"RandAugment needs policies and num_policies >= 0, got {len(policies)} and {num_policies}")
    for index in rng.integers(0, len(policies), size=num_policies):
        policy = policies[int(index)]
        magnitude = magnitude_of(policy, sample_level(rng, magnitude_level, magnitude_std, total_level), total_level)
        if rng.random() > OP_PROBABILITY:
            continue
        if policy.signed and rng.random() < NEGATE_PROBABILITY:
            magnitude = -magnitude
        image = apply_policy(image, policy, magnitude, fill)
    return image
