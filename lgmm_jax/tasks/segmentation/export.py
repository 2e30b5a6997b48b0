"""A segmenter's export: model.json's description (with how the model runs on an image, `dense`) and its
calibration on a strided sample of the validation split's labelled pixels (the folder's layout:
`lgmm_jax.export`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from lgmm_jax import heads
from lgmm_jax.deploy import exporting, inference, serving
from lgmm_jax.tasks.segmentation import evaluation, forward
from lgmm_jax.tasks.segmentation.serving import serving_function
from lgmm_jax.runtime.sharding import eval_batch_size
from lgmm_jax.tasks.segmentation import data

if TYPE_CHECKING:  # the trainer's restored run; a task imports nothing of the training run
    from lgmm_jax.training.restore import TrainedModel


def segmentation_calibration(trained: TrainedModel, score_name: str, mesh
                             ) -> tuple[np.ndarray, int, tuple[int, int]]:
    """(sampled labelled validation pixels' scores, number of validation images, the network input size of
    the first validation image), sampled as the evaluation samples them for its thresholds."""
    config, protocol = trained.config, trained.protocol
    source = data.source(config, protocol.dataset, protocol.validation_split)
    settings = evaluation.settings_of(config)
    first_size = forward.eval_image(source[0]["image"], settings).shape[:2]
    predictor = evaluation.Predictor(
        forward=forward.make_dense_forward(trained.model, mesh, settings),
        variables=trained.variables, mesh=mesh, fitted=forward.Fitted(),
        batch_size=eval_batch_size(config), settings=settings, num_classes=trained.num_classes,
    )
    sampled = evaluation.validation_pixel_scores(config, predictor, source, (score_name,))
    return sampled[score_name], len(source), first_size


def describe_segmenter(trained: TrainedModel, origin: dict, score_name: str,
                       calibration: exporting.Calibration, num_images: int) -> dict[str, Any]:
    """model.json's content for a segmentation run (see the module docstring)."""
    config, protocol, source = trained.config, trained.protocol, trained.train_source
    settings = evaluation.settings_of(config)
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
            "align_corners": settings.align_corners,
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


def export_contents(trained: TrainedModel, origin: dict, score_name: str | None, mesh, alpha: float,
                    calibration: str) -> exporting.ExportContents:
    """model.json's description, the calibration pixels' scores and the StableHLO of a trained segmenter."""
    head = heads.get(trained.config.model)
    score_name = exporting.choose_score(head.name, score_name, head.default_pixel_score, head.deployable_pixel_scores,
                                        "segmenter")
    if calibration != "marginal":
        raise ValueError("--calibration=class_conditional is for classifiers: a segmenter's calibration "
                         "pixels are not exchangeable; use --calibration=marginal")
    scores, num_images, size = segmentation_calibration(trained, score_name, mesh)
    calibrated = exporting.calibration_of(scores, np.zeros(len(scores)), calibration, alpha)
    description = describe_segmenter(trained, origin, score_name, calibrated, num_images)
    serve = serving_function(trained.model, jax.device_get(trained.variables), description,
                             evaluation.settings_of(trained.config))
    stablehlo, description["stablehlo"] = serving.compile_export(serve, (*size, 3))
    return exporting.ExportContents(description, calibrated.files(), {serving.STABLEHLO_FILE: stablehlo})
