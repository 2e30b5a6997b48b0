"""Closed-set and open-set evaluation of a trained model (library and CLI).

    python -m lgmm_jax.evaluate --workdir=DIR                      # the latest checkpoint of a training run
    python -m lgmm_jax.evaluate --model=EXPORTED --output=DIR      # an exported model (lgmm_jax.export)
    python -m lgmm_jax.evaluate --workdir=DIR --ood_datasets=folder=/data/LSUN_resize --output=DIR2
    python -m lgmm_jax.evaluate --workdir=DIR --config.eval_batch_size=64   # any key of the run's config

Every example of every evaluation set is seen once (padded, masked batches). Known-class test data give
top-1/top-5; each unknown set is scored against them with every score the head has (L-GMM: `likelihood`,
`marginal`, `posterior`, and the post-hoc read-outs of its encoder `knn_latent`, `knn_features`,
`rmds_features`; softmax: `msp`, `maxlogit`, `energy`, `odin`, `kl_matching`,
`mahalanobis` and OpenOOD v1.5's `knn`, `vim`, `react`, `ash`, `gen`, `rmds`, `lgmm_jax.ood.posthoc`).
Scores that need fitting (KL templates, ODIN*'s step, Mahalanobis / RMDS / ViM statistics, KNN's bank,
ReAct's clip, rejection thresholds) are fitted on the held-out validation split or the training split of
the known classes (`lgmm_jax.ood.fitting`), never on test or unknown data.
Writes results.json, report.md, PNG plots and scores.npz (every example's score on the validation split,
the known test split and each unknown set, `"<set>/<score>"`) into the output folder.

A segmentation run (config.task='segmentation') is evaluated by `lgmm_jax.segmentation_evaluation`:
mIoU / aAcc / per-class IoU on the known test split, pixel AUROC / AP / FPR95 on each anomaly set, with
the same command line, output folder and files (report.md with its tables, Figure 3's pictures).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import json
import math
import os
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from etils import epath
from jax.experimental import multihost_utils

from lgmm_jax import checkpointing, cli, experiment, forward, inference, losses, report, segmentation_figures
from lgmm_jax import segmentation_evaluation, tasks
from lgmm_jax.data import pipeline
from lgmm_jax.data.protocols import DataRef, OpenSetProtocol
from lgmm_jax.data.sources import FOLDER_PREFIX, Source
from lgmm_jax.mixture import labelled_log_prob
from lgmm_jax.models.gmm import head_gaussians
from lgmm_jax.ood import conformal, fitting, metrics, posthoc, scores
from lgmm_jax.models.configured import create_model
from lgmm_jax.sharding import batch_sharding, make_mesh, replicated
from lgmm_jax.state import create_optimizer, create_train_state, state_shardings

RESULTS_FILE = "results.json"
SCORES_FILE = "scores.npz"
ODIN_SELECTION_SIZE = 1000  # held-out images ODIN*'s step is chosen on (eval.odin_selection_size)
# Images of each unknown set that odin_ood's temperature and step are chosen on (ODIN's 1,000; at most half
# the set, eval.odin_ood_held_out); the set is scored on the rest.
ODIN_OOD_HELD_OUT = 1000


def available_scores(config) -> tuple[str, ...]:
    """The configured scores, or every score of the head."""
    if config.model.head == "lgmm":
        every = scores.LGMM_SCORES + posthoc.LGMM_POSTHOC_SCORES
    else:
        every = scores.SOFTMAX_SCORES + posthoc.POSTHOC_SCORES + posthoc.OOD_TUNED_SCORES
    chosen = tuple(config.eval.scores) or every
    unknown = [name for name in chosen if name not in every]
    if unknown:
        raise ValueError(f"eval.scores {unknown} are not scores of a {config.model.head} head: use {every}")
    return chosen


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
    max_batches = max(math.ceil(limit / experiment.eval_batch_size(config)), 1)
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


def unknown_set_name(ref: DataRef, protocol: OpenSetProtocol, segmentation: bool = False) -> str:
    """The unknown set's key in results.json and in its plot file names (letters, digits, '_', '-', '.').

    Unknown classes of the training dataset: 'unknown_classes' (segmentation: the split without its
    'test_' prefix, so the testbed's 'scenes:test_near' is 'near'); a folder: its base name
    ('LSUN_resize'); another dataset: its name, with the split appended unless it is 'test'.
    """
    if ref.dataset == protocol.dataset:
        return ref.split.removeprefix("test_") if segmentation else "unknown_classes"
    if ref.dataset.startswith(FOLDER_PREFIX):
        name = os.path.basename(os.path.normpath(ref.dataset[len(FOLDER_PREFIX):]))
    else:
        name = ref.dataset if ref.split == "test" else f"{ref.dataset}_{ref.split}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "unknown"


def unique_name(name: str, taken) -> str:
    """`name`, or `name_2`, `name_3`, ... when it is taken (two folders with the same base name)."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    return candidate


def unknown_set_names(protocol: OpenSetProtocol, segmentation: bool = False) -> list[str]:
    """The key of each of the protocol's unknown sets in results.json (`unknown_set_name`, made unique)."""
    names: list[str] = []
    for ref in protocol.unknown:
        names.append(unique_name(unknown_set_name(ref, protocol, segmentation), names))
    return names


def check_unknown_image_shape(name: str, unknown: Source, known: Source, preset: str) -> None:
    """An unknown set must have the training images' shape (only the channels when the preset resizes)."""
    expected, got = tuple(known.image_shape), tuple(unknown.image_shape)
    axes = (2,) if pipeline.resizes_to_network_input(preset) else (0, 1, 2)
    if any(expected[a] is not None and got[a] is not None and expected[a] != got[a] for a in axes):
        show = lambda shape: "x".join("?" if d is None else str(d) for d in shape)  # noqa: E731
        raise ValueError(
            f"unknown set {name} has {show(got)} images (H x W x C) but the model was trained on "
            f"{show(expected)}: convert the images to {show(expected)}"
        )


def evaluate(config, model, variables, protocol: OpenSetProtocol, mesh) -> dict[str, Any]:
    """Every number of results.json for a model's variables (see the module docstring), and what the plots
    are drawn from (classification: `ScoreSets`; segmentation: `SegmentationPlots`)."""
    if tasks.task_name(config) == "segmentation":  # the evaluators move behind the task interface next
        return segmentation_evaluation.evaluate(
            config, model, variables, protocol, mesh, unknown_set_names(protocol, segmentation=True)
        )
    head = config.model.head
    chosen = available_scores(config)
    forward_fn = forward.make_forward(model, head, mesh,
                                      lgmm_features=any(name.endswith("_features") for name in chosen))
    source = functools.partial(experiment.data_source, config=config)
    stream = functools.partial(experiment.eval_stream, config, protocol)
    train_source = source(protocol.dataset, protocol.train_split)
    known = protocol.known_classes
    num_classes = experiment.num_known_classes(protocol, train_source)
    # Every unknown set is found and checked before the first forward pass.
    unknown_sources = [source(ref) for ref in protocol.unknown]
    unknown_names = unknown_set_names(protocol)
    for name, unknown_source in zip(unknown_names, unknown_sources):
        check_unknown_image_shape(name, unknown_source, train_source, experiment.preprocess_preset(config, protocol))

    def run(ref_source, classes, all_unknown=False, extra=None):
        return forward.collect(stream(ref_source, classes, all_unknown), mesh, variables, forward_fn, extra)

    fitted: dict[str, Any] = {}
    extra = {}
    validation_source = source(protocol.dataset, protocol.validation_split)
    # ODIN's steps are in [0, 1] pixel units; our inputs are standardised per channel.
    pixel_std = pipeline.get_normalization(protocol.dataset, train_source).std
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
    if head == "softmax":  # the final linear layer, which ViM, ReAct and ASH recompute logits through
        fitted["classifier"] = (variables["params"]["classifier"]["kernel"], variables["params"]["classifier"]["bias"])
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
    if head == "lgmm":
        results["components"] = component_usage(config, variables, known_test)
    return results, score_sets


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


def write_results(workdir: str, results: dict, plots) -> None:
    """results.json, report.md, the PNG plots and (classification) scores.npz (chief process only)."""
    if jax.process_index() != 0:
        return
    folder = epath.Path(workdir)  # local or gs://
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    report.write_report(workdir, results)
    if isinstance(plots, segmentation_evaluation.SegmentationPlots):
        segmentation_figures.write_figures(workdir, plots)
    else:
        report.write_plots(workdir, {name: (plots.known_against(name), unknown)
                                     for name, unknown in plots.unknown.items()})
        write_scores(workdir, plots)


def evaluate_variables_and_write(config, folder, model, variables, protocol, mesh) -> dict[str, Any]:
    """evaluate, write_results into `folder`, and print the summary line; returns results.json's dict."""
    results, plots = evaluate(config, model, variables, protocol, mesh)
    write_results(folder, results, plots)
    if jax.process_index() == 0:
        print(report.summary_line(results), flush=True)
        print(f"results: {os.path.join(folder, RESULTS_FILE)}", flush=True)
    return results


def evaluate_and_write(config, workdir, model, state, protocol, mesh) -> dict[str, Any]:
    """What training runs at its end: evaluate the final TrainState and write into the workdir."""
    return evaluate_variables_and_write(config, workdir, model, forward.model_variables(state), protocol, mesh)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A training run's latest checkpoint, rebuilt: what evaluation and export need.

    variables: {"params", "batch_stats", "mixture"} of the model (see `model_variables`).
    input_shape: (H, W, C) of the images the network takes (after the evaluation transform).
    """

    config: ml_collections.ConfigDict
    protocol: OpenSetProtocol
    train_source: Source
    model: Any
    variables: dict
    input_shape: tuple[int, ...]
    num_classes: int
    step: int


def configured_model(config: ml_collections.ConfigDict):
    """(protocol, training source, number of known classes, network input shape (H, W, C), model) of a
    config: what rebuilding a trained model needs besides its variables."""
    protocol = experiment.resolve_protocol(config)
    train_source = experiment.data_source(protocol.dataset, protocol.train_split, config=config)
    num_classes = experiment.num_known_classes(protocol, train_source)
    input_shape = experiment.model_input_shape(config, protocol, train_source)
    return protocol, train_source, num_classes, tuple(input_shape), create_model(config.model, num_classes)


def restore_workdir(workdir: str, mesh, config: ml_collections.ConfigDict | None = None) -> TrainedModel:
    """The latest checkpoint of `workdir`, rebuilt with the run's config (`DIR/config.json` by default).

    The train state's structure comes from `state.py`, as in training, through `jax.eval_shape`: nothing
    is initialised, orbax restores straight into the shapes and shardings.

    Raises:
      FileNotFoundError: no config.json, or no complete checkpoint in the workdir.
      IncompatibleCheckpointError: the checkpoint does not fit the config.
    """
    config = config if config is not None else checkpointing.read_config(workdir)
    protocol, train_source, num_classes, input_shape, model = configured_model(config)
    # The optimiser state's structure does not depend on the schedule's step counts.
    optimizer, _ = create_optimizer(config, steps_per_epoch=1, total_steps=1)
    abstract = jax.eval_shape(lambda: create_train_state(config, model, optimizer, input_shape, num_classes))
    checkpoints = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
    no_checkpoint = FileNotFoundError(
        f"no complete checkpoint in {checkpoints}: train first "
        f"(python -m lgmm_jax.main --workdir={workdir}) or pass the --workdir of a finished run"
    )
    if not epath.Path(checkpoints).is_dir():
        raise no_checkpoint
    manager = checkpointing.open_manager(workdir, config, read_only=True)
    try:
        state = checkpointing.restore_latest(manager, abstract, state_shardings(abstract, mesh, num_classes))
    finally:
        manager.close()
    if state is abstract:  # restore_latest found no complete step
        raise no_checkpoint
    return TrainedModel(
        config=config,
        protocol=protocol,
        train_source=train_source,
        model=model,
        variables=forward.model_variables(state),
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        step=int(state.step),
    )


def with_overrides(config: ml_collections.ConfigDict, ood_datasets=(), data_dir: str | None = None,
                   config_overrides: dict | None = None):
    """A copy of `config` with extra unknown sets (`ood_datasets` entries), another data_dir, and
    `config_overrides` ({dotted key: value}, e.g. {"eval_batch_size": 64}) written in."""
    config = ml_collections.ConfigDict(json.loads(config.to_json()))
    config.update_from_flattened_dict(dict(config_overrides or {}))
    if ood_datasets:
        config.ood_datasets = tuple(config.ood_datasets) + tuple(ood_datasets)
    if data_dir:
        config.data_dir = data_dir
    return config


def evaluate_workdir(workdir: str, output: str | None = None, *, ood_datasets=(), data_dir=None,
                     config_overrides=None) -> dict:
    """Evaluate the latest checkpoint of a training run; write results.json, report.md, plots to `output`
    (default: the workdir)."""
    mesh = make_mesh()
    config = with_overrides(checkpointing.read_config(workdir), ood_datasets, data_dir, config_overrides)
    trained = restore_workdir(workdir, mesh, config)
    return evaluate_variables_and_write(
        config, output or workdir, trained.model, trained.variables, trained.protocol, mesh
    )


def evaluate_export(path: str, output: str, *, ood_datasets=(), data_dir=None, config_overrides=None) -> dict:
    """Evaluate an exported model (`lgmm_jax.export`) on the data its config names; same numbers as
    `evaluate_workdir` on the checkpoint it was exported from."""
    exported = inference.load(path)
    mesh = make_mesh()
    config = with_overrides(exported.config, ood_datasets, data_dir, config_overrides)
    protocol = experiment.resolve_protocol(config)
    return evaluate_variables_and_write(config, output, exported.module, exported.variables, protocol, mesh)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "a training run's folder: evaluate its latest checkpoint")
    flags.DEFINE_string("model", None, "an exported model's folder (python -m lgmm_jax.export)")
    flags.DEFINE_string("output", None, "where results.json, report.md and plots go (default: --workdir)")
    flags.DEFINE_multi_string(
        "ood_datasets", [], "extra unknown set, 'dataset:split' or 'folder=PATH'; repeat for several"
    )
    flags.DEFINE_string("data_dir", None, "read the data from here instead of the config's data_dir")
    flags.DEFINE_bool(
        "distributed", None, "jax.distributed.initialize() (default: when a cluster is detected)"
    )
    cli.define_config_overrides("only --config.KEY=VALUE overrides of the run's config.json")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}: pass options as --flag=value")
    if bool(FLAGS.workdir) == bool(FLAGS.model):
        cli.fail("pass exactly one of --workdir=DIR (a training run) or --model=DIR (an exported model)")
    if FLAGS.model and not FLAGS.output:
        cli.fail("--model needs --output=DIR: the exported model's folder is left as it is")
    cli.quiet_libraries()
    cli.maybe_initialize_distributed(FLAGS.distributed)
    overrides = {
        "ood_datasets": tuple(FLAGS.ood_datasets),
        "data_dir": FLAGS.data_dir,
        "config_overrides": cli.config_overrides(),
    }
    if FLAGS.workdir:
        return cli.run_guarded(lambda: evaluate_workdir(FLAGS.workdir, FLAGS.output, **overrides))
    return cli.run_guarded(lambda: evaluate_export(FLAGS.model, FLAGS.output, **overrides))


if __name__ == "__main__":
    cli.define_flags_or_fail(define_flags, sys.argv)
    sys.exit(cli.run_app(main))
