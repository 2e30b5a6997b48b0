"""The discriminative counterpart: the same encoder closed by a linear softmax classifier (the paper's
baselines), trained by the task's cross-entropy, with the softmax model's open-set scores (MSP, max-logit,
energy, ODIN, KL matching, Mahalanobis and OpenOOD v1.5's post-hoc scores)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lgmm_jax.heads.base import (
    TRAIN_COLLECTIONS,
    Head,
    StepLosses,
    encoder_variables,
    network_images,
    optimizer_step,
    step_key,
)
from lgmm_jax.models.backbones import create_classifier
from lgmm_jax.models.configured import backbone_options, compute_dtype, decoder_options, is_segmenter
from lgmm_jax.models.segmenter import create_segmenter
from lgmm_jax.ood.posthoc import OOD_TUNED_SCORES, POSTHOC_SCORES
from lgmm_jax.ood.scores import SOFTMAX_SCORES


def softmax_train_step(
    state, batch: dict, *, model, optimizer: optax.GradientTransformation, task_losses: StepLosses,
) -> tuple[Any, dict]:
    """The discriminative counterpart: the same encoder with a linear softmax head and the task's
    cross-entropy. Where the task has a batch recipe (`task_losses.mix`) the images are mixed first and the
    loss is taken against the soft targets; accuracy is still counted against the batch's labels."""
    images, targets = network_images(batch, task_losses), None
    if task_losses.mix is not None:
        images, targets = task_losses.mix(jax.random.fold_in(step_key(state), 2), images, batch)

    def loss_fn(params):
        logits, updates = model.apply(
            encoder_variables(state, params),
            images,
            train=True,
            mutable=TRAIN_COLLECTIONS,
            rngs={"dropout": step_key(state)},
        )
        return task_losses.softmax_loss(logits, batch, targets, updates), (logits, updates)

    (loss, (logits, updates)), params, opt_state = optimizer_step(loss_fn, state, optimizer)
    metrics = {"loss": loss, "accuracy": task_losses.accuracy(logits, batch)}
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=updates.get("batch_stats", state.batch_stats),
        opt_state=opt_state,
    )
    return new_state, metrics


class SoftmaxHead(Head):
    name = "softmax"
    scores = SOFTMAX_SCORES + POSTHOC_SCORES + OOD_TUNED_SCORES
    deployable_scores = ("msp", "maxlogit", "energy")
    default_score = "msp"
    pixel_scores = ("msp", "maxlogit", "entropy", "sml", "mahalanobis")
    deployable_pixel_scores = ("msp", "maxlogit", "entropy")
    default_pixel_score = "msp"

    def create_model(self, model_config, num_classes):
        dtype = compute_dtype(model_config.dtype)
        if is_segmenter(model_config.encoder):
            return create_segmenter(model_config.encoder, num_classes, self.name, dtype=dtype,
                                    decoder_kwargs=decoder_options(model_config))
        return create_classifier(model_config.encoder, num_classes, dtype=dtype, **backbone_options(model_config))

    def train_step(self, config, model, optimizer, task_losses):
        return functools.partial(softmax_train_step, model=model, optimizer=optimizer, task_losses=task_losses)

    def inference_outputs(self, model, variables, images, with_features):
        """`logits` [B, C] and the backbone's pooled `features` [B, F] (for Mahalanobis and the feature-based
        post-hoc scores)."""
        logits = model.apply(variables, images, train=False)
        features = model.apply(variables, images, False, method=lambda m, x, t: m.backbone(x, t))
        return {"logits": logits, "features": features.astype(jnp.float32)}

    def class_scores(self, outputs):
        return outputs["logits"]

    def served_class_scores(self, applied):
        """The model returns the logits."""
        return applied

    def final_layer(self, params):
        """The classifier, which ViM, ReAct and ASH recompute logits through."""
        return params["classifier"]["kernel"], params["classifier"]["bias"]


HEAD = SoftmaxHead()
