"""Export a training run's latest checkpoint as a self-contained model folder for inference and evaluation.

    python -m lgmm_jax.export --workdir=RUN --output=EXPORTED [--score=marginal|posterior]
    python -m lgmm_jax.export --config=configs/cityscapes_segformer_b5.py --weights=model.safetensors \
        --config.model.head=softmax --output=EXPORTED      # a published model, never trained here

The folder holds no pickle:

- ``variables/``: an orbax StandardSave of a plain pytree of arrays, {"params", "batch_stats", "mixture"}
  (the encoder's parameters and BatchNorm statistics, the Gaussians' means and scales, the counted mixture
  weights); no optimiser state, no memory bank.
- ``model.json``: the full training config, the original label id and name of each known class, the
  evaluation preprocessing preset with the normalisation mean / std, the input image shape, the score and
  its rejection threshold, `alpha` and the calibration kind.
- ``calibration_scores.npy`` (sorted) and ``calibration_classes.npy`` (the predicted class of each): the
  score of every held-out known-class validation image, which training never sees. The threshold is the
  split-conformal one (`lgmm_jax.ood.conformal`): a known-class input is rejected with probability at most
  `alpha` (default 0.05, `--alpha`); `--calibration=class_conditional` gives each predicted class its own
  threshold and the same guarantee per class. `inference` gives every input its p-value and decides at
  another alpha on request.
- ``model.stablehlo``: the whole inference function, uint8 images to the decision, compiled by `jax.export`
  for cpu, cuda and tpu with a symbolic batch (`lgmm_jax.serving`); it runs with jax alone. model.json's
  "stablehlo" gives its input and outputs.

A published checkpoint exports without training (`--config` and `--weights`): the config's model is filled
entirely from the file (`lgmm_jax.pretrained`; every array must come from it, so a GMM head, which no
published file has, is refused) and the threshold is set on the config's validation split as for a run;
`evaluate --model=EXPORTED` then gives the published model's numbers with every score of its head.

A segmentation run exports the same way: model.json says `"task": "segmentation"` and how the model is
run on an image (`dense`: whole or slide inference, the test-time resize, the padding), its score is a
per-pixel score (L-GMM: likelihood; softmax: msp, maxlogit or entropy) and its calibration scores are
a strided sample of the validation split's labelled pixels (at most `THRESHOLD_PIXELS_PER_IMAGE` per
image; marginal only, and without the guarantee: pixels of one image are not exchangeable); `inference.load(...).predict(images)` then returns per-pixel
labels, scores and the known / unknown decision at the input size.

The export is written into a temporary sibling folder and renamed into place when complete, so a crash never
leaves a half-written export; an existing non-empty output folder is never overwritten.
`lgmm_jax.inference.load` reads it back; `python -m lgmm_jax.evaluate --model=EXPORTED --output=DIR`
evaluates it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from ml_collections import config_flags

from lgmm_jax import cli, evaluate, experiment, forward, inference, initial_weights, pixel_forward, pretrained
from lgmm_jax import segmentation_evaluation, serving, tasks
from lgmm_jax.data import pipeline
from lgmm_jax.ood import conformal
from lgmm_jax.sharding import make_mesh


def check_output_is_free(output: str) -> None:
    """Raise FileExistsError when `output` exists and is not an empty folder."""
    if os.path.exists(output) and not (os.path.isdir(output) and not os.listdir(output)):
        raise FileExistsError(
            f"--output {output} already exists and is not empty: pass a new --output or delete it"
        )


def choose_score(head: str, score_name: str | None, segmentation: bool = False) -> str:
    """The requested score, or the head's default (likelihood for L-GMM, MSP for softmax)."""
    defaults = pixel_forward.DEFAULT_PIXEL_SCORE if segmentation else inference.DEFAULT_SCORE
    deployable = pixel_forward.DEPLOYABLE_PIXEL_SCORES if segmentation else inference.DEPLOYABLE_SCORES
    score_name = score_name or defaults[head]
    if score_name not in deployable[head]:
        kind = "segmenter" if segmentation else "model"
        raise ValueError(
            f"--score={score_name} is not a score of a deployed {head} {kind}: use one of {', '.join(deployable[head])}"
        )
    return score_name


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Held-out known-class scores (and the class predicted for each) that the threshold is set on."""

    scores: np.ndarray
    classes: np.ndarray
    kind: str
    alpha: float

    def description(self, num_classes: int) -> dict[str, Any]:
        """model.json's threshold and calibration entries (`conformal`)."""
        entries = {"threshold": conformal.threshold(self.scores, self.alpha), "alpha": self.alpha,
                   "calibration": self.kind, "threshold_tpr": 1.0 - self.alpha,
                   "calibration_files": list(inference.CALIBRATION_FILES)}
        if self.kind == "class_conditional":
            entries["class_thresholds"] = conformal.class_thresholds(
                self.scores, self.classes, num_classes, self.alpha).tolist()
        return entries

    def files(self) -> dict[str, np.ndarray]:
        order = np.argsort(self.scores, kind="stable")
        scores_file, classes_file = inference.CALIBRATION_FILES
        return {scores_file: self.scores[order], classes_file: self.classes[order].astype(np.int32)}


