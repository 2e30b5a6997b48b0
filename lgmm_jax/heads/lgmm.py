"""The L-GMM head (Section 2): a latent z per example scored by a per-class diagonal Gaussian mixture.

The encoder phi learns by L_D and the Gaussians theta (`params["head"]`, their own optimiser group, no
weight decay) by L_G, in one `jax.value_and_grad` of the collaborative objective (`lgmm_jax.method.objective`,
Eq. 5-7); the mixture weights are counted from the memory bank the state carries (`lgmm_jax.method.memory`).
With `model.gmm_update='moment_matching'` the Gaussians take no gradient step and move toward the memory
bank's maximum-likelihood fit instead. Class scores are log p(z|y) (Eq. 4); the open-set scores are the
likelihood, the marginal and the posterior, and post-hoc read-outs of the encoder.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lgmm_jax.heads import gmm_update
from lgmm_jax.heads.base import Head, StepLosses, network_images, optimizer_step, step_key, training_latents
from lgmm_jax.method import losses
from lgmm_jax.method.memory import create_memory
from lgmm_jax.method.mixture import counted_log_weights, labelled_log_prob, moment_matched_head, spherical_kmeans
from lgmm_jax.method.objective import ObjectiveConfig
from lgmm_jax.models.configured import backbone_options, compute_dtype, decoder_options, is_segmenter
from lgmm_jax.models.gmm import head_gaussians, uniform_log_weights
from lgmm_jax.models.lgmm import create_lgmm
from lgmm_jax.models.segmenter import auxiliary_logits, create_segmenter
from lgmm_jax.ood.posthoc import LGMM_POSTHOC_SCORES
from lgmm_jax.ood.scores import LGMM_SCORES


def objective_config(config: ml_collections.ConfigDict) -> ObjectiveConfig:
    """The collaborative objective's settings from `config.loss` and `config.model`."""
    loss = config.loss
    return ObjectiveConfig(
        num_components=config.model.num_components,
        scale_floor=config.model.scale_floor,
        lambda_one=loss.lambda_one,
        lambda_avg=loss.lambda_avg,
        usage_distance=loss.usage_distance,
        responsibility_temperature=loss.responsibility_temperature,
        assignment=loss.assignment,
        sinkhorn_epsilon=loss.sinkhorn_epsilon,
        sinkhorn_iterations=loss.sinkhorn_iterations,
        variant=config.model.variant,
        training=loss.training,
        bank_sample_size=loss.bank_sample_size,
        discriminative_temperature=loss.get("discriminative_temperature", 1.0),
    )


def gmm_moment_rate(model_config) -> float | None:
    """The moment-matching rate, or None when the Gaussians learn otherwise (`heads.gmm_update`)."""
    return float(model_config.moment_rate) if gmm_update(model_config) == "moment_matching" else None


def head_options(model_config: ml_collections.ConfigDict) -> dict:
    """The GMM head's attributes, the same for the classifier and the segmenter."""
    return dict(
        latent_normalization=model_config.latent_normalization,
        init_scale=model_config.init_scale,
        scale_floor=model_config.scale_floor,
        share_scale=model_config.share_scale,
        reduction="max" if model_config.get("variant", "equations") == "appendix_g" else "logsumexp",
    )


def lgmm_train_step(
    state,
    batch: dict,
    *,
    model,
    optimizer: optax.GradientTransformation,
    objective: ObjectiveConfig,
    task_losses: StepLosses,
    weight_ema: float,
    moment_rate: float | None = None,
) -> tuple[Any, dict]:
    """One collaborative step (Section 2.1): encoder by L_D, Gaussians by L_G, weights by counting.

    With `moment_rate` the Gaussians take no gradient step; they move that fraction of the way to the
    maximum-likelihood fit of the memory bank instead (`mixture.moment_matched_head`). The task's
    `task_losses` say what an example of the batch is (an image, or a labelled pixel).
    """
    log_weights = state.mixture["head"]["log_weights"]

    def loss_fn(params):
        z, updates = training_latents(model, state, params, network_images(batch, task_losses))
        key = jax.random.fold_in(step_key(state), 1)
        total, outputs = task_losses.lgmm_objective(
            z, batch, params["head"], log_weights, state.memory, objective, key)
        auxiliary = task_losses.auxiliary_loss(updates, batch)
        return total + auxiliary, (outputs, updates, auxiliary)

    (_, (outputs, updates, auxiliary)), params, opt_state = optimizer_step(loss_fn, state, optimizer)
    rows = outputs.classes  # only the classes of the batch are updated (`objective.batch_classes`)
    if moment_rate is not None:
        head = params["head"]
        moved = moment_matched_head(
            {name: value[rows] for name, value in head.items()},
            outputs.bank_latents, outputs.bank_valid, outputs.bank_weights,
            objective.scale_floor, moment_rate,
        )
        params = {**params, "head": {name: head[name].at[rows].set(moved[name]) for name in head}}
    new_log_weights = log_weights.at[rows].set(
        counted_log_weights(outputs.counts, outputs.class_present, log_weights[rows], ema_decay=weight_ema)
    )
    metrics = dict(outputs.terms)
    if auxiliary_logits(updates) is not None:
        metrics["auxiliary_loss"] = auxiliary
    metrics["accuracy"] = task_losses.accuracy(outputs.class_log_likelihood, batch)
    metrics["effective_components"] = losses.masked_mean(
        losses.effective_components(outputs.hard_usage), outputs.class_present & outputs.distinct
    )
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=updates.get("batch_stats", state.batch_stats),
        mixture={"head": {"log_weights": new_log_weights}},
        opt_state=opt_state,
        memory=outputs.memory,
    )
    return new_state, metrics


