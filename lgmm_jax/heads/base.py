"""The interface every head implements (`lgmm_jax.heads`), and what a head's train step takes from the task.

A head owns what differs between L-GMM, its GMMSeg update and the softmax counterpart: the model it builds
on the config's encoder, the parameters the optimiser groups apart (theta), what the train state carries
besides them (a memory bank, GMMSeg's queues), the jitted train step given the task's losses
(`StepLosses`), how the network's outputs become class scores, which open-set scores it offers and what an
export serves. Everything else (data, the loop, checkpoints, evaluation's sets and metrics) asks the head
and never which head runs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import optax

from lgmm_jax.data import pipeline
from lgmm_jax.method.objective import PixelConfig


class StepLosses(NamedTuple):
    """How a task's batch becomes each head's loss inside the jitted train step (`Task.step_losses`).

    lgmm_objective(z, batch, head_params, log_weights, memory, objective, key) -> (total, outputs): the
      collaborative objective (Eq. 5-7) of the batch's examples, `objective.ObjectiveOutputs` with it.
    auxiliary_loss(updates, batch) -> scalar: the weighted loss of an auxiliary head the model wrote into
      `updates` during the apply (0 when there is none); it trains the encoder only.
    softmax_loss(logits, batch, targets, updates) -> scalar: the softmax counterpart's loss; `targets` are
      the soft targets of a mixed batch (`mix`) or None.
    accuracy(class_scores, batch) -> scalar: the share of the batch's examples whose argmax is their label.
    mix(key, images, batch) -> (images, targets), or None: the softmax counterpart's batch recipe (Mixup /
      CutMix / label smoothing) where the task has one.
    pixels: what makes a labelled pixel an example (`objective.PixelConfig`) where the task's examples are
      pixels of `batch["label"]` maps; None where they are images. Heads whose losses are per pixel only
      (GMMSeg's update) need it.
    input_normalization: the `pipeline.Normalization` the steps apply on the devices to a batch whose
      images arrive uint8 (`pipeline.normalize_on_device`); None where they arrive normalised.
    """

    lgmm_objective: Callable
    auxiliary_loss: Callable
    softmax_loss: Callable
    accuracy: Callable
    mix: Callable | None = None
    pixels: PixelConfig | None = None
    input_normalization: Any = None


# What a training apply may write: BatchNorm statistics, and a segmenter's auxiliary logits.
TRAIN_COLLECTIONS = ["batch_stats", "auxiliary"]


def step_key(state) -> jax.Array:
    """This step's randomness (dropout, drop-path): the run key folded with the step number."""
    return jax.random.fold_in(state.rng, state.step)


def encoder_variables(state, params) -> dict:
    """The variables of a training apply: `params` (the ones differentiated) and the state's BatchNorm
    statistics."""
    return {"params": params, "batch_stats": state.batch_stats}


def network_images(batch: dict, task_losses: StepLosses) -> jax.Array:
    """The batch's images as the network takes them: normalised here when they arrive uint8."""
    if task_losses.input_normalization is None:
        return batch["image"]
    return pipeline.normalize_on_device(batch["image"], task_losses.input_normalization)


def training_latents(model, state, params, images: jax.Array):
    """(latents z, mutable updates) of a training-mode encoder pass: what L-GMM's and GMMSeg's losses take."""
    return model.apply(encoder_variables(state, params), images, train=True, method="encode",
                       mutable=TRAIN_COLLECTIONS, rngs={"dropout": step_key(state)})


def optimizer_step(loss_fn, state, optimizer: optax.GradientTransformation):
    """((loss, auxiliary outputs) of `loss_fn(state.params)`, the parameters after one optimiser step on its
    gradient, the optimiser's new state)."""
    (loss, auxiliary), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return (loss, auxiliary), optax.apply_updates(state.params, updates), opt_state


class Head(abc.ABC):
    """What a head decides (see the module docstring). One instance per module, `HEAD`."""

    # `model.head`, as results.json and model.json name it.
    name: str
    # Open-set scores of an image classifier: every one evaluation computes, those an export computes from
    # one image alone, and the export's default. The same for a segmenter's pixels.
    scores: tuple[str, ...]
    deployable_scores: tuple[str, ...]
    default_score: str
    pixel_scores: tuple[str, ...]
    deployable_pixel_scores: tuple[str, ...]
    default_pixel_score: str

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Raise ValueError naming the key when the config's head settings do not hold."""

    @abc.abstractmethod
    def create_model(self, model_config: ml_collections.ConfigDict, num_classes: int):
        """The flax module of `model.encoder` (an image encoder or a segmenter) closed by this head."""

    def optimizer_group(self, path) -> str | None:
        """'gmm' for a parameter of the density head theta (its own learning rate, no weight decay), None
        for the encoder's (phi)."""
        return None

    def gmm_takes_gradient(self, model_config: ml_collections.ConfigDict) -> bool:
        """Whether theta moves by optimiser steps on its gradient (else its optimiser is set to zero)."""
        return False

    def initial_memory(self, config: ml_collections.ConfigDict, key: jax.Array, num_classes: int):
        """What the train state carries besides the parameters (`TrainState.memory`), or None."""
        return None

    @abc.abstractmethod
    def train_step(self, config: ml_collections.ConfigDict, model, optimizer, task_losses: StepLosses
                   ) -> Callable:
        """(state, batch) -> (state, metrics): one step of this head on the task's batch, to be jitted."""

    def reseed_steps(self, config: ml_collections.ConfigDict, steps_per_epoch: int) -> set[int]:
        """The steps after which `reseed` re-places the means (none by default)."""
        return set()

    def reseed(self, state, num_components: int):
        """The state with its means re-placed (heads with `reseed_steps` only)."""
        raise NotImplementedError(f"the {self.name} head has no means to re-seed")

    @abc.abstractmethod
    def inference_outputs(self, model, variables: dict, images: jax.Array, with_features: bool) -> dict:
        """Per-example outputs of an inference-mode pass (`forward.make_forward`), named as the scores
        of `ood.scores` read them; the backbone's pooled `features` where the head's scores need them or
        `with_features` asks."""

    @abc.abstractmethod
    def class_scores(self, outputs: dict):
        """[N, C] class scores of `inference_outputs` whose argmax is the predicted class."""

    @abc.abstractmethod
    def served_class_scores(self, applied):
        """The class scores from what `model.apply` returns (an export's compiled function)."""

    def posterior_temperature(self, config: ml_collections.ConfigDict) -> float:
        """The temperature T of the model's class posterior softmax(class scores / T)."""
        return 1.0

    def final_layer(self, params) -> tuple | None:
        """(kernel, bias) of a final linear layer that post-hoc scores recompute logits through, or None."""
        return None

    def evaluation_extras(self, config: ml_collections.ConfigDict, variables: dict, known_test: dict) -> dict:
        """results.json entries the head adds from the known test split's outputs ({} by default)."""
        return {}