def calibration_of(scores, classes, kind: str, alpha: float) -> Calibration:
    if kind not in conformal.CALIBRATIONS:
        raise ValueError(f"--calibration={kind} is not one of {', '.join(conformal.CALIBRATIONS)}")
    return Calibration(np.asarray(scores, np.float64), np.asarray(classes, np.int64), kind,
                       conformal.check_alpha(alpha))


def segmentation_calibration(trained: evaluate.TrainedModel, score_name: str, mesh
                             ) -> tuple[np.ndarray, int, tuple[int, int]]:
    """(sampled labelled validation pixels' scores, number of validation images, the network input size of
    the first validation image), sampled as the evaluation samples them for its thresholds."""
    config, protocol = trained.config, trained.protocol
    source = experiment.data_source(protocol.dataset, protocol.validation_split, config=config)
    settings = segmentation_evaluation.settings_of(config)
    first_size = pixel_forward.eval_image(source[0]["image"], settings).shape[:2]
    predictor = segmentation_evaluation.Predictor(
        forward=pixel_forward.make_dense_forward(trained.model, config.model.head, mesh, settings),
        variables=trained.variables, mesh=mesh, fitted=pixel_forward.Fitted(),
        batch_size=experiment.eval_batch_size(config), settings=settings, num_classes=trained.num_classes,
    )
    sampled = segmentation_evaluation.validation_pixel_scores(config, predictor, source, (score_name,))
    return sampled[score_name], len(source), first_size


def describe_segmenter(trained: evaluate.TrainedModel, origin: dict, score_name: str,
                       calibration: Calibration, num_images: int) -> dict[str, Any]:
    """model.json's content for a segmentation run (see the module docstring)."""
    config, protocol, source = trained.config, trained.protocol, trained.train_source
    settings = segmentation_evaluation.settings_of(config)
    return {
        "format": inference.EXPORT_FORMAT,
        "task": "segmentation",
        "head": config.model.head,
        "encoder": config.model.encoder,
        "num_classes": trained.num_classes,
        "known_labels": list(range(trained.num_classes)),
        "label_names": [str(name) for name in source.label_names],
        "void_label": int(config.segmentation.void_label),
        "preprocess": "none",
        "normalization": {"dataset": protocol.dataset, "mean": list(settings.mean), "std": list(settings.std)},
        "dense": {
            "inference": settings.inference,
            "crop": list(settings.crop),
            "stride": list(settings.stride),
            "eval_scale": list(settings.eval_scale),
            "size_divisor": settings.size_divisor,
        },
        "image_shape": [None, None, 3],
        "model_input_shape": list(trained.input_shape),
        "score": score_name,
        **calibration.description(trained.num_classes),
        "threshold_data": {"dataset": protocol.dataset, "split": protocol.validation_split,
                           "num_examples": num_images, "unit": "labelled pixels",
                           "num_scores": int(len(calibration.scores))},
        "protocol": protocol.name,
        "checkpoint": origin,
        "variables": inference.VARIABLES_DIR,
        "config": json.loads(config.to_json()),
    }


def validation_scores(trained: evaluate.TrainedModel, score_name: str, mesh) -> tuple[np.ndarray, np.ndarray]:
    """([N] scores, [N] predicted classes) of the known-class validation images, computed as
    `evaluate.evaluate` computes them."""
    config, protocol = trained.config, trained.protocol
    source = experiment.data_source(protocol.dataset, protocol.validation_split, config=config)
    batches = experiment.eval_stream(config, protocol, source, protocol.known_classes)
    forward_fn = forward.make_forward(trained.model, config.model.head, mesh)
    outputs = forward.collect(batches, mesh, trained.variables, forward_fn)
    temperature = forward.posterior_temperature_of(config)
    scores = forward.score_table(outputs, {}, (score_name,), temperature)[score_name]
    return scores, np.argmax(forward.predictions(config.model.head, outputs), axis=-1)