def reseed_means(state, num_components: int):
    """Re-place each class's means by spherical k-means on its remembered latents; weights back to uniform.

    Components that lost every latent come back where latents are (bench/study.py's runs: without it
    they stay dead).
    """
    head = state.params["head"]
    key = jax.random.fold_in(state.rng, -1 - state.step)
    means = spherical_kmeans(key, state.memory, head["means"])
    num_classes = means.shape[0]
    params = {**state.params, "head": {**head, "means": means}}
    mixture = {"head": {"log_weights": uniform_log_weights(num_classes, num_components)}}
    return state.replace(params=params, mixture=mixture)


def component_usage(config, variables, outputs) -> dict[str, Any]:
    """Per-class effective number of components (exp entropy of hard usage) on fresh test latents."""
    num_components = config.model.num_components
    means, scales = head_gaussians(variables["params"]["head"], config.model.scale_floor, num_components)
    log_weights = variables["mixture"]["head"]["log_weights"]
    labels = jnp.asarray(outputs["label"])
    joint = labelled_log_prob(jnp.asarray(outputs["latent"]), labels, means, scales) + log_weights[labels]
    hard = jax.nn.one_hot(jnp.argmax(joint, -1), num_components)
    num_classes = means.shape[0]
    usage = jax.ops.segment_sum(hard, labels, num_segments=num_classes)
    usage = usage / jnp.maximum(jnp.sum(usage, -1, keepdims=True), 1.0)
    effective = np.asarray(losses.effective_components(usage))
    return {
        "effective_components_per_class": effective.round(4).tolist(),
        "mean_effective_components": float(effective.mean()),
        "hard_usage_per_class": np.asarray(usage).round(4).tolist(),
    }


class LGMMHead(Head):
    name = "lgmm"
    scores = LGMM_SCORES + LGMM_POSTHOC_SCORES
    deployable_scores = LGMM_SCORES
    default_score = "likelihood"
    pixel_scores = ("likelihood",)
    deployable_pixel_scores = ("likelihood",)
    default_pixel_score = "likelihood"

    def create_model(self, model_config, num_classes):
        dtype = compute_dtype(model_config.dtype)
        if is_segmenter(model_config.encoder):
            return create_segmenter(
                model_config.encoder, num_classes, self.name, dtype=dtype, decoder_kwargs=decoder_options(model_config),
                num_components=model_config.num_components, latent_dim=model_config.latent_dim,
                latent_projection=model_config.get("latent_projection", "dense"),
                latent_norm_epsilon=model_config.get("latent_norm_epsilon", 1e-6),
                class_norm=model_config.get("class_norm", False), **head_options(model_config))
        return create_lgmm(model_config.encoder, num_classes, model_config.num_components, model_config.latent_dim,
                           dtype=dtype, backbone_kwargs=backbone_options(model_config), **head_options(model_config))

    def optimizer_group(self, path):
        return "gmm" if getattr(path[0], "key", None) == "head" else None

    def gmm_takes_gradient(self, model_config):
        return gmm_update(model_config) == "gradient"

    def initial_memory(self, config, key, num_classes):
        """The class-conditional memory bank, empty (`memory.create_memory`)."""
        return create_memory(num_classes, config.memory_size, config.model.latent_dim)

    def train_step(self, config, model, optimizer, task_losses):
        return functools.partial(
            lgmm_train_step,
            model=model,
            optimizer=optimizer,
            objective=objective_config(config),
            task_losses=task_losses,
            weight_ema=config.loss.weight_ema,
            moment_rate=gmm_moment_rate(config.model),
        )

    def reseed_steps(self, config, steps_per_epoch):
        """After each of `loss.reseed_epochs`."""
        return {int(epoch * steps_per_epoch) for epoch in config.loss.get("reseed_epochs", ())}

    def reseed(self, state, num_components):
        return reseed_means(state, num_components)

    def inference_outputs(self, model, variables, images, with_features):
        """`latent` z [B, D] and `class_log_likelihood` log p(z|y) [B, C] (Eq. 4); with `with_features` the
        backbone's pooled `features` [B, F] (for post-hoc read-outs of its encoder)."""
        z, class_log_likelihood = model.apply(variables, images, train=False)
        outputs = {"latent": z, "class_log_likelihood": class_log_likelihood}
        if with_features:
            features = model.apply(variables, images, False, method=lambda m, x, t: m.features(x, t))
            outputs["features"] = features.astype(jnp.float32)
        return outputs

    def class_scores(self, outputs):
        return outputs["class_log_likelihood"]

    def served_class_scores(self, applied):
        """The model returns (z, log p(z|y))."""
        return applied[1]

    def posterior_temperature(self, config):
        """L_D's temperature, which trained the posterior."""
        return float(config.loss.get("discriminative_temperature", 1.0))

    def evaluation_extras(self, config, variables, known_test):
        """`components`: how many components each class uses on its test latents (`component_usage`)."""
        return {"components": component_usage(config, variables, known_test)}


HEAD = LGMMHead()
