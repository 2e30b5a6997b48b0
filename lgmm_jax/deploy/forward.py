"""The evaluation forward pass and what is computed from its outputs, shared by evaluation, export and
inference (which sit above this module and never import one another for it).

`make_forward` runs the model in inference mode on a sharded batch; `iterate_outputs` / `collect` run it
over padded, masked batches and keep the real examples; `score_table` turns the outputs into open-set
scores (higher = more in-distribution) and `predictions` into the class scores whose argmax is the label.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from lgmm_jax import heads
from lgmm_jax.ood import fitting, posthoc, scores
from lgmm_jax.runtime.sharding import batch_sharding, global_batch, replicated

# The per-example columns of an evaluation batch that travel with the model's outputs.
BATCH_COLUMNS = ("label", "original_label", "mask")


def model_variables(state) -> dict:
    """The variables `model.apply` needs, from a TrainState or an exported model's arrays."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if state.mixture:
        variables["mixture"] = state.mixture
    return variables


def make_forward(model, head: str, mesh, lgmm_features: bool = False):
    """Jitted inference on a sharded batch: per-example outputs of the head `head` (a `model.head` name;
    `Head.inference_outputs`). L-GMM: `latent` z [B, D] and `class_log_likelihood` log p(z|y) [B, C] (Eq. 4),
    and with `lgmm_features` the backbone's pooled `features` [B, F]; softmax: `logits` [B, C] and `features`.
    """
    outputs_of = functools.partial(heads.named(head).inference_outputs, model, with_features=lgmm_features)
    return jax.jit(outputs_of, in_shardings=(replicated(mesh), batch_sharding(mesh)))


def gather(array) -> np.ndarray:
    """A global array -> the full numpy array on every host."""
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def iterate_outputs(batches, mesh, variables, forward, extra=None) -> Iterator[dict[str, np.ndarray]]:
    """`forward` (and `extra`, name -> jitted fn of the same arguments) on each padded batch; yields the
    real (unmasked) examples' outputs and batch columns of every process, one global batch at a time."""
    for local in batches:
        batch = global_batch(local, mesh)
        outputs = dict(forward(variables, batch["image"]))
        for name, fn in (extra or {}).items():
            outputs[name] = fn(variables, batch["image"])
        for name in BATCH_COLUMNS:
            outputs[name] = batch[name]
        arrays = {name: gather(value) for name, value in outputs.items()}
        keep = arrays.pop("mask")
        yield {name: value[keep] for name, value in arrays.items()}


def collect(batches, mesh, variables, forward, extra=None) -> dict[str, np.ndarray]:
    """Every output of `iterate_outputs`, concatenated over the batches."""
    parts: dict[str, list] = {}
    for outputs in iterate_outputs(batches, mesh, variables, forward, extra):
        for name, value in outputs.items():
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def score_table(outputs: dict, fitted: dict, chosen, posterior_temperature: float = 1.0
                ) -> dict[str, np.ndarray]:
    """name -> [N] float64 scores (higher = more in-distribution) of one evaluation set's outputs.

    `fitted` holds what a score fitted on known data beforehand: `kl_templates`, `mahalanobis`
    ((class means, precision)), the post-hoc scores' fits by score name (`ood.fitting`, `react`) and
    `classifier` (the softmax model's final (kernel, bias), for ReAct and ASH); ODIN's scores come
    computed, as the output `odin`. L-GMM's `posterior` is tempered by `posterior_temperature`, L_D's
    temperature (`posterior_temperature_of(config)`).
    """
    table: dict[str, Any] = {}
    for name in chosen:
        if name in ("likelihood", "marginal"):
            table[name] = getattr(scores, name)(outputs["class_log_likelihood"])
        elif name == "posterior":
            table[name] = scores.posterior(outputs["class_log_likelihood"], posterior_temperature)
        elif name in ("msp", "maxlogit", "energy"):
            table[name] = getattr(scores, name)(outputs["logits"])
        elif name == "odin":
            table[name] = outputs["odin"]
        elif name == "kl_matching":
            table[name] = scores.kl_matching(outputs["logits"], fitted["kl_templates"])
        elif name == "mahalanobis":
            table[name] = scores.mahalanobis(outputs["features"], *fitted["mahalanobis"])
        elif name in ("knn", "knn_features", "knn_latent"):
            table[name] = posthoc.knn(outputs[fitting.TRAINING_FITTED[name]], fitted[name])
        elif name in ("rmds", "rmds_features"):
            table[name] = posthoc.rmds(outputs[fitting.TRAINING_FITTED[name]], fitted[name])
        elif name == "vim":
            table[name] = posthoc.vim(outputs["features"], outputs["logits"], fitted["vim"])
        elif name == "react":
            table[name] = posthoc.react(outputs["features"], fitted["react"], *fitted["classifier"])
        elif name == "ash":
            table[name] = posthoc.ash(outputs["features"], *fitted["classifier"])
        elif name == "gen":
            table[name] = posthoc.gen(outputs["logits"])
        else:
            raise ValueError(f"unknown score {name!r}: use one of {tuple(scores.SCORE_FUNCTIONS)}")
    return {name: np.asarray(value, np.float64) for name, value in table.items()}


def posterior_temperature_of(config) -> float:
    """The temperature T of the model's class posterior softmax(predictions / T) (`Head.posterior_temperature`:
    for L-GMM L_D's, which trained it; 1 for the softmax model, whose cross-entropy is untempered)."""
    return heads.get(config.model).posterior_temperature(config)


def predictions(head: str, outputs: dict) -> np.ndarray:
    """[N, C] class scores whose argmax is the predicted class (`Head.class_scores`): log p(z|y) (L-GMM) or
    the logits."""
    return heads.named(head).class_scores(outputs)
