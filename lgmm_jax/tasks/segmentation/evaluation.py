"""Closed-set and open-set evaluation of a segmenter (paper Tables 5 and 6, Figure 3), what
`lgmm_jax.evaluate` runs for a segmentation run (through the task, `task.SegmentationTask.evaluate`).

- Closed set, on the known test split (`test_split`): mIoU, aAcc and per-class IoU as mmseg computes
  them (intersection and union summed over the whole set, void excluded, mean over classes with a
  non-empty union; `ood.segmentation_metrics.ConfusionAccumulator`), from predictions at each label's
  original size (`forward`: whole or slide inference, scores resized bilinearly before the argmax).
- Open set, on each unknown set's anomaly maps (0 known, 1 anomaly, 255 void): pixel AUROC, AP and FPR95
  with the anomaly as the positive class, all pixels of the set pooled, void dropped (the Fishyscapes
  benchmark; `ood.segmentation_metrics.AnomalyAccumulator`), for every score of the head
  (`Head.pixel_scores`).
- Statistics that scores need are fitted on training images (evaluation transform, the first
  `segmentation.fit_images`): SML's per-class mean / std of the max logit over labelled pixels predicted
  as the class, and Mahalanobis' class means and tied covariance of the decoder features of labelled
  pixels at the decoder's resolution (labels brought there by nearest resizing), streamed
  (`ood.scores.accumulate_mahalanobis`). Rejection thresholds keep `eval.threshold_tpr` of the
  validation split's labelled pixels (at most `THRESHOLD_PIXELS_PER_IMAGE` per image, evenly strided).
- An image that cannot be decoded (`images.UnreadableImageError`) is left out of every number
  (`readable_examples`); ``num_images`` counts the rest, and ``unreadable_files`` names them per set whose
  source keeps a log (a `segfolder` source does).

Returns results.json's dict `{"closed_set": {"miou", "aacc", "iou": [...], ...}, "open_set": {set: {score:
{"auroc", "ap", "fpr95", ...}}}, "thresholds": {score: tau}, ...}` and what the pictures need.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lgmm_jax import heads
from lgmm_jax.deploy.forward import gather
from lgmm_jax.ood import metrics, scores
from lgmm_jax.ood.segmentation_metrics import AnomalyAccumulator, ConfusionAccumulator
from lgmm_jax.runtime.sharding import batch_sharding, replicated
from lgmm_jax.data import images
from lgmm_jax.data.images import UnreadableImageError
from lgmm_jax.data.seg_augment import NORMALIZATION as SEGMENTATION_NORMALIZATION
from lgmm_jax.tasks.segmentation import forward as pixel_forward
from lgmm_jax.tasks.segmentation.forward import Fitted, SmlStatistics
from lgmm_jax.runtime.sharding import eval_batch_size
from lgmm_jax.tasks.segmentation import data

THRESHOLD_PIXELS_PER_IMAGE = 1 << 16
ROC_POINTS = 201


def chosen_scores(config) -> tuple[str, ...]:
    """The configured scores (`eval.scores`), or every pixel score of the head."""
    every = heads.get(config.model).pixel_scores
    chosen = tuple(config.eval.scores) or every
    unknown = [name for name in chosen if name not in every]
    if unknown:
        raise ValueError(f"eval.scores {unknown} are not pixel scores of a {config.model.head} segmenter: use {every}")
    return chosen


def settings_of(config) -> pixel_forward.DenseSettings:
    normalization = SEGMENTATION_NORMALIZATION
    return pixel_forward.dense_settings(config.segmentation, normalization.mean, normalization.std,
                                        pixel_forward.decoder_align_corners(config))


def global_batches(num_images: int, batch_size: int, limit: int = 0):
    """Lists of source indices, `batch_size` at a time (the last list shorter), the first `limit` images
    (0 = all)."""
    count = min(num_images, limit) if limit else num_images
    for start in range(0, count, batch_size):
        yield list(range(start, min(start + batch_size, count)))


def readable_examples(source, indices) -> list[dict]:
    """The examples at ``indices``, those whose image cannot be decoded left out (a source that reads files
    records them in its ``unreadable`` log, `images.UnreadableFiles`)."""
    examples = []
    for index in indices:
        try:
            examples.append(source[index])
        except UnreadableImageError:
            continue
    return examples


def excluded_files(sources_by_set: dict) -> dict[str, dict]:
    """results.json's ``unreadable_files``: per set whose source keeps an ``unreadable`` log, how many of
    its files could not be read (left out of every number) and which, with why."""
    return {name: {"count": len(found), "files": found}
            for name, source in sources_by_set.items() if hasattr(source, "unreadable")
            for found in [images.unreadable_of(source)]}


@dataclasses.dataclass
class Predictor:
    """A segmenter's variables with everything `pixel_forward.predict_dense` needs besides the images."""

    forward: Any
    variables: dict
    mesh: Any
    fitted: Fitted
    batch_size: int
    settings: pixel_forward.DenseSettings
    num_classes: int

    def examples_and_outputs(self, source, target: str, chosen, limit: int = 0):
        """(example, outputs) of each image of `source` in order; the outputs (`prediction`, scores)
        are at the size of the example's `target` map ('label' or 'anomaly')."""
        for indices in global_batches(len(source), self.batch_size, limit):
            examples = readable_examples(source, indices)
            if not examples:
                continue
            outputs = pixel_forward.predict_dense(
                self.forward, self.variables, self.mesh, self.fitted, [np.asarray(e["image"]) for e in examples],
                [np.shape(e[target]) for e in examples], self.batch_size, self.settings, self.num_classes, chosen,
            )
            yield from zip(examples, outputs)


