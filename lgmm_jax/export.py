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
  for cpu, cuda and tpu with a symbolic batch (`lgmm_jax.deploy.serving`); it runs with jax alone. model.json's
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
`lgmm_jax.deploy.inference.load` reads it back; `python -m lgmm_jax.evaluate --model=EXPORTED --output=DIR`
evaluates it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from lgmm_jax import pretrained, tasks
from lgmm_jax.deploy import exporting
from lgmm_jax.runtime import cli
from lgmm_jax.training import initial_weights, restore
from lgmm_jax.ood import conformal
from lgmm_jax.runtime.sharding import make_mesh


def published_model(config, weights: str) -> restore.TrainedModel:
    """`config`'s model with every array from the checkpoint file `weights` (`pretrained.load_variables`,
    the file's conventions written into the config as training from it does).

    Raises:
      WeightsError: the file cannot be read, does not fit, or leaves arrays of the model unfilled.
    """
    config = ml_collections.ConfigDict(json.loads(config.to_json()))
    with config.unlocked():
        config.init = {"weights": weights, "what": "all"}
    config = initial_weights.with_source_conventions(config, workdir=None)
    protocol, train_source, num_classes, input_shape, model = restore.configured_model(config)
    variables, report = pretrained.load_variables(model, weights, what="all", image_shape=(1, *input_shape))
    if report["fresh"]:
        raise pretrained.WeightsError(
            f"{weights} leaves {len(report['fresh'])} arrays of the {config.model.head} {config.model.encoder} "
            f"model unfilled ({', '.join(report['fresh'][:3])}...): export needs the whole model from the "
            "file; train from it instead with --config.init.weights")
    return restore.TrainedModel(config=config, protocol=protocol, train_source=train_source, model=model,
                                 variables=variables, input_shape=input_shape, num_classes=num_classes, step=0)


def export_trained(trained: restore.TrainedModel, output: str, origin: dict, score_name: str | None, mesh,
                   alpha: float = conformal.DEFAULT_ALPHA, calibration: str = "marginal") -> dict[str, Any]:
    """Describe `trained` (calibrated on the validation split, by its task) and write it to `output`."""
    contents = tasks.get(trained.config).export_contents(trained, origin, score_name, mesh, alpha, calibration)
    exporting.write_export(output, trained.variables, contents.description, contents.files, contents.binaries)
    return contents.description


def export_model(workdir: str, output: str, score_name: str | None = None, alpha: float = conformal.DEFAULT_ALPHA,
                 calibration: str = "marginal") -> dict[str, Any]:
    """Export `workdir`'s latest checkpoint to the new folder `output`; returns model.json's content.

    Raises:
      FileExistsError: `output` exists and is not empty.
      FileNotFoundError: `workdir` has no config.json or no checkpoint.
      ValueError: `score_name` is not a deployable score of the model's head.
    """
    exporting.check_output_is_free(output)
    mesh = make_mesh()
    trained = restore.restore_workdir(workdir, mesh)
    origin = {"workdir": os.path.abspath(workdir), "step": trained.step}
    return export_trained(trained, output, origin, score_name, mesh, alpha, calibration)


def export_published(config, weights: str, output: str, score_name: str | None = None,
                     alpha: float = conformal.DEFAULT_ALPHA, calibration: str = "marginal") -> dict[str, Any]:
    """Export `config`'s model filled from the checkpoint file `weights` (`published_model`) to the new
    folder `output`, without training; returns model.json's content (its "checkpoint": {"weights": path})."""
    exporting.check_output_is_free(output)
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
        exporting.check_output_is_free(FLAGS.output)
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
