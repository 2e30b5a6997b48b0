"""L-GMM's per-pixel head trained by GMMSeg's update rule (`model.gmm_update='gmmseg'`, `method=gmmseg`).

The model, the class scores and the open-set scores are the L-GMM head's; what differs is how it learns
(`lgmm_jax.method.gmmseg`, as GMMSeg's released code does): the encoder by the decode and component
cross-entropies, the Gaussians by no gradient but momentum updates toward queues of admitted latents, which
the train state carries in place of the memory bank. Its losses are per pixel: it trains segmenters only.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import optax

from lgmm_jax.heads.base import StepLosses, network_images, optimizer_step, training_latents
from lgmm_jax.heads.lgmm import LGMMHead
from lgmm_jax.method.gmmseg import GMMSegConfig, create_queue, enqueue, pixel_objective, updated_head
from lgmm_jax.models.configured import is_segmenter
from lgmm_jax.models.segmenter import auxiliary_logits


def gmmseg_config(config) -> GMMSegConfig:
    """GMMSeg's numbers from `config.segmentation.gmmseg` (`lgmm_jax.method.gmmseg.GMMSegConfig`)."""
    return GMMSegConfig(**config.segmentation.gmmseg.to_dict())


def gmmseg_train_step(
    state,
    batch: dict,
    *,
    model,
    optimizer: optax.GradientTransformation,
    settings: GMMSegConfig,
    scale_floor: float,
    task_losses: StepLosses,
) -> tuple[Any, dict]:
    """One step of GMMSeg (`lgmm_jax.method.gmmseg`): the encoder by the decode and component cross-entropies,
    then the step's admitted pixels into the queues, and every `settings.update_interval` steps (the
    first included, as GMMSeg's iteration counter starts at 0) the Gaussians of the batch's classes
    moved toward their queues. The Gaussians take no gradient step."""
    pixels = task_losses.pixels

    def loss_fn(params):
        z, updates = training_latents(model, state, params, network_images(batch, task_losses))
        class_logits = lambda scores: model.apply({"params": params}, scores, method="class_logits")  # noqa: E731
        total, outputs = pixel_objective(z, batch["label"], params["head"], class_logits, settings,
                                         scale_floor=scale_floor, void_label=pixels.void_label,
                                         avg_non_ignore=pixels.avg_non_ignore, align_corners=pixels.align_corners)
        auxiliary = task_losses.auxiliary_loss(updates, batch)
        return total + auxiliary, (outputs, updates, auxiliary)

    (_, (outputs, updates, auxiliary)), params, opt_state = optimizer_step(loss_fn, state, optimizer)
    queue = enqueue(state.memory, outputs.latents, outputs.groups, outputs.selected)
    head = jax.lax.cond(
        state.step % settings.update_interval == 0,
        lambda: updated_head(params["head"], queue, outputs.classes, settings, scale_floor),
        lambda: params["head"],
    )
    metrics = dict(outputs.terms)
    if auxiliary_logits(updates) is not None:
        metrics["auxiliary_loss"] = auxiliary
    metrics["accuracy"] = task_losses.accuracy(outputs.class_logits, batch)
    new_state = state.replace(
        step=state.step + 1,
        params={**params, "head": head},
        batch_stats=updates.get("batch_stats", state.batch_stats),
        opt_state=opt_state,
        memory=queue,
    )
    return new_state, metrics


class GMMSegHead(LGMMHead):
    def check_config(self, config):
        """A segmenter (GMMSeg's losses are per pixel) and GMMSeg's numbers (config.segmentation.gmmseg),
        each refused by name."""
        if not is_segmenter(config.model.encoder):
            raise ValueError(f"model.gmm_update='gmmseg' trains a segmenter's per-pixel head, and "
                             f"model.encoder={config.model.encoder!r} is an image encoder: use another "
                             "model.gmm_update, or a segmenter with task='segmentation'")
        gmmseg_config(config)

    def initial_memory(self, config, key, num_classes):
        """GMMSeg's queues of random unit vectors (`gmmseg.create_queue`)."""
        return create_queue(jax.random.fold_in(key, 1), num_classes, config.model.num_components,
                            gmmseg_config(config).queue_size, config.model.latent_dim)

    def train_step(self, config, model, optimizer, task_losses):
        return functools.partial(gmmseg_train_step, model=model, optimizer=optimizer, settings=gmmseg_config(config),
                                 scale_floor=config.model.scale_floor, task_losses=task_losses)


HEAD = GMMSegHead()
