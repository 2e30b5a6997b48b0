"""Keeping the mixture honest: component assignments, usage, counted weights, balancing and re-seeding.

Everything here works on the memory bank (latents held fixed) and the head's Gaussians:
- responsibilities p(k|z,y) of every remembered latent under its own class's mixture (Eq. 6);
- component usage u_y (for L_avg) and counts (for the mixture weights pi, Section 2.2: "estimated by
  counting the frequency of examples that fall into different ... mixture components");
- balanced assignments by Sinkhorn iterations (as GMMSeg does), so that no component can take a whole class;
- k-means re-seeding of the means from the bank, and Appendix G's means targets.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lgmm_jax.method.memory import MemoryBank
from lgmm_jax.models.gmm import component_log_prob, raw_from_scales, scales_from_raw

ASSIGNMENTS = ("posterior", "sinkhorn")


def own_class_log_prob(latents: jax.Array, means: jax.Array, scales: jax.Array) -> jax.Array:
    """log N(z; mu_yk, sigma_yk) of latents [C, M, D] under their own class y's components: [C, M, K]."""
    per_class = jax.vmap(lambda z, mu, sigma: component_log_prob(z, mu[None], sigma[None])[:, 0])
    return per_class(latents, means, scales)


def labelled_log_prob(z: jax.Array, labels: jax.Array, means: jax.Array, scales: jax.Array):
    """log N(z_i; mu_{y_i k}, sigma_{y_i k}) of each latent [B, D] under its label's components: [B, K]."""
    return own_class_log_prob(z[:, None], means[labels], scales[labels])[:, 0]


