"""Dense (per-pixel) prediction of a segmenter, shared by segmentation evaluation, export and inference
(which sit above this module; it is the segmentation counterpart of `lgmm_jax.deploy.forward`).

What mmseg's `EncoderDecoder.predict` does, per pixel, with this library's open-set scores:

1. `eval_image`: the image normalised (ImageNet mean and std), after mmseg's test-time
   `Resize(scale, keep_ratio=True)` when `segmentation.eval_scale` is set. As mmseg tests (one image at a
   time, never padded), a batch holds images of one size only (`same_size_groups`), so an image's
   scores are those of the image alone: BatchNorm runs on running statistics, and no padding reaches
   DeepLab's image pooling, SegFormer's attention or the border context. The cost: one compilation per
   distinct input size. `size_divisor` > 0 trades that exactness for fewer compilations: a batch of any
   sizes zero-padded to one shape, a multiple of `size_divisor` (mmseg's training-time `stack_batch`).
2. `make_dense_forward`: the network's class scores (softmax logits, or L-GMM's log p(z|y), Eq. 4) at 1/4
   resolution, brought to the input size by bilinear upsampling (mmseg's `resize`, with the decode head's
   `align_corners`, False unless the config's `model.decoder.align_corners` says True):
   "whole" inference runs the full image, "slide" inference runs `crop`-sized windows every `stride`
   pixels (mmseg's `slide_inference`: the last window of a row or column ends at the border) and divides
   the summed scores by the number of windows that cover each pixel. With Mahalanobis statistics the
   decoder features' Mahalanobis score (Lee et al. 2018, on the features at 1/4 resolution) travels as
   one more channel and is upsampled and averaged the same way.
3. `finish`: each image's maps cropped to its (resized) input size and resized bilinearly to its label's
   size (mmseg's `postprocess_result`), then the prediction argmax_y and the per-pixel scores
   (higher = more known):

   - `likelihood` (L-GMM): max_y log p(z|y) (Section 2.2, after Eq. 7);
   - `msp`: max_y softmax; `maxlogit`: max_y logit (Hendrycks et al. 2022); `entropy`: the negative
     entropy of the softmax, sum_y p log p;
   - `sml`: Standardized Max Logits (Jung et al. 2021) as its authors evaluate it: (max logit - mu_c) /
     sigma_c with c the predicted class and mu_c, sigma_c the mean and standard deviation of the max
     logit over training pixels predicted as c (`SmlStatistics`), then their post-processing at the
     label's size (`sml_post_processing`: iterative boundary suppression, dilated smoothing);
   - `mahalanobis`: -min_c (f - mu_c)^T Sigma^-1 (f - mu_c) on the decoder features.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from lgmm_jax.data.augment import normalize
from lgmm_jax.deploy.forward import gather
from lgmm_jax.models.resize import corner_aligned_resize, resize_bilinear
from lgmm_jax.ood import scores
from lgmm_jax.runtime.sharding import batch_sharding, replicated

# Every pixel score `score_maps` computes (each head offers some of them: `Head.pixel_scores`).
PIXEL_SCORES = ("likelihood", "maxlogit", "msp", "entropy", "sml", "mahalanobis")


@dataclasses.dataclass(frozen=True)
class DenseSettings:
    """How a segmenter is run on evaluation images (the `segmentation` keys of a config).

    inference: "whole" or "slide"; crop, stride: slide's window and step (height, width);
    eval_scale: () or mmseg's test Resize scale (long, short), keep_ratio; size_divisor: 0 (mmseg's test)
    batches images of one size, unpadded; > 0 pads batches of any sizes to a multiple of it; normalization: (mean, std) of pixels in [0, 1]; align_corners: the
    decode head's resize convention, which every resize of class scores follows (mmseg's `resize`).
    """

    inference: str = "whole"
    crop: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    eval_scale: tuple[int, ...] = ()
    size_divisor: int = 0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    align_corners: bool = False


def decoder_align_corners(config) -> bool:
    """The decode head's resize convention, `model.decoder.align_corners` (mmseg's default False; True in
    its 769x769 Cityscapes recipes), which the losses and inference follow as mmseg's do."""
    return bool(config.model.get("decoder", {}).get("align_corners", False))


def dense_settings(segmentation_config, mean, std, align_corners: bool = False) -> DenseSettings:
    """`DenseSettings` from a config's `segmentation` section, the normalisation statistics and the decode
    head's `align_corners`."""
    return DenseSettings(
        inference=str(segmentation_config.inference),
        crop=tuple(int(v) for v in segmentation_config.slide_crop),
        stride=tuple(int(v) for v in segmentation_config.slide_stride),
        eval_scale=tuple(int(v) for v in segmentation_config.eval_scale),
        size_divisor=int(segmentation_config.size_divisor),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        align_corners=bool(align_corners),
    )


