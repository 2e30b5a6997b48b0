"""A segmenter's inference as one jax function for `model.stablehlo` (`lgmm_jax.deploy.serving`): uint8 images of
the export's size -> per-pixel label, score and decision, as `exported.SegmentationModel.predict` computes
them."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from lgmm_jax.deploy.serving import normalized
from lgmm_jax.tasks.segmentation import forward


def serving_function(module, variables, description: dict, settings: forward.DenseSettings):
    """images uint8 [B, H, W, 3] -> per-pixel {label, score, known}, as `exported.SegmentationModel.predict`
    on images of the export's size."""
    score_name = description["score"]
    num_classes, threshold = int(description["num_classes"]), np.float32(description["threshold"])

    def serve(images):
        height, width = images.shape[1:3]
        divisor = max(settings.size_divisor, 1)  # 0: unpadded
        padded = [divisor * math.ceil(side / divisor) for side in (height, width)]
        inputs = normalized(images, settings.mean, settings.std)
        inputs = jnp.pad(inputs, ((0, 0), (0, padded[0] - height), (0, padded[1] - width), (0, 0)))
        maps_fn = lambda x: forward.network_maps(module, variables, x, None)  # noqa: E731
        maps = forward.dense_maps(maps_fn, inputs, settings)[:, :height, :width]
        score = forward.score_maps(maps, num_classes, (score_name,), forward.Fitted())[score_name]
        return {"label": jnp.argmax(maps[..., :num_classes], axis=-1).astype(jnp.int32), "score": score,
                "known": score >= threshold}

    return serve
