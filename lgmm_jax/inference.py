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

An exported segmenter (model.json's "task": "segmentation") loads as a `SegmentationModel`, whose
`predict(images)` takes uint8 [N, H, W, 3] of any one size and returns per-pixel `label` [N, H, W], `score`
[N, H, W] and `known` [N, H, W] at that size (`lgmm_jax.pixel_forward`: whole or slide inference as in
training's evaluation, class scores resized to the input before the argmax).
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

from lgmm_jax import forward, pixel_forward
from lgmm_jax.data import pipeline
from lgmm_jax.data.sources import ArraySource
from lgmm_jax.models.configured import create_model, initial_variables
from lgmm_jax.ood import conformal
from lgmm_jax.sharding import make_mesh, padded_batch_size, replicated

EXPORT_FORMAT = "lgmm_jax.export/1"
MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"
# The held-out known-class scores the threshold was calibrated on (sorted) and each one's predicted class.
CALIBRATION_FILES = ("calibration_scores.npy", "calibration_classes.npy")
# Files without which an export cannot be loaded (orbax's tree metadata and its array index).
REQUIRED_FILES = (MODEL_FILE, f"{VARIABLES_DIR}/_METADATA", f"{VARIABLES_DIR}/manifest.ocdbt")
# The scores a deployed model can compute from one image alone (no fitted statistics), per head.
DEPLOYABLE_SCORES = {
    "lgmm": ("likelihood", "marginal", "posterior"),
    "softmax": ("msp", "maxlogit", "energy"),
}
DEFAULT_SCORE = {"lgmm": "likelihood", "softmax": "msp"}


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


@dataclasses.dataclass(frozen=True, eq=False)
class Model(ExportedModel):
    """An exported classifier, ready to predict.

    known_labels: original label id of each known class, in model order (class i of the posterior).
    image_shape: (H, W, C) of the images `predict` takes (None where any size is accepted).
    """

    known_labels: list[int]
    image_shape: tuple
    preprocess: str
    normalization: pipeline.Normalization
    forward: Any

    def predict(self, images, alpha: float | None = None) -> dict[str, np.ndarray]:
        """Classify and score uint8 [N, H, W, C] images (numpy).

        Args:
          alpha: decide at this alpha instead of the export's (`lgmm_jax.ood.conformal`).
        Returns:
          label: int64 [N], the original label id of the most probable known class.
          log_posterior: float32 [N, C], log p(y|z) = log_softmax(log p(z|y) / T) at L_D's temperature T,
            the posterior L_D trained (L-GMM; T = 1 is Eq. 7), or log_softmax(logits) (softmax).
          score: float32 [N], `score_name`, higher = more like the known classes.
          p_value: float32 [N], the conformal p-value of the score among the calibration scores (of the
            predicted class when class-conditional).
          known: bool [N], p_value > alpha, i.e. score >= threshold at the export's alpha (False =
            rejected as unknown).
        Raises:
          ValueError: images of another dtype, rank or shape (the message gives the expected one).
        """
        images = check_images(images, self.image_shape)
        num_classes = len(self.known_labels)
        if len(images) == 0:
            empty = {
                "label": np.zeros([0], np.int64),
                "log_posterior": np.zeros([0, num_classes], np.float32),
                "score": np.zeros([0], np.float32),
                "known": np.zeros([0], bool),
            }
            return empty | ({"p_value": np.zeros([0], np.float32)} if self.calibration is not None else {})
        inputs = ArraySource("inference", images, np.zeros(len(images), np.int64), ("input",))
        batches = pipeline.eval_batches(
            inputs, batch_size=self.batch_size, preprocess=self.preprocess, normalization=self.normalization
        )
        outputs = forward.collect(batches, self.mesh, self.variables, self.forward)
        head_outputs = forward.predictions(self.head, outputs)
        temperature = forward.posterior_temperature_of(self.config)
        score = forward.score_table(outputs, {}, (self.score_name,), temperature)[self.score_name]
        predicted = np.argmax(head_outputs, axis=-1)
        return {
            "label": np.asarray(self.known_labels, np.int64)[predicted],
            "log_posterior": np.asarray(jax.nn.log_softmax(head_outputs / temperature, axis=-1), np.float32),
            "score": score.astype(np.float32),
            **decide(score, predicted, self.threshold, self.calibration, alpha),
        }


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentationModel(ExportedModel):
    """An exported segmenter, ready to predict per pixel (`batch_size` images per forward pass); label i
    of `predict` is class i. settings: how the network runs on an image (`pixel_forward.DenseSettings`)."""

    settings: pixel_forward.DenseSettings
    forward: Any

    def predict(self, images, alpha: float | None = None) -> dict[str, np.ndarray]:
        """Segment and score uint8 [N, H, W, 3] images (numpy).

        Args:
          alpha: decide at this alpha instead of the export's (pixels carry no conformal guarantee).
        Returns:
          label: int64 [N, H, W], the most probable known class of each pixel.
          score: float32 [N, H, W], `score_name` of each pixel, higher = more like the known classes.
          p_value: float32 [N, H, W], the score's p-value among the sampled validation pixels' scores.
          known: bool [N, H, W], p_value > alpha (False = an anomaly: no known class).
        Raises:
          ValueError: images of another dtype, rank or channel count.
        """
        images = check_images(images, (None, None, 3))
        if len(images) == 0:
            empty = np.zeros([0, *images.shape[1:3]])
            calibrated = {"p_value": empty.astype(np.float32)} if self.calibration is not None else {}
            return {"label": empty.astype(np.int64), "score": empty.astype(np.float32), "known": empty.astype(bool),
                    **calibrated}
        outputs = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start:start + self.batch_size])
            outputs += pixel_forward.predict_dense(
                self.forward, self.variables, self.mesh, pixel_forward.Fitted(), chunk,
                [image.shape[:2] for image in chunk], self.batch_size, self.settings,
                len(self.label_names), (self.score_name,),
            )
        score = np.stack([out[self.score_name] for out in outputs])
        label = np.stack([out["prediction"] for out in outputs]).astype(np.int64)
        return {"label": label, "score": score.astype(np.float32),
                **decide(score, label, self.threshold, self.calibration, alpha)}