class SmlStatistics(NamedTuple):
    """Per-class mean and standard deviation [C] of the max logit over training pixels predicted as c."""

    mean: jax.Array
    std: jax.Array


class Fitted(NamedTuple):
    """What the fitted scores need: `sml` and the Mahalanobis (class means, precision), or None."""

    sml: SmlStatistics | None = None
    mahalanobis: tuple[jax.Array, jax.Array] | None = None


# ----------------------------------------------------------------------------------------------------------
# Images in
# ----------------------------------------------------------------------------------------------------------


def rescaled_size(height: int, width: int, scale) -> tuple[int, int]:
    """mmcv's `rescale_size` with keep_ratio: the largest factor that fits the long side within
    max(scale) and the short side within min(scale); sizes rounded as mmcv (int(x + 0.5))."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def eval_image(image: np.ndarray, settings: DenseSettings) -> np.ndarray:
    """uint8 [H, W, 3] -> the network's float32 input (resized when `eval_scale` is set, normalised)."""
    if settings.eval_scale:
        height, width = rescaled_size(*image.shape[:2], settings.eval_scale)
        if (height, width) != image.shape[:2]:
            image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    return normalize(image, settings.mean, settings.std)


def padded_images(images: list[np.ndarray], batch_size: int, size_divisor: int) -> np.ndarray:
    """float32 [batch_size, H, W, 3]: the images padded with zeros at the bottom and right to one shape
    (the largest, rounded up to a multiple of `size_divisor` when it is > 0), zero images after the last
    one."""
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    if size_divisor > 0:
        height, width = (size_divisor * math.ceil(side / size_divisor) for side in (height, width))
    batch = np.zeros((batch_size, height, width, images[0].shape[-1]), np.float32)
    for row, image in enumerate(images):
        batch[row, : image.shape[0], : image.shape[1]] = image
    return batch


# ----------------------------------------------------------------------------------------------------------
# The network, whole or slide
# ----------------------------------------------------------------------------------------------------------


