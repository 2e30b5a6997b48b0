"""Closed-set and open-set evaluation of a trained model (library and CLI).

    python -m lgmm_jax.evaluate --workdir=DIR      # the latest checkpoint of a training run
    python -m lgmm_jax.evaluate --model=EXPORTED   # an exported model directory

Every example of every evaluation set is seen once (padded, masked batches). Known-class test data give
top-1/top-5; each unknown set is scored against them with every score the head has (L-GMM: `likelihood`,
`marginal`; softmax: `msp`, `maxlogit`, `energy`, `odin`, `kl_matching`, `mahalanobis`). Scores that need
fitting (KL templates, ODIN*'s step, Mahalanobis statistics, rejection thresholds) are fitted on the
held-out validation split or the training split of the known classes, never on test or unknown data.
Writes results.json, report.md and PNG plots into the output folder.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils

from lgmm_jax import experiment, losses, report
from lgmm_jax.data import pipeline
from lgmm_jax.data.protocols import DataRef, OpenSetProtocol
from lgmm_jax.mixture import labelled_log_prob
from lgmm_jax.models.gmm import head_gaussians
from lgmm_jax.models.lgmm import LGMMModel
from lgmm_jax.ood import metrics, scores
from lgmm_jax.sharding import batch_sharding, global_batch, replicated

RESULTS_FILE = "results.json"


def model_variables(state) -> dict:
    """The variables `model.apply` needs, from a TrainState or an exported model's arrays."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if state.mixture:
        variables["mixture"] = state.mixture
    return variables


def available_scores(config) -> tuple[str, ...]:
    """The configured scores, or every score of the head."""
    every = scores.LGMM_SCORES if config.model.head == "lgmm" else scores.SOFTMAX_SCORES
    chosen = tuple(config.eval.scores) or every
    unknown = [name for name in chosen if name not in every]
    if unknown:
        raise ValueError(f"eval.scores {unknown} are not scores of a {config.model.head} head: use {every}")
    return chosen


def make_forward(model, head: str, mesh):
    """Jitted inference on a sharded batch: per-example outputs of the head."""

    def forward(variables, images):
        if head == "lgmm":
            z, class_log_likelihood = model.apply(variables, images, train=False)
            return {"latent": z, "class_log_likelihood": class_log_likelihood}
        logits = model.apply(variables, images, train=False)
        features = model.apply(variables, images, False, method=lambda m, x, t: m.backbone(x, t))
        return {"logits": logits, "features": features.astype(jnp.float32)}

    return jax.jit(forward, in_shardings=(replicated(mesh), batch_sharding(mesh)))


def make_odin(model, mesh, temperature: float, epsilon):
    """Jitted ODIN scores of a sharded batch (inference-mode BatchNorm treats examples independently)."""

    def odin(variables, images):
        logits_fn = functools.partial(model.apply, variables, train=False)
        return scores.odin(logits_fn, images, temperature, epsilon)

    return jax.jit(odin, in_shardings=(replicated(mesh), batch_sharding(mesh)))


def gather(array) -> np.ndarray:
    """A global array -> the full numpy array on every host."""
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def collect(batches, mesh, variables, forward, extra=None) -> dict[str, np.ndarray]:
    """Run `forward` (and `extra`, name -> jitted fn) over padded batches; keep the real examples."""
    parts: dict[str, list] = {}
    for local in batches:
        batch = global_batch(local, mesh)
        outputs = dict(forward(variables, batch["image"]))
        for name, fn in (extra or {}).items():
            outputs[name] = fn(variables, batch["image"])
        for name in ("label", "original_label", "mask"):
            outputs[name] = batch[name]
        for name, value in outputs.items():
            parts.setdefault(name, []).append(gather(value))
    arrays = {name: np.concatenate(values) for name, values in parts.items()}
    keep = arrays.pop("mask")
    return {name: value[keep] for name, value in arrays.items()}


def score_table(head: str, outputs: dict, fitted: dict, chosen) -> dict[str, np.ndarray]:
    """name -> [N] scores (higher = more in-distribution) for one evaluation set."""
    table = {}
    for name in chosen:
        if name in ("likelihood", "marginal"):
            table[name] = getattr(scores, name)(outputs["class_log_likelihood"])
        elif name in ("msp", "maxlogit", "energy"):
            table[name] = getattr(scores, name)(outputs["logits"])
        elif name == "odin":
            table[name] = outputs["odin"]
        elif name == "kl_matching":
            table[name] = scores.kl_matching(outputs["logits"], fitted["kl_templates"])
        elif name == "mahalanobis":
            table[name] = scores.mahalanobis(outputs["features"], *fitted["mahalanobis"])
    return {name: np.asarray(value, np.float64) for name, value in table.items()}


def predictions(head: str, outputs: dict) -> np.ndarray:
    return outputs["class_log_likelihood"] if head == "lgmm" else outputs["logits"]


