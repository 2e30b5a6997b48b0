"""Load an exported model (`lgmm_jax.export`) and classify, score and reject images.

    model = inference.load("exported/")
    out = model.predict(images)          # uint8 [N, H, W, C], as the training data were stored
    out["label"]                         # original label ids of the known classes, int64 [N]
    out["known"]                         # False = rejected as unknown: score < threshold

For L-GMM the score is s(x) = max_y log p(z|y) (or log p(z)), and the class posterior is
log p(y|z) = log p(z|y) - logsumexp_y' log p(z|y') under the uniform class prior (Section 2, Eq. 1-2);
for the softmax counterpart the posterior is log_softmax(logits) and the score the maximum softmax
probability (or MaxLogit / Energy). The threshold keeps `threshold_tpr` (95%) of the held-out known-class
validation images (`lgmm_jax.ood.metrics.threshold_at_tpr`). Images go through exactly the evaluation
pipeline of training (`pipeline.eval_batches`: the preset's evaluation transform, the training dataset's
normalisation, padded batches of a fixed size, so the network is compiled once).

`load` returns the export's task's model (`lgmm_jax.tasks.<task>.exported`, the only task module it
imports): a classifier's `Model`, or for model.json's "task": "segmentation" a `SegmentationModel`, whose
`predict(images)` takes uint8 [N, H, W, 3] of any one size and returns per-pixel `label` [N, H, W], `score`
[N, H, W] and `known` [N, H, W] at that size (whole or slide inference as in training's evaluation, class
scores resized to the input before the argmax). This module holds what both kinds share.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from lgmm_jax import heads, tasks
from lgmm_jax.models.configured import initial_variables
from lgmm_jax.ood import conformal
from lgmm_jax.runtime.sharding import make_mesh, padded_batch_size, replicated

EXPORT_FORMAT = "lgmm_jax.export/1"
MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"
# The held-out known-class scores the threshold was calibrated on (sorted) and each one's predicted class.
CALIBRATION_FILES = ("calibration_scores.npy", "calibration_classes.npy")
# Files without which an export cannot be loaded (orbax's tree metadata and its array index).
REQUIRED_FILES = (MODEL_FILE, f"{VARIABLES_DIR}/_METADATA", f"{VARIABLES_DIR}/manifest.ocdbt")


class IncompleteExportError(FileNotFoundError):
    """An exported model's folder lacks a file (a copy cut short, a file deleted)."""


def expected_images(image_shape) -> str:
    """'[N, 8, 8, 1]' ('H' / 'W' where any size is accepted)."""
    names = ("H", "W", "C")
    return "[N, " + ", ".join(names[i] if d is None else str(d) for i, d in enumerate(image_shape)) + "]"


def check_images(images, image_shape) -> np.ndarray:
    """`images` as a uint8 [N, H, W, C] numpy array of the model's image shape, or ValueError."""
    images = np.asarray(images)
    fits = (
        images.dtype == np.uint8
        and images.ndim == 4
        and all(d is None or d == n for d, n in zip(image_shape, images.shape[1:]))
    )
    if not fits:
        raise ValueError(
            f"images must be uint8 {expected_images(image_shape)}, got {images.dtype} {list(images.shape)}"
        )
    return images


def read_description(path: str) -> dict[str, Any]:
    """model.json of an export, after checking that every file the export needs is there."""
    if not os.path.isdir(path):
        raise IncompleteExportError(f"exported model {path} not found: pass the --output of lgmm_jax.export")
    for name in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(path, name)):
            raise IncompleteExportError(
                f"exported model {path} is incomplete: {name} is missing; export it again "
                f"(python -m lgmm_jax.export --workdir=RUN --output=NEW_DIR)"
            )
    with open(os.path.join(path, MODEL_FILE)) as f:
        description = json.load(f)
    if description.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{os.path.join(path, MODEL_FILE)} has format {description.get('format')!r}, "
            f"this code reads {EXPORT_FORMAT!r}: export the model again with this version"
        )
    return description


