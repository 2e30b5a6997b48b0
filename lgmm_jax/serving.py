"""An exported model as one compiled function that runs without this library: `model.stablehlo`.

`jax.export` serialises the whole inference path as StableHLO, the network's arrays included as constants:
uint8 images in; the evaluation normalisation, the encoder, the head, the open-set score and the
conformal decision inside; `label`, `score`, `known` (and, for a classifier, `p_value`) out. The batch
dimension is symbolic (any batch size), and the function is lowered for the cpu, cuda and tpu platforms.
Any later JAX runs it, with no model code and no version of this package:

    import jax, numpy as np
    with open("exported/model.stablehlo", "rb") as f:
        compiled = jax.export.deserialize(bytearray(f.read()))
    out = compiled.call(images)   # uint8 [N, H, W, C], model.json's "stablehlo" "input"
    out["label"], out["score"], out["known"]

What it computes is `inference`'s `predict` at the export's alpha:

- a classifier: label = the original label id of argmax_y of the class scores (log p(z|y), Eq. 4, or
  the logits); score = the export's score (`lgmm_jax.ood.scores`); p_value = (1 + #{calibration scores
  <= score}) / (n + 1) among the export's calibration scores (those of the predicted class when
  class-conditional), and known = p_value > alpha, i.e. #{calibration scores <= score} >= floor(alpha
  (n + 1)) (`lgmm_jax.ood.conformal`). Presets that resize and crop to the network's input (ImageNet's)
  are the one step left outside: the function takes the cropped [N, 224, 224, C] images, since PIL's
  antialiased resize is not an XLA operation.
- a segmenter: at one image size fixed at export (model.json), per pixel label = argmax_y, score, and
  known = score >= threshold, after the network runs whole or by slide windows on the image padded to a
  multiple of the size divisor, as `lgmm_jax.pixel_forward` runs it (no p-value: its calibration sample
  of pixels is too large to carry as a constant, and pixels carry no guarantee).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lgmm_jax import pixel_forward
from lgmm_jax.ood import conformal, scores

STABLEHLO_FILE = "model.stablehlo"
PLATFORMS = ("cpu", "cuda", "tpu")
BATCH = "b"  # the symbolic batch dimension's name


def normalized(images: jax.Array, mean, std) -> jax.Array:
    """uint8 [..., C] -> float32 (image / 255 - mean) / std, as the evaluation pipeline normalises."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (images.astype(jnp.float32) / np.float32(255.0) - mean) / std


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


def classifier_function(module, variables, description: dict, calibration_scores, calibration_classes):
    """images uint8 [B, H, W, C] -> {label, score, p_value, known}, as `inference.Model.predict`."""
    head, score_name = description["head"], description["score"]
    normalization = description["normalization"]
    temperature = float(description["config"]["loss"].get("discriminative_temperature", 1.0)) \
        if head == "lgmm" else 1.0
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
        class_scores = (outputs[1] if head == "lgmm" else outputs).astype(jnp.float32)
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


def segmenter_function(module, variables, description: dict, settings: pixel_forward.DenseSettings):
    """images uint8 [B, H, W, 3] -> per-pixel {label, score, known}, as `inference.SegmentationModel.predict`
    on images of the export's size."""
    head, score_name = description["head"], description["score"]
    num_classes, threshold = int(description["num_classes"]), np.float32(description["threshold"])

    def serve(images):
        height, width = images.shape[1:3]
        padded = [settings.size_divisor * math.ceil(side / settings.size_divisor) for side in (height, width)]
        inputs = normalized(images, settings.mean, settings.std)
        inputs = jnp.pad(inputs, ((0, 0), (0, padded[0] - height), (0, padded[1] - width), (0, 0)))
        maps_fn = lambda x: pixel_forward.network_maps(module, head, variables, x, None)  # noqa: E731
        maps = pixel_forward.dense_maps(maps_fn, inputs, settings)[:, :height, :width]
        score = pixel_forward.score_maps(maps, num_classes, (score_name,), pixel_forward.Fitted())[score_name]
        return {"label": jnp.argmax(maps[..., :num_classes], axis=-1).astype(jnp.int32), "score": score,
                "known": score >= threshold}

    return serve


def signature(exported: jax.export.Exported) -> dict[str, Any]:
    """model.json's "stablehlo" entry: the file, platforms, and the input's and outputs' dtype and shape
    (the symbolic batch as "b")."""
    def spec(aval):
        return {"dtype": str(aval.dtype), "shape": [d if isinstance(d, int) else str(d) for d in aval.shape]}

    outputs = jax.tree.unflatten(exported.out_tree, [spec(aval) for aval in exported.out_avals])
    return {"file": STABLEHLO_FILE, "platforms": list(exported.platforms), "input": spec(exported.in_avals[0]),
            "outputs": outputs}


def export_function(serve, input_shape, platforms=PLATFORMS) -> jax.export.Exported:
    """`serve` exported for uint8 images of `input_shape` ([H, W, C]) with a symbolic batch."""
    shape = jax.export.symbolic_shape(f"{BATCH}, " + ", ".join(str(int(d)) for d in input_shape))
    return jax.export.export(jax.jit(serve), platforms=platforms)(jax.ShapeDtypeStruct(shape, jnp.uint8))


def compile_export(module, variables: dict, description: dict, input_shape, calibration_scores=None,
                   calibration_classes=None, settings: pixel_forward.DenseSettings | None = None
                   ) -> tuple[bytes, dict[str, Any]]:
    """(serialised StableHLO, its model.json signature) of an export's model, taking uint8 images of
    `input_shape` ([H, W, C]). A segmenter passes its dense `settings`, a classifier its calibration."""
    host_variables = jax.device_get(variables)  # constants of the function, not arrays on this mesh
    if settings is not None:
        serve = segmenter_function(module, host_variables, description, settings)
    else:
        serve = classifier_function(module, host_variables, description, calibration_scores, calibration_classes)
    exported = export_function(serve, input_shape)
    return bytes(exported.serialize()), signature(exported)