def describe(
    trained: evaluate.TrainedModel, origin: dict, score_name: str, calibration: Calibration
) -> dict[str, Any]:
    """model.json's content (see the module docstring)."""
    config, protocol, source = trained.config, trained.protocol, trained.train_source
    known = experiment.known_label_ids(protocol, source)
    preset = experiment.preprocess_preset(config, protocol)
    normalization = pipeline.get_normalization(protocol.dataset, source)
    image_shape = list(source.image_shape)
    if pipeline.resizes_to_network_input(preset):  # resized and cropped to the network's input: any size goes in
        image_shape = [None, None, image_shape[-1]]
    return {
        "format": inference.EXPORT_FORMAT,
        "head": config.model.head,
        "encoder": config.model.encoder,
        "num_classes": trained.num_classes,
        "known_labels": [int(label) for label in known],
        "label_names": [str(source.label_names[label]) for label in known],
        "preprocess": preset,
        "normalization": {
            "dataset": protocol.dataset,
            "mean": [float(v) for v in normalization.mean],
            "std": [float(v) for v in normalization.std],
        },
        "image_shape": image_shape,
        "model_input_shape": list(trained.input_shape),
        "score": score_name,
        **calibration.description(trained.num_classes),
        "threshold_data": {
            "dataset": protocol.dataset,
            "split": protocol.validation_split,
            "num_examples": int(len(calibration.scores)),
        },
        "protocol": protocol.name,
        "checkpoint": origin,
        "variables": inference.VARIABLES_DIR,
        "config": json.loads(trained.config.to_json()),
    }


def write_export(output: str, variables: dict, description: dict, files: dict[str, np.ndarray] | None = None,
                 binaries: dict[str, bytes] | None = None) -> None:
    """Write variables/, model.json, `files` (name -> array, .npy) and `binaries` (name -> bytes) into a
    temporary sibling of `output`, then rename it to `output`."""
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.partial-", dir=parent)
    try:
        arrays = {name: jax.device_get(tree) for name, tree in variables.items() if jax.tree.leaves(tree)}
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(staging, inference.VARIABLES_DIR), arrays)
        with open(os.path.join(staging, inference.MODEL_FILE), "w") as f:
            json.dump(description, f, indent=2)
        for name, array in (files or {}).items():
            np.save(os.path.join(staging, name), array)
        for name, data in (binaries or {}).items():
            with open(os.path.join(staging, name), "wb") as f:
                f.write(data)
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        if os.path.isdir(output):
            os.rmdir(output)  # empty (checked): rename replaces only an absent or empty folder
        os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def published_model(config, weights: str) -> evaluate.TrainedModel:
    """`config`'s model with every array from the checkpoint file `weights` (`pretrained.load_variables`,
    the file's conventions written into the config as training from it does).

    Raises:
      WeightsError: the file cannot be read, does not fit, or leaves arrays of the model unfilled.
    """
    config = ml_collections.ConfigDict(json.loads(config.to_json()))
    with config.unlocked():
        config.init = {"weights": weights, "what": "all"}
    config = initial_weights.with_source_conventions(config, workdir=None)
    protocol, train_source, num_classes, input_shape, model = evaluate.configured_model(config)
    variables, report = pretrained.load_variables(model, weights, what="all", image_shape=(1, *input_shape))
    if report["fresh"]:
        raise pretrained.WeightsError(
            f"{weights} leaves {len(report['fresh'])} arrays of the {config.model.head} {config.model.encoder} "
            f"model unfilled ({', '.join(report['fresh'][:3])}...): export needs the whole model from the "
            "file; train from it instead with --config.init.weights")
    return evaluate.TrainedModel(config=config, protocol=protocol, train_source=train_source, model=model,
                                 variables=variables, input_shape=input_shape, num_classes=num_classes, step=0)


def export_trained(trained: evaluate.TrainedModel, output: str, origin: dict, score_name: str | None, mesh,
                   alpha: float = conformal.DEFAULT_ALPHA, calibration: str = "marginal") -> dict[str, Any]:
    """Describe `trained` (calibrated on the validation split) and write it to `output`."""
    segmentation = tasks.task_name(trained.config) == "segmentation"  # moves behind the task interface next
    score_name = choose_score(trained.config.model.head, score_name, segmentation)
    if segmentation:
        if calibration != "marginal":
            raise ValueError("--calibration=class_conditional is for classifiers: a segmenter's calibration "
                             "pixels are not exchangeable; use --calibration=marginal")
        scores, num_images, size = segmentation_calibration(trained, score_name, mesh)
        calibrated = calibration_of(scores, np.zeros(len(scores)), calibration, alpha)
        description = describe_segmenter(trained, origin, score_name, calibrated, num_images)
        stablehlo, description["stablehlo"] = serving.compile_export(
            trained.model, trained.variables, description, (*size, 3),
            settings=segmentation_evaluation.settings_of(trained.config))
    else:
        calibrated = calibration_of(*validation_scores(trained, score_name, mesh), calibration, alpha)
        description = describe(trained, origin, score_name, calibrated)
        input_shape = list(description["image_shape"])
        if None in input_shape:  # resized and cropped to the network's input outside the compiled function
            input_shape = description["model_input_shape"]
        stablehlo, description["stablehlo"] = serving.compile_export(
            trained.model, trained.variables, description, input_shape, calibrated.scores, calibrated.classes)
    write_export(output, trained.variables, description, calibrated.files(), {serving.STABLEHLO_FILE: stablehlo})
    return description