def component_usage(config, variables, outputs) -> dict[str, Any]:
    """Per-class effective number of components (exp entropy of hard usage) on fresh test latents."""
    num_components = config.model.num_components
    means, scales = head_gaussians(variables["params"]["head"], config.model.scale_floor, num_components)
    log_weights = variables["mixture"]["head"]["log_weights"]
    labels = jnp.asarray(outputs["label"])
    joint = labelled_log_prob(jnp.asarray(outputs["latent"]), labels, means, scales) + log_weights[labels]
    hard = jax.nn.one_hot(jnp.argmax(joint, -1), num_components)
    num_classes = means.shape[0]
    usage = jax.ops.segment_sum(hard, labels, num_segments=num_classes)
    usage = usage / jnp.maximum(jnp.sum(usage, -1, keepdims=True), 1.0)
    effective = np.asarray(losses.effective_components(usage))
    return {
        "effective_components_per_class": effective.round(4).tolist(),
        "mean_effective_components": float(effective.mean()),
        "hard_usage_per_class": np.asarray(usage).round(4).tolist(),
    }


def unknown_set_name(ref: DataRef, protocol: OpenSetProtocol) -> str:
    if ref.dataset == protocol.dataset:
        return "unknown_classes"
    return ref.dataset if ref.split == "test" else f"{ref.dataset}_{ref.split}"


def evaluate(config, model, variables, protocol: OpenSetProtocol, mesh) -> dict[str, Any]:
    """Every number of results.json for a model's variables (see the module docstring)."""
    head = config.model.head
    chosen = available_scores(config)
    forward = make_forward(model, head, mesh)
    source = functools.partial(experiment.data_source, config=config)
    stream = functools.partial(experiment.eval_stream, config, protocol)
    train_source = source(protocol.dataset, protocol.train_split)
    known = protocol.known_classes

    def run(ref_source, classes, all_unknown=False, extra=None):
        return collect(stream(ref_source, classes, all_unknown), mesh, variables, forward, extra)

    fitted: dict[str, Any] = {}
    extra = {}
    validation_source = source(protocol.dataset, protocol.validation_split)
    if "odin" in chosen:
        # ODIN's steps are in [0, 1] pixel units; our inputs are standardised by the dataset's std.
        pixel_std = float(np.mean(pipeline.get_normalization(protocol.dataset, train_source).std))
        val_images = np.concatenate([b["image"][b["mask"]] for b in stream(validation_source, known)])
        choice = scores.select_odin_hyperparameters(
            functools.partial(model.apply, variables, train=False),
            val_images,
            epsilons=tuple(eps / pixel_std for eps in scores.ODIN_STAR_EPSILONS),
        )
        fitted["odin"] = choice
        extra["odin"] = make_odin(model, mesh, choice.temperature, choice.epsilon)
    validation = run(validation_source, known, extra=extra)
    if "kl_matching" in chosen:
        fitted["kl_templates"] = scores.fit_kl_templates(validation["logits"], validation["logits"].shape[1])
    if "mahalanobis" in chosen:
        train_outputs = run(train_source, known)
        fitted["mahalanobis"] = scores.fit_mahalanobis(
            train_outputs["features"], train_outputs["label"], train_outputs["logits"].shape[1]
        )

    known_test = run(source(protocol.dataset, protocol.test_split), known, extra=extra)
    known_scores = score_table(head, known_test, fitted, chosen)
    validation_scores = score_table(head, validation, fitted, chosen)
    results: dict[str, Any] = {
        "protocol": protocol.name,
        "head": head,
        "encoder": config.model.encoder,
        "closed_set": {
            **metrics.topk_accuracies(predictions(head, known_test), known_test["label"]),
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
    plots = {}
    for ref in protocol.unknown:
        name = unknown_set_name(ref, protocol)
        unknown = run(source(ref), ref.classes, all_unknown=True, extra=extra)
        unknown_scores = score_table(head, unknown, fitted, chosen)
        results["open_set"][name] = {
            score: metrics.ood_metrics(known_scores[score], unknown_scores[score]) for score in chosen
        }
        results["open_set"][name]["num_examples"] = int(len(unknown["label"]))
        plots[name] = (known_scores, unknown_scores)
    if head == "lgmm":
        results["components"] = component_usage(config, variables, known_test)
    return results, plots


def write_results(workdir: str, results: dict, plots: dict) -> None:
    """results.json, report.md and the PNG plots (chief process only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
        json.dump(results, f, indent=2)
    report.write_report(workdir, results)
    report.write_plots(workdir, plots)


def evaluate_and_write(config, workdir, model, state, protocol, mesh) -> dict[str, Any]:
    results, plots = evaluate(config, model, model_variables(state), protocol, mesh)
    write_results(workdir, results, plots)
    if jax.process_index() == 0:
        print(report.summary_line(results), flush=True)
        print(f"results: {os.path.join(workdir, RESULTS_FILE)}", flush=True)
    return results
