"""A classifier's inference as one jax function for `model.stablehlo` (`lgmm_jax.deploy.serving`): uint8 images
-> label, score, conformal p-value and decision, as `exported.Model.predict` computes them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lgmm_jax import heads
from lgmm_jax.ood import conformal, scores
from lgmm_jax.deploy.serving import normalized


def classifier_score(name: str, class_scores: jax.Array, temperature: float) -> jax.Array:
    """[B] score `name` (a deployable score of `inference`) of the class scores [B, C]."""
    if name == "posterior":
        return scores.posterior(class_scores, temperature)
    return getattr(scores, name)(class_scores)


def conformal_counts(score: jax.Array, predicted: jax.Array, calibration_scores: np.ndarray,
                     calibration_classes: np.ndarray | None) -> jax.Array:
    """[B] #{calibration scores <= score}, among those of the predicted class when classes are given."""
    below = calibration_scores[None, :] <= score[:, None]
    if calibration_classes is not None:
        below &= calibration_classes[None, :] == predicted[:, None]
    return jnp.sum(below, axis=1, dtype=jnp.int32)


def serving_function(module, variables, description: dict, calibration_scores, calibration_classes):
    """images uint8 [B, H, W, C] -> {label, score, p_value, known}, as `exported.Model.predict`."""
    score_name, normalization = description["score"], description["normalization"]
    config = ml_collections.ConfigDict(description["config"])
    head = heads.get(config.model)
    temperature = head.posterior_temperature(config)
    known_labels = np.asarray(description["known_labels"], np.int32)
    calibration_scores = np.asarray(calibration_scores, np.float32)
    class_conditional = description["calibration"] == "class_conditional"
    classes = np.asarray(calibration_classes, np.int32) if class_conditional else None
    num_classes = len(known_labels)
    sizes = (np.bincount(classes, minlength=num_classes) if class_conditional
             else np.full(num_classes, len(calibration_scores)))
    alpha = float(description["alpha"])
    ranks = np.array([conformal.rank_of_threshold(int(n), alpha) for n in sizes], np.int32)

    def serve(images):
        outputs = module.apply(variables, normalized(images, normalization["mean"], normalization["std"]),
                               train=False)
        class_scores = head.served_class_scores(outputs).astype(jnp.float32)
        predicted = jnp.argmax(class_scores, axis=-1)
        score = classifier_score(score_name, class_scores, temperature)
        counts = conformal_counts(score, predicted, calibration_scores, classes)
        return {
            "label": jnp.asarray(known_labels)[predicted],
            "score": score,
            "p_value": (1.0 + counts) / (jnp.asarray(sizes, jnp.float32)[predicted] + 1.0),
            "known": counts >= jnp.asarray(ranks)[predicted],
        }

    return serve