def fit_statistics(config, model, predictor: Predictor, train_source, chosen) -> Fitted:
    """SML's and Mahalanobis' statistics on the first `segmentation.fit_images` training images."""
    if not {"sml", "mahalanobis"} & set(chosen):
        return Fitted()
    void = int(config.segmentation.void_label)
    limit = int(config.segmentation.fit_images)
    num_classes = predictor.num_classes
    count, total, squares = (np.zeros(num_classes, np.float64) for _ in range(3))
    if "sml" in chosen:
        for example, out in predictor.examples_and_outputs(train_source, "label", ("maxlogit",), limit):
            labelled = np.asarray(example["label"]) != void
            predicted, value = out["prediction"][labelled], out["maxlogit"][labelled].astype(np.float64)
            count += np.bincount(predicted, minlength=num_classes)
            total += np.bincount(predicted, value, minlength=num_classes)
            squares += np.bincount(predicted, value**2, minlength=num_classes)
    sml = None
    if "sml" in chosen:
        mean = total / np.maximum(count, 1)
        std = np.sqrt(np.maximum(squares / np.maximum(count, 1) - mean**2, 0.0))
        std = np.where(count > 1, np.maximum(std, 1e-6), 1.0)  # classes never predicted: unscaled
        sml = SmlStatistics(jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))
    mahalanobis = fit_mahalanobis(model, predictor, train_source, void, limit) if "mahalanobis" in chosen else None
    return Fitted(sml=sml, mahalanobis=mahalanobis)


def make_predictor(config, model, variables, mesh, train_source, chosen) -> Predictor:
    """The Predictor of a segmenter's variables, with the statistics its `chosen` scores need (SML,
    Mahalanobis) fitted on `train_source`."""
    settings = settings_of(config)
    predictor = Predictor(
        forward=pixel_forward.make_dense_forward(model, mesh, settings),
        variables=variables,
        mesh=mesh,
        fitted=Fitted(),
        batch_size=eval_batch_size(config),
        settings=settings,
        num_classes=train_source.num_classes,
    )
    predictor.fitted = fit_statistics(config, model, predictor, train_source, chosen)
    return predictor


def nearest_labels(label: np.ndarray, size) -> np.ndarray:
    """PyTorch's nearest resizing of a label map (`models.resize.resize_labels_nearest`), in numpy."""
    rows = (np.arange(size[0]) * label.shape[0]) // size[0]
    cols = (np.arange(size[1]) * label.shape[1]) // size[1]
    return label[rows][:, cols]


def fit_mahalanobis(model, predictor: Predictor, train_source, void: int, limit: int):
    """(class means, tied precision) of the decoder features of labelled training pixels (1/4 resolution)."""
    mesh, settings = predictor.mesh, predictor.settings
    features_fn = jax.jit(
        lambda variables, images: model.apply(variables, images, False, method=lambda m, x, t: m.decoder(x, t)),
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
    )
    statistics = None
    for indices in global_batches(len(train_source), predictor.batch_size, limit):
        examples = readable_examples(train_source, indices)
        if not examples:
            continue
        inputs = [pixel_forward.eval_image(np.asarray(e["image"]), settings) for e in examples]
        batch = pixel_forward.sharded_batch(inputs, predictor.batch_size, settings, mesh)
        features = gather(features_fn(predictor.variables, batch))
        stride = batch.shape[1] / features.shape[1]
        for row, (example, image) in enumerate(zip(examples, inputs)):
            size = (int(np.ceil(image.shape[0] / stride)), int(np.ceil(image.shape[1] / stride)))
            # Labels brought to the (resized) input first, then to the feature grid, nearest each time.
            label = nearest_labels(nearest_labels(np.asarray(example["label"]), image.shape[:2]), size)
            labelled = label != void
            if labelled.any():
                statistics = scores.accumulate_mahalanobis(
                    statistics, features[row, : size[0], : size[1]][labelled], label[labelled].astype(np.int64),
                    predictor.num_classes,
                )
    if statistics is None:
        raise ValueError("no labelled training pixel to fit the Mahalanobis statistics on: check the training split")
    return scores.mahalanobis_from_statistics(statistics)


