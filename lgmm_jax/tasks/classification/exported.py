"""An exported classifier (`lgmm_jax.deploy.inference.load` returns one for a classification export).

Images go through exactly the evaluation pipeline of training (`pipeline.eval_batches`: the preset's
evaluation transform, the training dataset's normalisation, padded batches of a fixed size, so the
network is compiled once).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from lgmm_jax.deploy import forward
from lgmm_jax.data import pipeline
from lgmm_jax.data.sources import ArraySource, ListSource
from lgmm_jax.deploy.inference import ExportedModel, check_images, common_parts, decide


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
    image_size: tuple[int, int] | None = None

    def inputs(self, images):
        """The images as a source of the evaluation pipeline: a uint8 [N, H, W, C] array, or a list of
        uint8 [H, W, C] arrays of any sizes where the model takes any size (`image_shape` None)."""
        if isinstance(images, (list, tuple)):
            for image in images:
                check_images(np.asarray(image)[None], self.image_shape)
            return ListSource("inference", [np.asarray(image) for image in images], np.zeros(len(images), np.int64),
                              ("input",))
        images = check_images(images, self.image_shape)
        return ArraySource("inference", images, np.zeros(len(images), np.int64), ("input",))

    def predict(self, images, alpha: float | None = None) -> dict[str, np.ndarray]:
        """Classify and score uint8 [N, H, W, C] images (numpy), or a list of N uint8 [H, W, C] images of
        any sizes where the model takes any size: each is brought to the network's input as the
        evaluation of training did (the preset's transform, or the resize to `image_size`).

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
        inputs = self.inputs(images)
        num_classes = len(self.known_labels)
        if len(inputs) == 0:
            empty = {
                "label": np.zeros([0], np.int64),
                "log_posterior": np.zeros([0, num_classes], np.float32),
                "score": np.zeros([0], np.float32),
                "known": np.zeros([0], bool),
            }
            return empty | ({"p_value": np.zeros([0], np.float32)} if self.calibration is not None else {})
        batches = pipeline.eval_batches(
            inputs, batch_size=self.batch_size, preprocess=self.preprocess, normalization=self.normalization,
            image_size=self.image_size,
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


def load(description: dict, path: str, batch_size: int | None) -> Model:
    """The `Model` of an export whose model.json is `description`."""
    parts = common_parts(description, path, batch_size, lambda head: head.deployable_scores)
    normalization = description["normalization"]
    return Model(
        **parts,
        known_labels=[int(label) for label in description["known_labels"]],
        image_shape=tuple(description["image_shape"]),
        preprocess=description["preprocess"],
        image_size=tuple(description["image_size"]) if description.get("image_size") else None,
        normalization=pipeline.Normalization(tuple(normalization["mean"]), tuple(normalization["std"])),
        forward=forward.make_forward(parts["module"], parts["head"], parts["mesh"]),
    )