def common_parts(description: dict, path: str, batch_size: int | None, deployable: dict) -> dict:
    """The `ExportedModel` fields of an export whose model.json is `description` (variables restored)."""
    config = ml_collections.ConfigDict(description["config"])
    head = description["head"]
    if description["score"] not in deployable[head]:
        raise ValueError(f"score {description['score']!r} of {path} is not one of {deployable[head]}")
    mesh = make_mesh()
    module = create_model(config.model, description["num_classes"])
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


def load_segmenter(description: dict, path: str, batch_size: int | None) -> SegmentationModel:
    """The `SegmentationModel` of an export whose model.json is `description`."""
    parts = common_parts(description, path, batch_size, pixel_forward.DEPLOYABLE_PIXEL_SCORES)
    dense, normalization = description["dense"], description["normalization"]
    settings = pixel_forward.DenseSettings(
        inference=dense["inference"], crop=tuple(dense["crop"]), stride=tuple(dense["stride"]),
        eval_scale=tuple(dense["eval_scale"]), size_divisor=int(dense["size_divisor"]),
        mean=tuple(normalization["mean"]), std=tuple(normalization["std"]),
    )
    forward_fn = pixel_forward.make_dense_forward(parts["module"], parts["head"], parts["mesh"], settings)
    return SegmentationModel(**parts, settings=settings, forward=forward_fn)


def load(path: str, batch_size: int | None = None) -> Model | SegmentationModel:
    """The exported model in folder `path`; `batch_size` defaults to the config's eval_batch_size.

    Raises:
      IncompleteExportError (a FileNotFoundError): a file of the export is missing (named in the message).
      ValueError: the export was written by another format version or does not fit its model.json.
    """
    description = read_description(path)
    if description.get("task") == "segmentation":
        return load_segmenter(description, path, batch_size)
    parts = common_parts(description, path, batch_size, DEPLOYABLE_SCORES)
    normalization = description["normalization"]
    return Model(
        **parts,
        known_labels=[int(label) for label in description["known_labels"]],
        image_shape=tuple(description["image_shape"]),
        preprocess=description["preprocess"],
        normalization=pipeline.Normalization(tuple(normalization["mean"]), tuple(normalization["std"])),
        forward=forward.make_forward(parts["module"], parts["head"], parts["mesh"]),
    )