def restore_variables(path: str, module, input_shape, mesh) -> dict:
    """The exported variables, restored (replicated on `mesh`) into the structure `module` initialises."""
    shapes = jax.eval_shape(lambda: initial_variables(module, jax.random.PRNGKey(0), tuple(input_shape)))
    target = {
        name: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)), tree)
        for name, tree in shapes.items()
        if jax.tree.leaves(tree)
    }
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(os.path.abspath(os.path.join(path, VARIABLES_DIR)), target)
    except (ValueError, KeyError, TypeError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(
            f"{os.path.join(path, VARIABLES_DIR)} does not fit the model {MODEL_FILE} describes "
            f"({first_line}): export the model again"
        ) from None


@dataclasses.dataclass(frozen=True)
class Calibration:
    """An export's calibration (`lgmm_jax.ood.conformal`): the held-out known-class scores, sorted, the
    class predicted for each, "marginal" or "class_conditional", and the alpha the export decides at."""

    scores: np.ndarray
    classes: np.ndarray
    kind: str
    alpha: float

    def p_values(self, scores, predicted) -> np.ndarray:
        """(1 + #{calibration scores <= score}) / (n + 1), within the predicted class when class-conditional."""
        if self.kind == "class_conditional":
            return conformal.class_p_values(self.scores, self.classes, scores, predicted)
        return conformal.p_values(self.scores, scores)


def read_calibration(path: str, description: dict) -> Calibration | None:
    """The export's calibration files (None for an export written before they existed)."""
    if "calibration_files" not in description:
        return None
    scores_file, classes_file = (os.path.join(path, name) for name in description["calibration_files"])
    for name in (scores_file, classes_file):
        if not os.path.isfile(name):
            raise IncompleteExportError(f"exported model {path} is incomplete: {os.path.basename(name)} is "
                                        "missing; export it again")
    return Calibration(np.load(scores_file, allow_pickle=False), np.load(classes_file, allow_pickle=False),
                       description["calibration"], float(description["alpha"]))


def decide(score: np.ndarray, predicted: np.ndarray, threshold: float, calibration: Calibration | None,
           alpha: float | None) -> dict[str, np.ndarray]:
    """`known` (and `p_value` when calibrated): p_value > alpha, alpha the export's unless given; an
    export without calibration compares the score with its threshold."""
    if calibration is None:
        if alpha is not None:
            raise ValueError("this export has no calibration scores, so it decides only at its own threshold: "
                             "export it again to choose alpha at prediction time")
        return {"known": score >= np.float32(threshold)}
    p_value = calibration.p_values(score, predicted)
    alpha = calibration.alpha if alpha is None else conformal.check_alpha(alpha)
    return {"p_value": p_value.astype(np.float32), "known": p_value > alpha}


@dataclasses.dataclass(frozen=True, eq=False)
class ExportedModel:
    """What every exported model holds (`batch_size`: rounded up to a multiple of the device count).

    label_names: the known classes' names. threshold: accept as known when score >= threshold, which
    keeps `threshold_tpr` of the held-out known data. score_name: the score. config: the training config;
    module / variables: the flax model and its variables. Each kind adds its jitted `forward` pass.
    """

    label_names: list[str]
    threshold: float
    score_name: str
    threshold_tpr: float
    head: str
    config: ml_collections.ConfigDict
    module: Any
    variables: dict
    batch_size: int
    mesh: Any
    description: dict
    calibration: Calibration | None


def common_parts(description: dict, path: str, batch_size: int | None, deployable) -> dict:
    """The `ExportedModel` fields of an export whose model.json is `description` (variables restored);
    `deployable(head)`: the scores an export of its kind computes (`Head.deployable_scores` or
    `Head.deployable_pixel_scores`)."""
    config = ml_collections.ConfigDict(description["config"])
    head = description["head"]
    scores = deployable(heads.named(head))
    if description["score"] not in scores:
        raise ValueError(f"score {description['score']!r} of {path} is not one of {scores}")
    mesh = make_mesh()
    module = heads.create_model(config.model, description["num_classes"])
    return dict(
        label_names=list(description["label_names"]),
        threshold=float(description["threshold"]),
        score_name=description["score"],
        threshold_tpr=float(description["threshold_tpr"]),
        head=head,
        config=config,
        module=module,
        variables=restore_variables(path, module, description["model_input_shape"], mesh),
        batch_size=padded_batch_size(batch_size or config.eval_batch_size, mesh.devices.size),
        mesh=mesh,
        description=description,
        calibration=read_calibration(path, description),
    )


def load(path: str, batch_size: int | None = None):
    """The exported model in folder `path` (its task's `ExportedModel`: a classifier's `Model`, a
    segmenter's `SegmentationModel`); `batch_size` defaults to the config's eval_batch_size.

    Raises:
      IncompleteExportError (a FileNotFoundError): a file of the export is missing (named in the message).
      ValueError: the export was written by another format version or does not fit its model.json.
    """
    description = read_description(path)
    return tasks.exported(description).load(description, path, batch_size)