def window_spans(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """mmseg's slide windows along one axis: [start, end) of each, the last one ending at the border
    (windows of a side shorter than `crop` are the whole side)."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    spans = []
    for index in range(count):
        end = min(index * stride + crop, size)
        spans.append((max(end - crop, 0), end))
    return spans


def network_maps(model, variables, images, mahalanobis) -> jax.Array:
    """[B, h, w, C (+1)] at 1/4 resolution: the class scores, and the Mahalanobis score of the decoder
    features as a last channel when `mahalanobis` (class means, precision) is given (softmax only). An
    L-GMM segmenter with `class_norm` (GMMSeg's head) gives the class logits the prediction takes and
    max_y log p(z|y), the likelihood score, as the last channel."""
    class_scores = model.apply(variables, images, train=False).astype(jnp.float32)
    if getattr(model, "class_norm", False):
        logits = model.apply(variables, class_scores, method="class_logits")
        return jnp.concatenate([logits, jnp.max(class_scores, axis=-1, keepdims=True)], axis=-1)
    if mahalanobis is None:
        return class_scores
    features = model.apply(variables, images, False, method=lambda module, x, train: module.decoder(x, train))
    flat = features.astype(jnp.float32).reshape(-1, features.shape[-1])
    distance = scores.mahalanobis(flat, *mahalanobis).reshape(*features.shape[:3], 1)
    return jnp.concatenate([class_scores, distance], axis=-1)


def dense_maps(maps_fn, images: jax.Array, settings: DenseSettings) -> jax.Array:
    """`maps_fn`'s maps brought to the images' size: [B, H, W, K], by whole or slide inference."""
    size = images.shape[1:3]
    if settings.inference == "whole":
        return resize_bilinear(maps_fn(images), size, settings.align_corners)
    total, count = None, np.zeros(size, np.float32)
    for top, bottom in window_spans(size[0], settings.crop[0], settings.stride[0]):
        for left, right in window_spans(size[1], settings.crop[1], settings.stride[1]):
            window = resize_bilinear(maps_fn(images[:, top:bottom, left:right]), (bottom - top, right - left),
                                     settings.align_corners)
            if total is None:
                total = jnp.zeros((*images.shape[:3], window.shape[-1]), jnp.float32)
            total = total.at[:, top:bottom, left:right].add(window)
            count[top:bottom, left:right] += 1
    return total / count[None, :, :, None]


def make_dense_forward(model, mesh, settings: DenseSettings):
    """Jitted (variables, mahalanobis or None, images [B, H, W, 3] sharded over `data`) -> dense maps."""

    def forward(variables, mahalanobis, images):
        maps_fn = functools.partial(network_maps, model, variables, mahalanobis=mahalanobis)
        return dense_maps(maps_fn, images, settings)

    return jax.jit(forward, in_shardings=(replicated(mesh), replicated(mesh), batch_sharding(mesh)))


# ----------------------------------------------------------------------------------------------------------
# Maps out: prediction and scores at the label's size
# ----------------------------------------------------------------------------------------------------------


def negative_entropy(logits: jax.Array) -> jax.Array:
    """sum_y p log p of softmax(logits) over the last axis (higher = more confident = more known)."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def standardized_max_logit(logits: jax.Array, statistics: SmlStatistics) -> jax.Array:
    """(max_y logit - mu_c) / sigma_c, c = argmax_y logit (Jung et al. 2021, Eq. 2)."""
    predicted = jnp.argmax(logits, axis=-1)
    return (jnp.max(logits, axis=-1) - statistics.mean[predicted]) / statistics.std[predicted]


def score_maps(maps: jax.Array, num_classes: int, chosen: tuple[str, ...], fitted: Fitted) -> dict:
    """name -> [..., H, W] float32 score of every pixel, from maps [..., H, W, C (+1)]."""
    class_scores = maps[..., :num_classes]
    table = {}
    for name in chosen:
        if name == "likelihood" and maps.shape[-1] > num_classes:  # computed by the network (`network_maps`)
            table[name] = maps[..., num_classes]
        elif name in ("likelihood", "maxlogit"):
            table[name] = jnp.max(class_scores, axis=-1)
        elif name == "msp":
            table[name] = jnp.max(jax.nn.softmax(class_scores, axis=-1), axis=-1)
        elif name == "entropy":
            table[name] = negative_entropy(class_scores)
        elif name == "sml":
            table[name] = standardized_max_logit(class_scores, fitted.sml)
        elif name == "mahalanobis":
            table[name] = maps[..., num_classes]
        else:
            raise ValueError(f"unknown pixel score {name!r}: use one of {PIXEL_SCORES}")
    return table


# SML's post-processing, as its authors' `BoundarySuppressionWithSmoothing` runs it (Jung et al. 2021,
# github.com/shjung13/Standardized-max-logits, network/deepv3.py, their defaults): boundaries of the
# prediction widened to 4 pixels, replaced from the outside in over 4 iterations, then a 7x7 Gaussian
# (sigma 1) with dilation 6.
SML_BOUNDARY_WIDTH = 4
SML_BOUNDARY_ITERATIONS = 4
SML_SMOOTHING_SIZE = 7
SML_SMOOTHING_SIGMA = 1.0
SML_SMOOTHING_DILATION = 6


def _neighbourhood(x: jax.Array, reduce, fill: float, cross: bool) -> jax.Array:
    """reduce (jnp.maximum / jnp.minimum) of x [H, W] over each pixel's 3x3 (or cross-shaped)
    neighbourhood inside the map (morphology with geodesic borders: outside pixels are never taken)."""
    padded = jnp.pad(x, 1, constant_values=fill)
    height, width = x.shape
    offsets = [(0, 1), (1, 0), (1, 2), (2, 1)] if cross else [(i, j) for i in range(3) for j in range(3)]
    out = x
    for i, j in offsets:
        out = reduce(out, padded[i:i + height, j:j + width])
    return out


def prediction_boundaries(prediction: jax.Array) -> jax.Array:
    """bool [H, W]: where the dilation of the predicted class map (cross-shaped 3x3) differs from its
    erosion (full 3x3), i.e. a 2-pixel band along every change of class."""
    labels = prediction.astype(jnp.float32)
    dilated = _neighbourhood(labels, jnp.maximum, -jnp.inf, cross=True)
    eroded = _neighbourhood(labels, jnp.minimum, jnp.inf, cross=False)
    return dilated != eroded


def sml_post_processing(score: jax.Array, prediction: jax.Array) -> jax.Array:
    """SML's boundary suppression and dilated smoothing of one image's score map [H, W] (see above).

    Iteration i widens the boundaries by r = 3, 2, 1, 0 pixels (L1 distance) and sets each pixel inside
    them to the mean of the pixels outside them in its 3x3 neighbourhood (edge-replicated; unchanged when
    there is none), so boundary scores are filled in from their surroundings. Then every score is the
    dilated Gaussian average of the edge-replicated map."""
    boundaries = prediction_boundaries(prediction).astype(jnp.float32)
    step = SML_BOUNDARY_WIDTH // SML_BOUNDARY_ITERATIONS
    out = score.astype(jnp.float32)
    box = lambda x: jax.lax.reduce_window(jnp.pad(x, 1, mode="edge"), 0.0, jax.lax.add, (3, 3), (1, 1), "VALID")  # noqa: E731
    for iteration in range(SML_BOUNDARY_ITERATIONS):
        last = iteration == SML_BOUNDARY_ITERATIONS - 1
        radius = 0 if last else SML_BOUNDARY_WIDTH - step * iteration - 1
        expanded = boundaries
        for _ in range(radius):  # dilation by the L1 ball of this radius
            expanded = _neighbourhood(expanded, jnp.maximum, -jnp.inf, cross=True)
        outside = (expanded == 0).astype(jnp.float32)
        count = box(outside)
        average = jnp.where(count == 0, out, box(out * outside) / jnp.maximum(count, 1.0))
        out = jnp.where(outside == 0, average, out)
    half = SML_SMOOTHING_SIZE // 2
    grid = np.arange(SML_SMOOTHING_SIZE) - half
    gaussian = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * SML_SMOOTHING_SIGMA**2))
    kernel = jnp.asarray(gaussian / gaussian.sum(), jnp.float32)[:, :, None, None]
    padded = jnp.pad(out, SML_SMOOTHING_DILATION * half, mode="edge")[None, :, :, None]
    smoothed = jax.lax.conv_general_dilated(
        padded, kernel, (1, 1), "VALID", rhs_dilation=(SML_SMOOTHING_DILATION,) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    return smoothed[0, :, :, 0]


@functools.partial(jax.jit, static_argnames=("label_size", "num_classes", "chosen", "align_corners"))
def finish(maps: jax.Array, fitted: Fitted, *, label_size: tuple[int, int], num_classes: int,
           chosen: tuple[str, ...], align_corners: bool = False) -> dict:
    """One image's maps [h, w, K] (cropped to its input size) -> `prediction` int32 [H, W] and each score
    [H, W] at the label's size (maps resized bilinearly first, mmseg's `resize` to `ori_shape`)."""
    if maps.shape[:2] != tuple(label_size) and align_corners:
        maps = corner_aligned_resize(maps[None], label_size)[0]
    elif maps.shape[:2] != tuple(label_size):
        maps = jax.image.resize(maps, (*label_size, maps.shape[-1]), method="linear", antialias=False)
    outputs = score_maps(maps, num_classes, chosen, fitted)
    outputs["prediction"] = jnp.argmax(maps[..., :num_classes], axis=-1).astype(jnp.int32)
    if "sml" in outputs:
        outputs["sml"] = sml_post_processing(outputs["sml"], outputs["prediction"])
    return outputs


def sharded_batch(inputs: list[np.ndarray], batch_size: int, settings: DenseSettings, mesh) -> jax.Array:
    """The global batch of network inputs (`padded_images`), sharded over `data`: every process holds all
    `inputs` and contributes its contiguous block of rows."""
    batch = padded_images(inputs, batch_size, settings.size_divisor)
    rows = batch_size // jax.process_count()
    local = batch[jax.process_index() * rows:(jax.process_index() + 1) * rows]
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local)


