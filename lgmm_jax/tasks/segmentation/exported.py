"""An exported segmenter (`lgmm_jax.deploy.inference.load` returns one for a segmentation export): `predict(images)`
takes uint8 [N, H, W, 3] of any one size and returns per-pixel `label`, `score` and `known` at that size
(`forward`: whole or slide inference as in training's evaluation, class scores resized to the input
before the argmax)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lgmm_jax.deploy.inference import ExportedModel, check_images, common_parts, decide
from lgmm_jax.tasks.segmentation import forward


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentationModel(ExportedModel):
    """An exported segmenter, ready to predict per pixel (`batch_size` images per forward pass); label i
    of `predict` is class i. settings: how the network runs on an image (`forward.DenseSettings`)."""

    settings: forward.DenseSettings
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
            outputs += forward.predict_dense(
                self.forward, self.variables, self.mesh, forward.Fitted(), chunk,
                [image.shape[:2] for image in chunk], self.batch_size, self.settings,
                len(self.label_names), (self.score_name,),
            )
        score = np.stack([out[self.score_name] for out in outputs])
        label = np.stack([out["prediction"] for out in outputs]).astype(np.int64)
        return {"label": label, "score": score.astype(np.float32),
                **decide(score, label, self.threshold, self.calibration, alpha)}


def load(description: dict, path: str, batch_size: int | None) -> SegmentationModel:
    """The `SegmentationModel` of an export whose model.json is `description`."""
    parts = common_parts(description, path, batch_size, lambda head: head.deployable_pixel_scores)
    dense, normalization = description["dense"], description["normalization"]
    settings = forward.DenseSettings(
        inference=dense["inference"], crop=tuple(dense["crop"]), stride=tuple(dense["stride"]),
        eval_scale=tuple(dense["eval_scale"]), size_divisor=int(dense["size_divisor"]),
        mean=tuple(normalization["mean"]), std=tuple(normalization["std"]),
        align_corners=bool(dense.get("align_corners", False)),
    )
    forward_fn = forward.make_dense_forward(parts["module"], parts["mesh"], settings)
    return SegmentationModel(**parts, settings=settings, forward=forward_fn)
