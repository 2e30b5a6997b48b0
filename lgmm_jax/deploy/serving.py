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

What it computes is `inference`'s `predict` at the export's alpha (each task's `serving` module builds the
function; this one compiles it):

- a classifier: label = the original label id of argmax_y of the class scores (log p(z|y), Eq. 4, or
  the logits); score = the export's score (`lgmm_jax.ood.scores`); p_value = (1 + #{calibration scores
  <= score}) / (n + 1) among the export's calibration scores (those of the predicted class when
  class-conditional), and known = p_value > alpha, i.e. #{calibration scores <= score} >= floor(alpha
  (n + 1)) (`lgmm_jax.ood.conformal`). Presets that resize and crop to the network's input (ImageNet's)
  are the one step left outside: the function takes the cropped [N, 224, 224, C] images, since PIL's
  antialiased resize is not an XLA operation.
- a segmenter: at one image size fixed at export (model.json), per pixel label = argmax_y, score, and
  known = score >= threshold, after the network runs whole or by slide windows on the image padded to a
  multiple of the size divisor, as evaluation runs it (no p-value: its calibration sample
  of pixels is too large to carry as a constant, and pixels carry no guarantee).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


STABLEHLO_FILE = "model.stablehlo"
PLATFORMS = ("cpu", "cuda", "tpu")
BATCH = "b"  # the symbolic batch dimension's name


def normalized(images: jax.Array, mean, std) -> jax.Array:
    """uint8 [..., C] -> float32 (image / 255 - mean) / std, as the evaluation pipeline normalises."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (images.astype(jnp.float32) / np.float32(255.0) - mean) / std


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


def compile_export(serve, input_shape) -> tuple[bytes, dict[str, Any]]:
    """(serialised StableHLO, its model.json signature) of `serve`, a task's inference function
    (`lgmm_jax.tasks.<task>.serving`) with the network's host arrays as constants, taking uint8 images of
    `input_shape` ([H, W, C])."""
    exported = export_function(serve, input_shape)
    return bytes(exported.serialize()), signature(exported)