def strided_sample(values: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` of `values`, evenly strided (all of them when there are no more)."""
    step = max(1, -(-values.size // limit))
    return values[::step]


def validation_pixel_scores(config, predictor: Predictor, validation_source, chosen) -> dict[str, np.ndarray]:
    """Per score, a strided sample of at most `THRESHOLD_PIXELS_PER_IMAGE` labelled pixels' scores of
    each validation image, concatenated."""
    void = int(config.segmentation.void_label)
    kept = {name: [] for name in chosen}
    limit = int(config.segmentation.eval_images)
    for example, out in predictor.examples_and_outputs(validation_source, "label", chosen, limit):
        labelled = np.asarray(example["label"]) != void
        for name in chosen:
            kept[name].append(strided_sample(out[name][labelled], THRESHOLD_PIXELS_PER_IMAGE))
    return {name: np.concatenate(values) for name, values in kept.items()}


def thresholds(config, predictor: Predictor, validation_source, chosen) -> dict[str, float]:
    """Per score, the threshold that keeps `eval.threshold_tpr` of the sampled labelled validation pixels."""
    sampled = validation_pixel_scores(config, predictor, validation_source, chosen)
    return {name: metrics.threshold_at_tpr(values, config.eval.threshold_tpr) for name, values in sampled.items()}


def closed_set(predictor: Predictor, test_source, void: int, limit: int = 0) -> dict[str, Any]:
    """mmseg's mIoU, aAcc, per-class IoU and Acc of the test split (its first `limit` images; 0 = all)."""
    confusion = ConfusionAccumulator(predictor.num_classes, void)
    num_images = 0
    for example, out in predictor.examples_and_outputs(test_source, "label", (), limit):
        confusion.update(out["prediction"], np.asarray(example["label"]))
        num_images += 1
    return {**confusion.result(), "num_images": num_images}


def open_set(predictor: Predictor, unknown_source, chosen, num_pictures: int, limit: int = 0):
    """(metrics per score, ROC points per score, the first `num_pictures` images with their maps)."""
    accumulators = {name: AnomalyAccumulator() for name in chosen}
    pictures = []
    num_images = 0
    for example, out in predictor.examples_and_outputs(unknown_source, "anomaly", chosen, limit):
        anomaly = np.asarray(example["anomaly"])
        for name in chosen:
            accumulators[name].update(out[name], anomaly)
        if len(pictures) < num_pictures:
            pictures.append({"image": np.asarray(example["image"]), "anomaly": anomaly, **out})
        num_images += 1
    results = {name: accumulator.result() for name, accumulator in accumulators.items()}
    results["num_images"] = num_images
    roc = {name: accumulator.roc_points(ROC_POINTS) for name, accumulator in accumulators.items()}
    return results, roc, pictures


@dataclasses.dataclass
class SegmentationPlots:
    """What `figures.write_figures` draws: pixel ROC points and example pictures per set."""

    roc: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    pictures: dict[str, list[dict[str, np.ndarray]]]
    label_names: tuple[str, ...]
    head: str


def evaluate(config, model, variables, protocol, mesh, unknown_names) -> tuple[dict, SegmentationPlots]:
    """Every number of a segmentation run's results.json (see the module docstring) and its plots."""
    head = config.model.head
    chosen = chosen_scores(config)
    source = functools.partial(data.source, config)
    train_source = source(protocol.dataset, protocol.train_split)
    validation_source = source(protocol.dataset, protocol.validation_split)
    test_source = source(protocol.dataset, protocol.test_split)
    unknown_sources = [source(ref) for ref in protocol.unknown]  # every set found before any work
    predictor = make_predictor(config, model, variables, mesh, train_source, chosen)
    void = int(config.segmentation.void_label)
    limit = int(config.segmentation.eval_images)
    results: dict[str, Any] = {
        "task": "segmentation",
        "protocol": protocol.name,
        "dataset": protocol.dataset,
        "head": head,
        "encoder": config.model.encoder,
        "inference": predictor.settings.inference,
        "label_names": list(train_source.label_names),
        "closed_set": closed_set(predictor, test_source, void, limit),
        "thresholds": thresholds(config, predictor, validation_source, chosen),
        "open_set": {},
    }
    if predictor.fitted.sml is not None:
        results["sml"] = {"mean": np.asarray(predictor.fitted.sml.mean).round(4).tolist(),
                          "std": np.asarray(predictor.fitted.sml.std).round(4).tolist()}
    roc, pictures = {}, {}
    for name, unknown_source in zip(unknown_names, unknown_sources):
        results["open_set"][name], roc[name], pictures[name] = open_set(
            predictor, unknown_source, chosen, int(config.segmentation.picture_images), limit
        )
    excluded = excluded_files({"train": train_source, "validation": validation_source, "test": test_source,
                               **dict(zip(unknown_names, unknown_sources))})
    if excluded:
        results["unreadable_files"] = excluded
    plots = SegmentationPlots(roc=roc, pictures=pictures, label_names=tuple(train_source.label_names), head=head)
    return results, plots
