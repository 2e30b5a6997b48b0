"""Closed-set and open-set evaluation of a classifier (`lgmm_jax.evaluate` is its command line).

Every example of every evaluation set is seen once (padded, masked batches). Known-class test data give
top-1/top-5; each unknown set is scored against them with every score the head has (L-GMM: `likelihood`,
`marginal`, `posterior`, and the post-hoc read-outs of its encoder `knn_latent`, `knn_features`,
`rmds_features`; softmax: `msp`, `maxlogit`, `energy`, `odin`, `kl_matching`,
`mahalanobis` and OpenOOD v1.5's `knn`, `vim`, `react`, `ash`, `gen`, `rmds`, `lgmm_jax.ood.posthoc`).
Scores that need fitting (KL templates, ODIN*'s step, Mahalanobis / RMDS / ViM statistics, KNN's bank,
ReAct's clip, rejection thresholds) are fitted on the held-out validation split or the training split of
the known classes (`lgmm_jax.ood.fitting`), never on test or unknown data. `odin_ood` alone is tuned on
a held-out slice of each unknown set, as the paper's Table 3 "ODIN" column, and results.json says so.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import math
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from lgmm_jax import heads
from lgmm_jax.deploy import forward
from lgmm_jax.data import images, pipeline, settings
from lgmm_jax.data.protocols import OpenSetProtocol
from lgmm_jax.data.sources import Source
from lgmm_jax.ood import conformal, fitting, metrics, posthoc, scores
from lgmm_jax.runtime.sharding import batch_sharding, replicated
from lgmm_jax.data import protocols
from lgmm_jax.runtime.sharding import eval_batch_size
from lgmm_jax.tasks.classification import data

SCORES_FILE = "scores.npz"
ODIN_SELECTION_SIZE = 1000  # held-out images ODIN*'s step is chosen on (eval.odin_selection_size)
# Images of each unknown set that odin_ood's temperature and step are chosen on (ODIN's 1,000; at most half
# the set, eval.odin_ood_held_out); the set is scored on the rest.
ODIN_OOD_HELD_OUT = 1000


def available_scores(config) -> tuple[str, ...]:
    """The configured scores, or every score of the head (`Head.scores`)."""
    every = heads.get(config.model).scores
    chosen = tuple(config.eval.scores) or every
    unknown = [name for name in chosen if name not in every]
    if unknown:
        raise ValueError(f"eval.scores {unknown} are not scores of a {config.model.head} head: use {every}")
    return chosen


def scores_the_data_allows(config, chosen: tuple[str, ...], num_training: int) -> tuple[tuple[str, ...], dict]:
    """(`chosen` without the KNN scores when fewer than their K known training examples exist, why each was
    left out). Only the default choice (`eval.scores` empty, every score) is trimmed; a KNN score named in
    `eval.scores` on too small a training set is an error."""
    short = [name for name in chosen if name.startswith("knn") and num_training < posthoc.KNN_K]
    if short and tuple(config.eval.scores):
        raise ValueError(f"eval.scores {short} need at least K = {posthoc.KNN_K} known training images, the run "
                         f"has {num_training}: leave them out of eval.scores")
    reason = f"needs at least K = {posthoc.KNN_K} known training images, the run has {num_training}"
    return tuple(name for name in chosen if name not in short), {name: reason for name in short}


def make_odin(model, mesh, temperature: float, epsilon):
    """Jitted ODIN scores of a sharded batch (inference-mode BatchNorm treats examples independently)."""

    def odin(variables, images):
        logits_fn = functools.partial(model.apply, variables, train=False)
        return scores.odin(logits_fn, images, temperature, epsilon)

    return jax.jit(odin, in_shardings=(replicated(mesh), batch_sharding(mesh)))


def every_process_images(batches, max_batches: int) -> np.ndarray:
    """The real (unmasked) images of the first `max_batches` padded global batches, the same array on
    every host, so that choices fitted on them (ODIN*'s step) agree across processes. Bounded: the pool
    is held as float32 images."""
    parts = list(itertools.islice(batches, max_batches))
    images = np.concatenate([b["image"] for b in parts])
    mask = np.concatenate([b["mask"] for b in parts])
    if jax.process_count() > 1:
        images, mask = (np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in (images, mask))
    return images[mask]


def first_images(config, batches, limit: int) -> np.ndarray:
    """The first `limit` real images of an evaluation stream, the same on every host (`every_process_images`)."""
    max_batches = max(math.ceil(limit / eval_batch_size(config)), 1)
    return every_process_images(batches, max_batches)[:limit]


def odin_selection_images(config, stream, validation_source, known) -> np.ndarray:
    """At most `eval.odin_selection_size` held-out known-class images for ODIN*'s choice of step."""
    return first_images(config, stream(validation_source, known),
                        int(config.eval.get("odin_selection_size", ODIN_SELECTION_SIZE)))


def odin_ood_held_out(config, num_unknown: int) -> int:
    """How many of an unknown set's first images `odin_ood` is tuned on: `eval.odin_ood_held_out`, at most
    half of the set."""
    return min(int(config.eval.get("odin_ood_held_out", ODIN_OOD_HELD_OUT)), num_unknown // 2)


@dataclasses.dataclass(frozen=True)
class OdinOnOod:
    """`odin_ood` on one unknown set: the known test split's and the set's scores after its held-out
    images, and what was chosen (results.json's `tuned_on_ood`)."""

    known: np.ndarray
    unknown: np.ndarray
    record: dict[str, Any]


def odin_tuned_on_unknown(config, model, variables, mesh, known_selection, pixel_std, known_batches,
                          unknown_batches, num_unknown: int) -> OdinOnOod:
    """The paper's Table 3 "ODIN": temperature and step chosen on the first images of this unknown set (and
    held-out known images, `posthoc.select_odin_on_ood`), scored on the known test split and on the rest of
    the set. `known_batches` / `unknown_batches`: () -> a fresh evaluation stream; `num_unknown`: the set's
    size."""
    only_odin = lambda fn: (lambda v, images: {"odin": fn(v, images)})  # noqa: E731
    held_out = odin_ood_held_out(config, num_unknown)
    if held_out < 1:
        raise ValueError(f"odin_ood needs at least 2 unknown images and eval.odin_ood_held_out >= 1; got "
                         f"{num_unknown} images: leave odin_ood out of eval.scores")
    choice = posthoc.select_odin_on_ood(
        functools.partial(model.apply, variables, train=False), known_selection,
        first_images(config, unknown_batches(), held_out), input_std=pixel_std)
    odin = make_odin(model, mesh, choice.temperature, scores.odin_step(choice.epsilon, pixel_std))
    known = forward.collect(known_batches(), mesh, variables, only_odin(odin))["odin"]
    unknown = forward.collect(unknown_batches(), mesh, variables, only_odin(odin))["odin"][held_out:]
    record = {"temperature": choice.temperature, "epsilon": choice.epsilon, "held_out": held_out,
              "scored": int(len(unknown))}
    return OdinOnOod(np.asarray(known, np.float64), np.asarray(unknown, np.float64), record)


def conformal_check(validation_scores: dict, known_scores: dict, labels: np.ndarray, alpha: float) -> dict:
    """Per score, the split-conformal threshold at `alpha` set on the validation split (what an export
    deploys, `lgmm_jax.ood.conformal`) and the share of the known test split it rejects, overall and by
    true class: the guarantee says at most alpha in expectation."""
    labels = np.asarray(labels)
    checks = {}
    for name, calibration in validation_scores.items():
        threshold = conformal.threshold(calibration, alpha)
        rejected = np.asarray(known_scores[name]) < threshold
        checks[name] = {
            "threshold": threshold,
            "rejected": float(rejected.mean()),
            "rejected_per_class": [float(rejected[labels == c].mean()) if np.any(labels == c) else None
                                   for c in range(int(labels.max()) + 1)],
        }
    return {"alpha": alpha, "scores": checks}


def check_unknown_image_shape(name: str, unknown: Source, known: Source, preset: str, resized: bool = False
                              ) -> None:
    """An unknown set must have the training images' shape (only the channels when the preset resizes or
    every image is `resized` to `data.image_size`)."""
    expected, got = tuple(known.image_shape), tuple(unknown.image_shape)
    axes = (2,) if resized or pipeline.resizes_to_network_input(preset) else (0, 1, 2)
    if any(expected[a] is not None and got[a] is not None and expected[a] != got[a] for a in axes):
        show = lambda shape: "x".join("?" if d is None else str(d) for d in shape)  # noqa: E731
        raise ValueError(
            f"unknown set {name} has {show(got)} images (H x W x C) but the model was trained on "
            f"{show(expected)}: convert the images to {show(expected)}"
        )


def evaluate(config, model, variables, protocol: OpenSetProtocol, mesh, unknown_names: list[str]
             ) -> tuple[dict[str, Any], "ScoreSets"]:
    """Every number of results.json for a classifier's variables (see the module docstring), and every
    example's score (`ScoreSets`, what the plots and scores.npz are drawn from). `unknown_names`: the
    results.json key of each of the protocol's unknown sets."""
    head, picked = config.model.head, heads.get(config.model)
    chosen = available_scores(config)
    forward_fn = forward.make_forward(model, head, mesh,
                                      lgmm_features=any(name.endswith("_features") for name in chosen))
    source = functools.partial(data.source, config)
    stream = functools.partial(data.eval_stream, config, protocol)
    train_source = source(protocol.dataset, protocol.train_split)
    known = protocol.known_classes
    chosen, left_out = scores_the_data_allows(config, chosen, pipeline.count_examples(train_source, known))
    num_classes = protocols.num_known_classes(protocol, train_source)
    # Every unknown set is found and checked before the first forward pass.
    unknown_sources = [source(ref) for ref in protocol.unknown]
    for name, unknown_source in zip(unknown_names, unknown_sources):
        check_unknown_image_shape(name, unknown_source, train_source, settings.preprocess_preset(config, protocol),
                                  resized=settings.input_image_size(config) is not None)

    def run(ref_source, classes, all_unknown=False, extra=None):
        return forward.collect(stream(ref_source, classes, all_unknown), mesh, variables, forward_fn, extra)

    fitted: dict[str, Any] = {}
    extra = {}
    validation_source = source(protocol.dataset, protocol.validation_split)
    # ODIN's steps are in [0, 1] pixel units; our inputs are standardised per channel.
    pixel_std = pipeline.get_normalization(settings.normalization_name(config, protocol.dataset), train_source).std
    if "odin" in chosen or "odin_ood" in chosen:
        known_selection = odin_selection_images(config, stream, validation_source, known)
    if "odin" in chosen:
        choice = scores.select_odin_hyperparameters(
            functools.partial(model.apply, variables, train=False), known_selection, input_std=pixel_std)
        fitted["odin"] = choice
        extra["odin"] = make_odin(model, mesh, choice.temperature, scores.odin_step(choice.epsilon, pixel_std))
    validation = run(validation_source, known, extra=extra)
    if "kl_matching" in chosen:
        fitted["kl_templates"] = scores.fit_kl_templates(validation["logits"], validation["logits"].shape[1])
    final_layer = picked.final_layer(variables["params"])
    if final_layer is not None:  # the final linear layer, which ViM, ReAct and ASH recompute logits through
        fitted["classifier"] = final_layer
    if "react" in chosen:  # OpenOOD clips at a percentile of held-out known activations
        fitted["react"] = posthoc.fit_react(validation["features"])
    if any(name in fitting.TRAINING_FITTED for name in chosen):
        fitted.update(fitting.fit_on_training_outputs(
            forward.iterate_outputs(stream(train_source, known), mesh, variables, forward_fn), chosen,
            num_classes, fitted.get("classifier")))

    test_source = source(protocol.dataset, protocol.test_split)
    known_test = run(test_source, known, extra=extra)
    temperature = forward.posterior_temperature_of(config)
    shared = tuple(name for name in chosen if name not in posthoc.OOD_TUNED_SCORES)  # one table for every set
    known_scores = forward.score_table(known_test, fitted, shared, temperature)
    validation_scores = forward.score_table(validation, fitted, shared, temperature)
    results: dict[str, Any] = {
        "protocol": protocol.name,
        "head": head,
        "encoder": config.model.encoder,
        "closed_set": {
            **metrics.topk_accuracies(forward.predictions(head, known_test), known_test["label"]),
            "num_examples": int(len(known_test["label"])),
        },
        "thresholds": {
            name: metrics.threshold_at_tpr(values, config.eval.threshold_tpr)
            for name, values in validation_scores.items()
        },
        "open_set": {},
    }
    if "odin" in fitted:
        results["odin"] = {"temperature": fitted["odin"].temperature, "epsilon": fitted["odin"].epsilon}
    results["conformal"] = conformal_check(validation_scores, known_scores, known_test["label"],
                                           float(config.eval.get("alpha", conformal.DEFAULT_ALPHA)))
    score_sets = ScoreSets(validation=validation_scores, known=known_scores, unknown={})
    for ref, name, unknown_source in zip(protocol.unknown, unknown_names, unknown_sources):
        unknown = run(unknown_source, ref.classes, all_unknown=True, extra=extra)
        unknown_scores = forward.score_table(unknown, fitted, shared, temperature)
        known_for_set = dict(known_scores)
        if "odin_ood" in chosen:
            tuned = odin_tuned_on_unknown(
                config, model, variables, mesh, known_selection, pixel_std,
                functools.partial(stream, test_source, known),
                functools.partial(stream, unknown_source, ref.classes, True), len(unknown["label"]))
            known_for_set["odin_ood"] = score_sets.known_for_set.setdefault(name, {})["odin_ood"] = tuned.known
            unknown_scores["odin_ood"] = tuned.unknown
            results.setdefault("tuned_on_ood", {}).setdefault("odin_ood", {})[name] = tuned.record
        results["open_set"][name] = {
            score: metrics.ood_metrics(known_for_set[score], unknown_scores[score]) for score in chosen
        }
        results["open_set"][name]["num_examples"] = int(len(unknown["label"]))
        score_sets.unknown[name] = unknown_scores
    results.update(picked.evaluation_extras(config, variables, known_test))
    if left_out:
        results["scores_left_out"] = left_out
    excluded = excluded_files({"validation": validation_source, "test": test_source,
                               **dict(zip(unknown_names, unknown_sources))})
    if excluded:
        results["unreadable_files"] = excluded
    return results, score_sets


def excluded_files(sources_by_set: dict[str, Source]) -> dict[str, dict]:
    """results.json's `unreadable_files`: per evaluated set whose source reads files, how many of them
    could not be read (and so were left out of every number) and which, with why."""
    return {name: {"count": len(found), "files": found}
            for name, source in sources_by_set.items() if hasattr(source, "unreadable")
            for found in [images.unreadable_of(source)]}


@dataclasses.dataclass(frozen=True)
class ScoreSets:
    """Every example's score, per score name: the validation split (what the thresholds are set on), the
    known test split and each unknown set (by its results.json name)."""

    validation: dict[str, np.ndarray]
    known: dict[str, np.ndarray]
    unknown: dict[str, dict[str, np.ndarray]]
    # Known test scores that depend on the unknown set (scores tuned on it, `odin_ood`), by set name.
    known_for_set: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

    def known_against(self, set_name: str) -> dict[str, np.ndarray]:
        """The known test split's scores that the unknown set `set_name` is compared with."""
        return {**self.known, **self.known_for_set.get(set_name, {})}

    def arrays(self) -> dict[str, np.ndarray]:
        """scores.npz's arrays: `"<set>/<score>"`, the sets being 'validation', 'test', the unknown sets and
        'test_vs_<unknown set>' (the known test scores of a score tuned on that set)."""
        tables = {"validation": self.validation, "test": self.known, **self.unknown,
                  **{f"test_vs_{name}": table for name, table in self.known_for_set.items()}}
        return {f"{set_name}/{score}": np.asarray(values) for set_name, table in tables.items()
                for score, values in table.items()}


def write_scores(folder: str, sets: ScoreSets) -> str:
    """scores.npz: every example's score (`ScoreSets.arrays`), to recompute any metric or threshold."""
    buffer = io.BytesIO()
    np.savez(buffer, **sets.arrays())
    path = epath.Path(folder) / SCORES_FILE
    path.write_bytes(buffer.getvalue())
    return str(path)