def masked_usage(weights: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean assignment per class over valid slots: (usage [C, K], class_present [C]).

    weights [C, M, K] (soft responsibilities or one-hot assignments); valid [C, M].
    A class with nothing remembered gets the uniform usage and class_present False.
    """
    num_components = weights.shape[-1]
    valid_f = valid.astype(jnp.float32)[..., None]
    totals = jnp.sum(valid_f, axis=1)  # [C, 1]
    usage = jnp.sum(weights * valid_f, axis=1) / jnp.maximum(totals, 1.0)
    present = totals[:, 0] > 0
    usage = jnp.where(present[:, None], usage, 1.0 / num_components)
    return usage, present


def sinkhorn_log_potentials(
    log_probs: jax.Array, valid: jax.Array, epsilon: float = 0.05, iterations: int = 3
) -> jax.Array:
    """Column potentials log b [C, K] of a balanced transport of each class's latents onto its components.

    The plan P_mk proportional to exp(log N_mk / epsilon) a_m b_k has row sums 1/n (each valid latent is
    assigned once) and column sums 1/K (each component takes an equal share). Any latent z of class y
    is then assigned to argmax_k (log N(z; mu_yk, sigma_yk) / epsilon + log b_yk), see
    `balanced_assignment`. Log domain throughout; invalid slots carry no mass.
    """
    num_components = log_probs.shape[-1]
    gain = log_probs / epsilon
    log_row_mass = jnp.where(
        valid, -jnp.log(jnp.maximum(jnp.sum(valid, axis=1, keepdims=True), 1)), -jnp.inf
    )
    log_col_mass = -math.log(num_components)
    log_b = jnp.zeros(log_probs.shape[::2], jnp.float32)  # [C, K]

    def iteration(_, log_b):
        log_a = log_row_mass - jax.nn.logsumexp(gain + log_b[:, None, :], axis=-1)  # [C, M]
        log_a = jnp.where(valid, log_a, -jnp.inf)
        column = jax.nn.logsumexp(gain + log_a[..., None], axis=1)  # [C, K]
        column = jnp.where(jnp.isfinite(column), column, 0.0)  # a class with nothing remembered
        return log_col_mass - column

    log_b = jax.lax.fori_loop(0, iterations, iteration, log_b)
    return jax.lax.stop_gradient(log_b)


def balanced_assignment(log_probs: jax.Array, log_potentials: jax.Array, epsilon: float):
    """argmax_k (log N / epsilon + log b_k): the hard balanced assignment; shapes [..., K] -> [...]."""
    return jnp.argmax(log_probs / epsilon + log_potentials, axis=-1)


def counted_log_weights(
    counts: jax.Array,
    class_present: jax.Array,
    previous_log_weights: jax.Array,
    ema_decay: float = 0.0,
    pseudo_count: float = 1.0,
) -> jax.Array:
    """log pi_yk by counting (Section 2.2): (n_yk + a) / (n_y + K a), optionally averaged with the past.

    counts [C, K] may be soft (sums of responsibilities) or hard. The pseudo-count a keeps every
    component's weight above zero so log pi stays finite. Classes with nothing counted keep their weights.
    """
    num_components = counts.shape[-1]
    counts = jax.lax.stop_gradient(counts)
    weights = (counts + pseudo_count) / (
        jnp.sum(counts, axis=-1, keepdims=True) + num_components * pseudo_count
    )
    weights = ema_decay * jnp.exp(previous_log_weights) + (1.0 - ema_decay) * weights
    return jnp.where(class_present[:, None], jnp.log(weights), previous_log_weights)


def assigned_means(latents: jax.Array, valid: jax.Array, assignments: jax.Array, num_components: int):
    """L2-normalised mean of the valid latents [C, M, D] assigned [C, M] to each component.

    Returns (targets [C, K, D], has_members [C, K]). Appendix G pulls the means toward these targets;
    k-means uses them as its update step.
    """
    one_hot = jax.nn.one_hot(assignments, num_components) * valid[..., None]  # [C, M, K]
    sums = jnp.einsum("cmk,cmd->ckd", one_hot, latents, precision=jax.lax.Precision.HIGHEST)
    norms = jnp.linalg.norm(sums, axis=-1, keepdims=True)
    return sums / jnp.maximum(norms, 1e-12), jnp.sum(one_hot, axis=1) > 0


def spherical_kmeans(
    key: jax.Array, memory: MemoryBank, previous_means: jax.Array, iterations: int = 10
) -> jax.Array:
    """Re-seed each class's K means by spherical k-means over its remembered latents: [C, K, D].

    Centres start at K distinct remembered latents drawn at random. A class remembering fewer than K
    latents, and any cluster left empty, keeps its previous mean.
    """
    num_classes, _, _ = memory.latents.shape
    num_components = previous_means.shape[1]

    def initial_centres(class_key, latents, valid):
        probabilities = valid / jnp.maximum(jnp.sum(valid), 1)
        picks = jax.random.choice(
            class_key, latents.shape[0], (num_components,), replace=False, p=probabilities
        )
        return latents[picks]

    keys = jax.random.split(key, num_classes)
    centres = jax.vmap(initial_centres)(keys, memory.latents, memory.valid.astype(jnp.float32))

    def lloyd_step(_, centres):
        similarity = jnp.einsum("cmd,ckd->cmk", memory.latents, centres)
        targets, has_members = assigned_means(
            memory.latents, memory.valid, jnp.argmax(similarity, axis=-1), num_components
        )
        return jnp.where(has_members[..., None], targets, centres)

    centres = jax.lax.fori_loop(0, iterations, lloyd_step, centres)
    enough = jnp.sum(memory.valid, axis=1) >= num_components
    return jnp.where(enough[:, None, None], centres, previous_means)


def bank_moments(
    latents: jax.Array, valid: jax.Array, weights: jax.Array, share_scale: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Weighted means and standard deviations of the remembered latents per component (an M-step).

    latents [C, M, D], valid [C, M], weights [C, M, K] (one-hot assignments or responsibilities).
    Returns (means [C, K, D], stds [C, K or 1, D], has_members [C, K]). With `share_scale` the K
    components of a class share one diagonal scale: the within-component spread pooled over the class.
    """
    highest = jax.lax.Precision.HIGHEST
    weights = weights * valid[..., None]
    counts = jnp.sum(weights, axis=1)  # [C, K]
    # Moments of the latents centred on their class's mean: E[x^2] - E[x]^2 on raw unit-sphere latents
    # (|z_d| ~ 0.09, spread ~ 0.02) would lose ~20x float32 precision to cancellation.
    valid_f = valid[..., None].astype(latents.dtype)
    class_means = jnp.sum(latents * valid_f, axis=1, keepdims=True) / jnp.maximum(
        jnp.sum(valid_f, axis=1, keepdims=True), 1.0
    )  # [C, 1, D]
    centred = (latents - class_means) * valid_f
    offsets = jnp.einsum("cmk,cmd->ckd", weights, centred, precision=highest) / jnp.maximum(
        counts, 1e-6
    )[..., None]
    means = class_means + offsets
    second = jnp.einsum("cmk,cmd->ckd", weights, jnp.square(centred), precision=highest)
    squared_deviation = jnp.maximum(second - counts[..., None] * jnp.square(offsets), 0.0)  # [C, K, D]
    if share_scale:
        variance = jnp.sum(squared_deviation, axis=1, keepdims=True) / jnp.maximum(
            jnp.sum(counts, axis=1)[:, None, None], 1.0
        )
    else:
        variance = squared_deviation / jnp.maximum(counts, 1.0)[..., None]
    return means, jnp.sqrt(variance), counts > 0


def moment_matched_head(
    head_params: dict,
    latents: jax.Array,
    valid: jax.Array,
    weights: jax.Array,
    scale_floor: float,
    rate: float,
) -> dict:
    """theta moved a step `rate` toward the maximum-likelihood fit of the memory bank (EM's M-step).

    The generative objective's maximiser for fixed assignments is the weighted mean and spread of the
    remembered latents; a gradient step on -log N moves toward the same point but, with Adam, jitters by
    about the learning rate per coordinate, far more than a class's spread on the unit sphere (~0.02).
    Components with no remembered latents keep their parameters; classes with fewer than two
    remembered latents keep their scales.
    """
    share_scale = head_params["raw_scales"].shape[1] == 1
    target_means, target_stds, has_members = bank_moments(latents, valid, weights, share_scale)
    old_means = head_params["means"]
    means = jnp.where(has_members[..., None], old_means + rate * (target_means - old_means), old_means)
    old_scales = scales_from_raw(head_params["raw_scales"], scale_floor)
    target_scales = jnp.maximum(target_stds, scale_floor * 1.0001)
    enough = (jnp.sum(valid, axis=1) >= 2)[:, None, None]
    scales = jnp.where(enough, old_scales + rate * (target_scales - old_scales), old_scales)
    return {**head_params, "means": means, "raw_scales": raw_from_scales(scales, scale_floor)}