def same_size_groups(inputs: list[np.ndarray]) -> list[list[int]]:
    """The positions of `inputs`, grouped by image shape (groups in order of first appearance)."""
    groups: dict[tuple, list[int]] = {}
    for position, image in enumerate(inputs):
        groups.setdefault(image.shape, []).append(position)
    return list(groups.values())


def predict_dense(forward, variables, mesh, fitted: Fitted, images: list[np.ndarray], label_sizes,
                  batch_size: int, settings: DenseSettings, num_classes: int, chosen: tuple[str, ...]):
    """Per image of one global batch (every process holds all `images`, uint8 [H, W, 3]): a dict of
    numpy `prediction` and scores at its `label_sizes` entry. Process p runs its block of each forward
    pass: one per image size (`same_size_groups`), or one padded pass when `settings.size_divisor` > 0."""
    inputs = [eval_image(image, settings) for image in images]
    groups = [list(range(len(inputs)))] if settings.size_divisor > 0 else same_size_groups(inputs)
    results: list[dict | None] = [None] * len(inputs)
    for group in groups:
        batch = sharded_batch([inputs[position] for position in group], batch_size, settings, mesh)
        maps = gather(forward(variables, fitted.mahalanobis, batch))
        for row, position in enumerate(group):
            cropped = maps[row, : inputs[position].shape[0], : inputs[position].shape[1]]
            out = finish(cropped, fitted, label_size=tuple(int(v) for v in label_sizes[position]),
                         num_classes=num_classes, chosen=tuple(chosen), align_corners=settings.align_corners)
            results[position] = {name: np.asarray(value) for name, value in out.items()}
    return results
