"""Segmentation: an example is a labelled pixel of an image (`lgmm_jax.data.segmentation`: the testbed
`scenes`, ADE20K, Cityscapes, a user's labelled folder `segfolder=PATH`; unknown sets are anomaly-map
sets such as 'scenes:test_near').

Training crops come from mmseg's joint augmentation (`seg_augment.SegmentationTrainExample`) with
ImageNet's normalisation, as every mmseg recipe. The L-GMM objective is `objective.pixel_lgmm_objective`
(a pixel is an example, the void label a mask), the softmax loss mmseg's `losses.pixel_cross_entropy`,
and a segmenter's auxiliary head (DeepLabv3+'s FCN on stage 3) adds its weighted cross-entropy, which
trains the encoder only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from lgmm_jax.method import losses
from lgmm_jax.tasks import report as lgmm_report
from lgmm_jax.data import pipeline
from lgmm_jax.data.seg_augment import NORMALIZATION, SegmentationTrainExample
from lgmm_jax.data.segfolder import SegFolderOptions
from lgmm_jax.data.settings import threads_of, workers_for
from lgmm_jax.models.configured import is_segmenter
from lgmm_jax.models.resize import resize_labels_nearest
from lgmm_jax.models.segmenter import auxiliary_logits
from lgmm_jax.method.objective import PixelConfig, pixel_lgmm_objective
from lgmm_jax.heads.base import StepLosses
from lgmm_jax.tasks.base import Task
from lgmm_jax.tasks.segmentation import data, evaluation, export, figures, report
from lgmm_jax.tasks.segmentation.forward import decoder_align_corners

INFERENCE_MODES = ("whole", "slide")


def pixel_config(config: ml_collections.ConfigDict) -> PixelConfig:
    """What makes a pixel an example of the objective, from `config.segmentation`."""
    seg = config.segmentation
    return PixelConfig(
        void_label=int(seg.void_label),
        pixels_per_class=int(seg.pixels_per_class),
        remember_misclassified=bool(seg.remember_misclassified),
        avg_non_ignore=bool(seg.get("avg_non_ignore", False)),
        align_corners=decoder_align_corners(config),
    )


def check_pair(name: str, value, minimum: int = 1) -> None:
    """`value` must be two integers >= minimum (a (height, width) or (long, short) pair)."""
    if len(value) != 2 or any(int(v) != v or v < minimum for v in value):
        raise ValueError(f"{name}={tuple(value)!r} must be two integers >= {minimum}")


def check_segmentation_keys(config: ml_collections.ConfigDict) -> None:
    """The segmentation keys a run reads (see configs/default.py), or ValueError naming the key."""
    seg = config.segmentation
    for name in ("scale", "crop_size", "slide_crop", "slide_stride"):
        check_pair(f"segmentation.{name}", seg[name])
    if len(seg.eval_scale):
        check_pair("segmentation.eval_scale", seg.eval_scale)
    if int(seg.get("size_divisor", 0)) < 0:
        raise ValueError(f"segmentation.size_divisor={seg.size_divisor} must be 0 (unpadded, as mmseg tests) or "
                         "a positive multiple to pad evaluation batches to")
    if seg.inference not in INFERENCE_MODES:
        raise ValueError(f"segmentation.inference={seg.inference!r} is not one of {INFERENCE_MODES}")
    if not 0 <= seg.void_label <= 255:
        raise ValueError(f"segmentation.void_label={seg.void_label} must be a uint8 value (0..255)")
    if config.protocol:
        raise ValueError(f"protocol={config.protocol!r} is a classification protocol: segmentation names its "
                         "unknown sets in ood_datasets, e.g. ('scenes:test_near',); set --config.protocol=''")


def batch_objective(pixels: PixelConfig, z, batch, head_params, log_weights, memory, objective, key):
    return pixel_lgmm_objective(z, batch["label"], head_params, log_weights, memory, objective, key, pixels)


def auxiliary_loss(pixels: PixelConfig, weight: float, updates, batch) -> jax.Array:
    """`weight` x mmseg's cross-entropy of the auxiliary head's logits (0 without an auxiliary head)."""
    logits = auxiliary_logits(updates)
    if logits is None or weight == 0:
        return jnp.zeros((), jnp.float32)
    return weight * losses.pixel_cross_entropy(logits, batch["label"], pixels.void_label, pixels.avg_non_ignore,
                                               pixels.align_corners)


def cross_entropy(pixels: PixelConfig, weight: float, logits, batch, targets, updates) -> jax.Array:
    """mmseg's per-pixel cross-entropy of the decode head, plus the auxiliary head's."""
    loss = losses.pixel_cross_entropy(logits, batch["label"], pixels.void_label, pixels.avg_non_ignore,
                                      pixels.align_corners)
    return loss + auxiliary_loss(pixels, weight, updates, batch)


def pixel_accuracy(pixels: PixelConfig, class_scores, batch) -> jax.Array:
    """Share of the labelled pixels whose argmax class is their label, at the scores' resolution (labels
    brought there by nearest resizing, as the objective's memory bank sees them)."""
    labels = resize_labels_nearest(batch["label"], class_scores.shape[1:3])
    correct = (jnp.argmax(class_scores, -1) == labels).astype(jnp.float32)
    return losses.masked_mean(correct, labels != pixels.void_label)


