"""Classification: an example is an image and its class (the sources of `lgmm_jax.data.sources`).

Training batches come from `pipeline.train_iterator` with the protocol's known classes relabelled
0..C-1; the L-GMM objective is `objective.lgmm_objective` over the batch's real images, the softmax
counterpart's loss the cross-entropy of its logits, or of the soft targets of its batch recipe (Mixup /
CutMix / label smoothing, mmcls's Swin recipe; L-GMM takes none of it: a mixed image's latent belongs to
no class).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lgmm_jax.method import losses, mixing
from lgmm_jax.tasks import report as lgmm_report
from lgmm_jax.data import pipeline
from lgmm_jax.data.settings import (
    input_image_size,
    normalization_name,
    threads_of,
    workers_for,
)
from lgmm_jax.models.configured import is_segmenter
from lgmm_jax.method.objective import lgmm_objective
from lgmm_jax.heads.base import StepLosses
from lgmm_jax.tasks.base import Task
from lgmm_jax.tasks.classification import data, evaluation, export, report


def softmax_batch_recipe(config: ml_collections.ConfigDict) -> dict | None:
    """The softmax counterpart's batch recipe from `config.softmax` (None when the config has none)."""
    recipe = config.get("softmax")
    if recipe is None:
        return None
    return {name: float(recipe.get(name, 0.0)) for name in ("label_smoothing", "mixup_alpha", "cutmix_alpha")}


def batch_objective(z, batch, head_params, log_weights, memory, objective, key):
    return lgmm_objective(z, batch["label"], batch["mask"], head_params, log_weights, memory, objective, key=key)


def no_auxiliary_loss(updates, batch) -> jax.Array:
    return jnp.zeros((), jnp.float32)


def cross_entropy(logits, batch, targets, updates) -> jax.Array:
    """Cross-entropy over the batch's real images: of the labels, or of a mixed batch's soft targets."""
    if targets is not None:
        return losses.masked_mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets), batch["mask"])
    return losses.softmax_cross_entropy(logits, batch["label"], batch["mask"])


def image_accuracy(class_scores, batch) -> jax.Array:
    """Share of the batch's real images whose argmax class is their label."""
    correct = (jnp.argmax(class_scores, -1) == batch["label"]).astype(jnp.float32)
    return losses.masked_mean(correct, batch["mask"])


def batch_mixer(recipe: dict, num_classes: int):
    """(key, images, batch) -> (mixed images, soft targets) by `mixing.mix_batch`."""

    def mix(key, images, batch):
        return mixing.mix_batch(key, images, batch["label"], num_classes, mask=batch["mask"], **recipe)

    return mix


class ClassificationTask(Task):
    name = "classification"

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        if is_segmenter(config.model.encoder):
            raise ValueError(f"task='classification' needs an image classifier's encoder as model.encoder, "
                             f"got {config.model.encoder!r}")
        model = config.model
        if model.get("latent_projection", "dense") != "dense" or model.get("class_norm", False):
            raise ValueError("model.latent_projection and model.class_norm are segmenters' options (GMMSeg's head): "
                             "leave them at 'dense' and False for task='classification'")

    def data_source(self, config, ref_or_name, split=None):
        return data.source(config, ref_or_name, split)

    def train_stream(self, config, protocol, source, preset: str):
        return pipeline.train_iterator(
            source,
            batch_size=config.batch_size,
            seed=config.seed,
            preprocess=preset,
            known_classes=protocol.known_classes,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            normalization=normalization_name(config, protocol.dataset),
            image_size=input_image_size(config),
            workers=workers_for(config, source),
            threads=threads_of(config),
            normalize=not pipeline.normalizes_on_device(preset),
        )

    def model_input_shape(self, config, train_source, preset: str) -> tuple:
        """The training images' shape, `data.image_size` with their channels, or the ImageNet crop where the
        preset resizes."""
        image_shape = tuple(train_source.image_shape)
        if pipeline.resizes_to_network_input(preset):
            return (pipeline.IMAGENET_TRAIN_SIZE, pipeline.IMAGENET_TRAIN_SIZE, image_shape[-1])
        if input_image_size(config) is not None:
            return (*input_image_size(config), image_shape[-1])
        return image_shape

    def step_losses(self, config, num_classes: int) -> StepLosses:
        recipe = softmax_batch_recipe(config)
        mixing_on = recipe is not None and any(value > 0 for value in recipe.values())
        return StepLosses(
            lgmm_objective=batch_objective,
            auxiliary_loss=no_auxiliary_loss,
            softmax_loss=cross_entropy,
            accuracy=image_accuracy,
            mix=batch_mixer(recipe, num_classes) if mixing_on else None,
            input_normalization=pipeline.get_normalization(normalization_name(config, config.dataset), None),
        )

    def own_split_name(self, ref) -> str:
        return "unknown_classes"

    def evaluate(self, config, model, variables, protocol, mesh):
        return evaluation.evaluate(config, model, variables, protocol, mesh, self.unknown_set_names(protocol))

    def write_outputs(self, folder: str, results: dict, plots: evaluation.ScoreSets, with_figures: bool) -> None:
        """report.md, scores.npz and, `with_figures`, each unknown set's ROC and histogram plots."""
        lgmm_report.write_report(folder, report.render(results))
        if with_figures:
            report.write_plots(folder, {name: (plots.known_against(name), unknown)
                                        for name, unknown in plots.unknown.items()})
        evaluation.write_scores(folder, plots)

    def summary_line(self, results: dict) -> str:
        return report.summary_line(results)

    def export_contents(self, trained, origin, score_name, mesh, alpha, calibration):
        return export.export_contents(trained, origin, score_name, mesh, alpha, calibration)


TASK = ClassificationTask()
