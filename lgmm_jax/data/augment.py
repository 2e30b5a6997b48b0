"""Per-example image operations on uint8 ``[H, W, C]`` numpy arrays (pillow for resizing).

Random operations take a ``np.random.Generator``; inside the grain pipeline that generator is the one
grain derives from the pipeline seed and the element's index, so augmentation is deterministic for a seed.
The geometry follows torchvision (``RandomCrop(padding=...)``, ``RandomResizedCrop``, ``Resize``,
``CenterCrop``), the de-facto reference for the CIFAR and ImageNet recipes; `random_erasing` follows
mmclassification's ``RandomErasing`` (the Swin recipe). Resizing resamples bilinearly unless told otherwise
(``resample=BICUBIC`` for mmcls's ``interpolation='bicubic', backend='pillow'``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

BILINEAR = Image.Resampling.BILINEAR
BICUBIC = Image.Resampling.BICUBIC


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3:
        raise ValueError(f"expected an image [H, W, C], got shape {image.shape}")


def _per_channel(values: Sequence[float], channels: int, name: str) -> np.ndarray:
    """``values`` as float64 ``[channels]`` (a single value serves every channel)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size not in (1, channels):
        raise ValueError(f"{name} has {values.size} values for an image with {channels} channels: "
                         f"pass one value per channel")
    return np.broadcast_to(values, (channels,))


def crop(image: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """The ``height x width`` window whose top-left corner is ``(top, left)``."""
    return image[top:top + height, left:left + width]


def random_crop_with_padding(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pads every side by ``padding`` and crops a random window of the original size."""
    _check_image(image)
    height, width = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return crop(padded, int(top), int(left), height, width)


def horizontal_flip(image: np.ndarray) -> np.ndarray:
    """Mirrors the image left-right."""
    return image[:, ::-1]


def random_horizontal_flip(image: np.ndarray, rng: np.random.Generator, probability: float = 0.5) -> np.ndarray:
    """Mirrors the image left-right with the given probability."""
    return horizontal_flip(image) if rng.random() < probability else image


def resize(image: np.ndarray, height: int, width: int, resample: Image.Resampling = BILINEAR) -> np.ndarray:
    """Pillow resize (antialiased when shrinking; bilinear by default), keeping dtype uint8 and the channels."""
    _check_image(image)
    if image.shape[:2] == (height, width):
        return image
    channels = image.shape[2]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(pil.resize((width, height), resample=resample))
    return out[..., None] if channels == 1 else out


def resize_shorter_side(image: np.ndarray, size: int, resample: Image.Resampling = BILINEAR) -> np.ndarray:
    """Resizes so that the shorter side is ``size`` and the aspect ratio is kept (torchvision ``Resize(int)``,
    mmcls ``Resize(size=(size, -1))``)."""
    height, width = image.shape[:2]
    if height <= width:
        return resize(image, size, int(size * width / height), resample)
    return resize(image, int(size * height / width), size, resample)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size x size`` window (torchvision rounding of the offsets)."""
    height, width = image.shape[:2]
    if height < size or width < size:
        raise ValueError(f"cannot center-crop {size}x{size} from an image of {height}x{width}: resize first")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return crop(image, top, left, size, size)


def random_resized_crop_window(height: int, width: int, rng: np.random.Generator,
                               scale: Sequence[float] = (0.08, 1.0),
                               ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random window covering ``scale`` of the area with aspect ``ratio``.

    torchvision's ``RandomResizedCrop.get_params``: ten tries, then a central crop with the aspect
    ratio clamped to ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3),
                        resample: Image.Resampling = BILINEAR) -> np.ndarray:
    """Inception-style crop: a random window (`random_resized_crop_window`) resized to ``size x size``."""
    _check_image(image)
    top, left, h, w = random_resized_crop_window(image.shape[0], image.shape[1], rng, scale, ratio)
    return resize(crop(image, top, left, h, w), size, size, resample)


def random_erasing_window(height: int, width: int, rng: np.random.Generator,
                          min_area_ratio: float = 0.02, max_area_ratio: float = 1 / 3,
                          aspect_range: Sequence[float] = (3 / 10, 10 / 3)) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of the rectangle mmcls's ``RandomErasing`` erases.

    The area is uniform in ``[min_area_ratio, max_area_ratio]`` of the image, the aspect h / w log-uniform
    in ``aspect_range``; h and w are capped at the image size and the corner is drawn as mmcls draws it,
    ``randint(0, H - h)`` (the last offset excluded) or 0 when the rectangle spans the image.
    """
    log_aspect = np.log(np.asarray(aspect_range, dtype=np.float64))
    aspect = math.exp(rng.uniform(log_aspect[0], log_aspect[1]))
    area = height * width * rng.uniform(min_area_ratio, max_area_ratio)
    h = min(int(round(math.sqrt(area * aspect))), height)
    w = min(int(round(math.sqrt(area / aspect))), width)
    top = int(rng.integers(0, height - h)) if height > h else 0
    left = int(rng.integers(0, width - w)) if width > w else 0
    return top, left, h, w


def random_erasing(image: np.ndarray, rng: np.random.Generator, fill_mean: Sequence[float],
                   fill_std: Sequence[float], probability: float = 0.25, min_area_ratio: float = 0.02,
                   max_area_ratio: float = 1 / 3, aspect_range: Sequence[float] = (3 / 10, 10 / 3)) -> np.ndarray:
    """mmcls ``RandomErasing(mode='rand', fill_color=fill_mean, fill_std=fill_std)`` on a uint8 image.

    With ``probability``, a random rectangle (`random_erasing_window`) is overwritten with per-pixel noise
    N(fill_mean, fill_std) per channel, in pixel units, truncated to integers and clipped to [0, 255]
    (the Swin recipe passes the dataset mean and std: the noise is N(0, 1) after normalisation, as timm's
    ``RandomErasing(mode='pixel')``). The input is not modified.
    """
    _check_image(image)
    mean = _per_channel(fill_mean, image.shape[2], "the erasing mean")
    std = _per_channel(fill_std, image.shape[2], "the erasing std")
    if rng.random() > probability:
        return image
    top, left, h, w = random_erasing_window(image.shape[0], image.shape[1], rng, min_area_ratio,
                                            max_area_ratio, aspect_range)
    noise = rng.normal(mean, std, (h, w, image.shape[2]))
    erased = image.copy()
    erased[top:top + h, left:left + w] = np.clip(noise.astype(np.int32), 0, 255).astype(np.uint8)
    return erased


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> float32 ``(image / 255 - mean) / std`` with per-channel ``mean`` / ``std``."""
    _check_image(image)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    if mean.size not in (1, image.shape[-1]) or std.size != mean.size:
        raise ValueError(
            f"normalisation has {mean.size} mean / {std.size} std values for an image with "
            f"{image.shape[-1]} channels: pass statistics with one value per channel")
    return (image.astype(np.float32) / np.float32(255.0) - mean) / std