class SegmentationTask(Task):
    name = "segmentation"
    methods = ("library", "paper", "gmmseg")

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        if not is_segmenter(config.model.encoder):
            raise ValueError(f"task='segmentation' needs a segmenter (models.SEGMENTER_NAMES) as model.encoder, "
                             f"got {config.model.encoder!r}")
        check_segmentation_keys(config)
        SegFolderOptions.from_mapping(data.segfolder_options(config))  # a bad option fails here, before any data

    def data_source(self, config, ref_or_name, split=None):
        return data.source(config, ref_or_name, split)

    def train_stream(self, config, protocol, source, preset: str):
        """Training crops (image float32 [b, h, w, 3], label int32 [b, h, w], void = 255) of this process,
        from mmseg's joint augmentation; the shuffling, batching and resumable state of
        `pipeline.train_iterator`."""
        seg = config.segmentation
        example = SegmentationTrainExample(
            source,
            scale=tuple(int(v) for v in seg.scale),
            crop_size=tuple(int(v) for v in seg.crop_size),
            normalization=NORMALIZATION,
            ratio_range=tuple(float(v) for v in seg.ratio_range),
            cat_max_ratio=float(seg.cat_max_ratio),
        )
        return pipeline.train_iterator(
            source,
            batch_size=config.batch_size,
            seed=config.seed,
            preprocess="none",
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            example=example,
            workers=workers_for(config, source),
            threads=threads_of(config),
        )

    def model_input_shape(self, config, train_source, preset: str) -> tuple:
        """The training crop."""
        return (*(int(v) for v in config.segmentation.crop_size), 3)

    def step_losses(self, config, num_classes: int) -> StepLosses:
        pixels = pixel_config(config)
        weight = float(config.segmentation.auxiliary_weight)
        return StepLosses(
            lgmm_objective=functools.partial(batch_objective, pixels),
            auxiliary_loss=functools.partial(auxiliary_loss, pixels, weight),
            softmax_loss=functools.partial(cross_entropy, pixels, weight),
            accuracy=functools.partial(pixel_accuracy, pixels),
            pixels=pixels,
        )

    def own_split_name(self, ref) -> str:
        """The split without its 'test_' prefix: the testbed's 'scenes:test_near' is 'near'."""
        return ref.split.removeprefix("test_")

    def evaluate(self, config, model, variables, protocol, mesh):
        return evaluation.evaluate(config, model, variables, protocol, mesh, self.unknown_set_names(protocol))

    def write_outputs(self, folder: str, results: dict, plots: evaluation.SegmentationPlots,
                      with_figures: bool) -> None:
        """report.md, the arrays of Figure 3's pictures and, `with_figures`, the pictures and pixel ROC
        curves of each anomaly set (`figures`)."""
        lgmm_report.write_report(folder, report.render(results, with_figures))
        figures.write_picture_arrays(folder, plots)
        if with_figures:
            figures.write_figures(folder, plots)

    def summary_line(self, results: dict) -> str:
        return report.summary_line(results)

    def export_contents(self, trained, origin, score_name, mesh, alpha, calibration):
        return export.export_contents(trained, origin, score_name, mesh, alpha, calibration)


TASK = SegmentationTask()