def export_model(workdir: str, output: str, score_name: str | None = None, alpha: float = conformal.DEFAULT_ALPHA,
                 calibration: str = "marginal") -> dict[str, Any]:
    """Export `workdir`'s latest checkpoint to the new folder `output`; returns model.json's content.

    Raises:
      FileExistsError: `output` exists and is not empty.
      FileNotFoundError: `workdir` has no config.json or no checkpoint.
      ValueError: `score_name` is not a deployable score of the model's head.
    """
    check_output_is_free(output)
    mesh = make_mesh()
    trained = evaluate.restore_workdir(workdir, mesh)
    origin = {"workdir": os.path.abspath(workdir), "step": trained.step}
    return export_trained(trained, output, origin, score_name, mesh, alpha, calibration)


def export_published(config, weights: str, output: str, score_name: str | None = None,
                     alpha: float = conformal.DEFAULT_ALPHA, calibration: str = "marginal") -> dict[str, Any]:
    """Export `config`'s model filled from the checkpoint file `weights` (`published_model`) to the new
    folder `output`, without training; returns model.json's content (its "checkpoint": {"weights": path})."""
    check_output_is_free(output)
    trained = published_model(config, weights)
    origin = {"weights": weights if "://" in weights else os.path.abspath(weights)}
    return export_trained(trained, output, origin, score_name, make_mesh(), alpha, calibration)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "a training run's folder: export its latest checkpoint")
    flags.DEFINE_string("weights", None, "a published checkpoint file: export --config's model filled from it")
    config_flags.DEFINE_config_file("config", None, "with --weights: the model's config file", lock_config=True)
    flags.DEFINE_string("output", None, "the new folder to write the exported model into")
    flags.DEFINE_float("alpha", conformal.DEFAULT_ALPHA, "the rejection threshold rejects a known-class input "
                       "with probability at most alpha (split-conformal on the validation split)")
    flags.DEFINE_enum("calibration", "marginal", list(conformal.CALIBRATIONS),
                      "one threshold, or one per predicted class (the guarantee per class)")
    flags.DEFINE_string("score", None, "L-GMM: likelihood (default), marginal or posterior; softmax: msp "
                        "(default), maxlogit or energy (segmenters: likelihood; msp, maxlogit or entropy)")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}: pass options as --flag=value")
    published = bool(FLAGS.weights)
    if bool(FLAGS.workdir) == published or not FLAGS.output:
        cli.fail("pass --workdir=RUN (a training run's folder) or --config=FILE --weights=CHECKPOINT, and "
                 "--output=NEW_DIR")
    if published and FLAGS.config is None:
        cli.fail("--weights needs --config=FILE: the config whose model the checkpoint fills")
    try:
        check_output_is_free(FLAGS.output)
    except FileExistsError as error:
        cli.fail(str(error))
    cli.quiet_libraries()

    def export_and_report():
        if published:
            description = export_published(FLAGS.config, FLAGS.weights, FLAGS.output, FLAGS.score, FLAGS.alpha,
                                           FLAGS.calibration)
            source = FLAGS.weights
        else:
            description = export_model(FLAGS.workdir, FLAGS.output, FLAGS.score, FLAGS.alpha, FLAGS.calibration)
            source = f"step {description['checkpoint']['step']} of {FLAGS.workdir}"
        print(
            f"exported {source} to {FLAGS.output}: "
            f"{description['score']} >= {description['threshold']:.6g} accepts as known (rejects a known "
            f"input with probability <= {description['alpha']:g}; calibrated on "
            f"{description['threshold_data'].get('unit', 'images')} of {description['threshold_data']['num_examples']} "
            f"validation images)",
            flush=True,
        )

    return cli.run_guarded(export_and_report)


if __name__ == "__main__":
    cli.define_flags_or_fail(define_flags, sys.argv)
    sys.exit(cli.run_app(main))
