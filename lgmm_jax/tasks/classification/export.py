"""A classifier's export: model.json's description and its calibration on the validation split's images
(the folder's layout: `lgmm_jax.export`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from lgmm_jax import heads
from lgmm_jax.deploy import exporting, forward, inference, serving
from lgmm_jax.data import pipeline, settings
from lgmm_jax.tasks.classification.serving import serving_function
from lgmm_jax.data import protocols
from lgmm_jax.tasks.classification import data

if TYPE_CHECKING:  # the trainer's restored run; a task imports nothing of the training run
    from lgmm_jax.training.restore import TrainedModel


def validation_scores(trained: TrainedModel, score_name: str, mesh) -> tuple[np.ndarray, np.ndarray]:
    """([N] scores, [N] predicted classes) of the known-class validation images, computed as
    `evaluation.evaluate` computes them."""
    config, protocol = trained.config, trained.protocol
    source = data.source(config, protocol.dataset, protocol.validation_split)
    batches = data.eval_stream(config, protocol, source, protocol.known_classes)
    forward_fn = forward.make_forward(trained.model, config.model.head, mesh)
    outputs = forward.collect(batches, mesh, trained.variables, forward_fn)
    temperature = forward.posterior_temperature_of(config)
    scores = forward.score_table(outputs, {}, (score_name,), temperature)[score_name]
    return scores, np.argmax(forward.predictions(config.model.head, outputs), axis=-1)


def describe(
    trained: TrainedModel, origin: dict, score_name: str, calibration: exporting.Calibration
) -> dict[str, Any]:
    """model.json's content (see the module docstring)."""
    config, protocol, source = trained.config, trained.protocol, trained.train_source
    known = protocols.known_label_ids(protocol, source)
    preset = settings.preprocess_preset(config, protocol)
    normalization_dataset = settings.normalization_name(config, protocol.dataset)
    normalization = pipeline.get_normalization(normalization_dataset, source)
    image_size = settings.input_image_size(config)
    image_shape = list(source.image_shape)
    if pipeline.resizes_to_network_input(preset) or image_size is not None:  # any size goes in: resized first
        image_shape = [None, None, image_shape[-1]]
    return {
        "format": inference.EXPORT_FORMAT,
        "head": config.model.head,
        "encoder": config.model.encoder,
        "num_classes": trained.num_classes,
        "known_labels": [int(label) for label in known],
        "label_names": [str(source.label_names[label]) for label in known],
        "classes": settings.class_table(config),
        "preprocess": preset,
        "image_size": list(image_size) if image_size is not None else None,
        "normalization": {
            "dataset": normalization_dataset,
            "mean": [float(v) for v in normalization.mean],
            "std": [float(v) for v in normalization.std],
        },
        "image_shape": image_shape,
        "model_input_shape": list(trained.input_shape),
        "score": score_name,
        **calibration.description(trained.num_classes),
        "threshold_data": {
            "dataset": protocol.dataset,
            "split": protocol.validation_split,
            "num_examples": int(len(calibration.scores)),
        },
        "protocol": protocol.name,
        "checkpoint": origin,
        "variables": inference.VARIABLES_DIR,
        "config": json.loads(trained.config.to_json()),
    }


def export_contents(trained: TrainedModel, origin: dict, score_name: str | None, mesh, alpha: float,
                    calibration: str) -> exporting.ExportContents:
    """model.json's description, the calibration arrays and the StableHLO of a trained classifier."""
    head = heads.get(trained.config.model)
    score_name = exporting.choose_score(head.name, score_name, head.default_score, head.deployable_scores, "model")
    calibrated = exporting.calibration_of(*validation_scores(trained, score_name, mesh), calibration, alpha)
    description = describe(trained, origin, score_name, calibrated)
    input_shape = list(description["image_shape"])
    if None in input_shape:  # resized and cropped to the network's input outside the compiled function
        input_shape = description["model_input_shape"]
    serve = serving_function(trained.model, jax.device_get(trained.variables), description, calibrated.scores,
                             calibrated.classes)
    stablehlo, description["stablehlo"] = serving.compile_export(serve, input_shape)
    return exporting.ExportContents(description, calibrated.files(), {serving.STABLEHLO_FILE: stablehlo})
