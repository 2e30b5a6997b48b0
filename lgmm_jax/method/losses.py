"""The collaborative objectives of L-GMM (Section 2.2, Eq. 5-7) and the softmax counterpart's loss.

Every per-example loss takes an optional `mask` [B] (False on padding) and averages over the real
examples only. Sums in the paper become means here, so loss weights do not depend on the batch size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lgmm_jax.models.resize import resize_bilinear

USAGE_DISTANCES = ("total_variation", "kl")


def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of `values` [B] over the examples where `mask` [B] is True (0 when none is)."""
    if mask is None:
        return jnp.mean(values)
    weights = mask.astype(values.dtype)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None):
    """Mean cross-entropy of softmax(logits) against integer labels: the discriminative counterpart."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return masked_mean(losses, mask)


def pixel_cross_entropy(scores: jax.Array, labels: jax.Array, void_label: int = 255, avg_non_ignore: bool = False,
                        align_corners: bool = False) -> jax.Array:
    """mmseg's decode-head loss: per-pixel scores [B, h, w, C] upsampled bilinearly (`align_corners`) to the
    labels' [B, H, W], softmax cross-entropy of the labelled pixels (the void label is a mask, never a
    class index) summed and divided by every pixel's count, as mmseg's CrossEntropyLoss does by default
    (a void pixel adds 0 to the sum and 1 to the count), or by the labelled pixels' count with
    `avg_non_ignore` (mmseg's option of that name). For L-GMM the scores are log p(z|y) / T (Eq. 7 per
    pixel)."""
    upsampled = resize_bilinear(scores, labels.shape[1:], align_corners)
    labelled = labels != void_label
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(
        upsampled.reshape(-1, scores.shape[-1]).astype(jnp.float32), jnp.where(labelled, labels, 0).reshape(-1))
    if avg_non_ignore:
        return masked_mean(per_pixel, labelled.reshape(-1))
    return jnp.sum(jnp.where(labelled.reshape(-1), per_pixel, 0.0)) / per_pixel.size


def discriminative_loss(
    class_log_likelihood: jax.Array,
    labels: jax.Array,
    mask: jax.Array | None = None,
    temperature: float = 1.0,
) -> jax.Array:
    """L_D (Eq. 7): cross-entropy of the posterior p(y|z) = softmax_y log p(z|y) (uniform class prior).

    Only the encoder phi may receive this gradient; the caller passes log p(z|y) computed from
    stop_gradient(theta). `temperature` T > 1 trains on the tempered posterior softmax_y(log p(z|y) / T)
    (T = 1 is Eq. 7 as written). On the unit sphere the log-likelihoods differ by
    (mu_y - mu_y').z / sigma^2, so with the scales at their floor (0.05) Eq. 7 is a cosine softmax with
    a scale of ~400, far sharper than the 16-64 that cosine classifiers train well with; T divides it.
    The prediction argmax_y p(z|y) and the likelihood scores do not depend on T.
    """
    return softmax_cross_entropy(class_log_likelihood / temperature, labels, mask)


def negative_log_likelihood(
    true_class_log_likelihood: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """-L_mle (Eq. 6): mean of -log p(z|y) over the examples, for the true class y of each."""
    return masked_mean(-true_class_log_likelihood, mask)


def one_hot_loss(responsibilities: jax.Array, mask: jax.Array | None = None, targets=None):
    """L_one (Eq. 6): squared error between p(k|z,y) [B, K] and the one-hot of its best component k*.

    `targets` [B] overrides k* (e.g. balanced Sinkhorn assignments); by default k* = argmax_k p(k|z,y).
    Summed over k, averaged over examples.
    """
    num_components = responsibilities.shape[-1]
    if targets is None:
        targets = jnp.argmax(responsibilities, axis=-1)
    one_hot = jax.nn.one_hot(targets, num_components, dtype=responsibilities.dtype)
    return masked_mean(jnp.sum(jnp.square(responsibilities - one_hot), axis=-1), mask)


def usage_distance(usage: jax.Array, distance: str = "total_variation") -> jax.Array:
    """Distance of each class's component usage u_y [C, K] from the uniform U(K): [C].

    The paper names the Wasserstein distance (Eq. 6). Components are unordered, so the ground metric is
    0/1 and W1 equals the total variation 1/2 sum_k |u_yk - 1/K|, which lies in [0, 1 - 1/K].
    `distance="kl"` gives the smooth KL(u_y || U(K)) = sum_k u_yk log(K u_yk) instead.
    """
    num_components = usage.shape[-1]
    if distance == "total_variation":
        return 0.5 * jnp.sum(jnp.abs(usage - 1.0 / num_components), axis=-1)
    if distance == "kl":
        safe = jnp.where(usage > 0, usage, 1.0)
        return jnp.sum(jnp.where(usage > 0, usage * jnp.log(num_components * safe), 0.0), axis=-1)
    raise ValueError(f"unknown usage distance {distance!r}: use one of {USAGE_DISTANCES}")


def average_usage_loss(
    usage: jax.Array, class_present: jax.Array, distance: str = "total_variation"
) -> jax.Array:
    """L_avg (Eq. 6): mean over the classes with remembered latents of W(u_y, U(K))."""
    return masked_mean(usage_distance(usage, distance), class_present)


def generative_loss(nll, one_hot, average_usage, lambda_one: float, lambda_avg: float):
    """L_G = -L_mle + lambda_one L_one + lambda_avg L_avg (Eq. 5): the only loss theta is trained on."""
    return nll + lambda_one * one_hot + lambda_avg * average_usage


def max_total_variation(num_components: int) -> float:
    """The largest L_avg a class can have: all its latents on one component."""
    return 1.0 - 1.0 / num_components


def effective_components(usage: jax.Array) -> jax.Array:
    """exp(entropy of usage) per class [C]: 1 when one component takes everything, K when balanced."""
    safe = jnp.where(usage > 0, usage, 1.0)
    entropy = -jnp.sum(jnp.where(usage > 0, usage * jnp.log(safe), 0.0), axis=-1)
    return jnp.exp(entropy)


__all__ = [
    "USAGE_DISTANCES",
    "average_usage_loss",
    "discriminative_loss",
    "effective_components",
    "generative_loss",
    "masked_mean",
    "max_total_variation",
    "negative_log_likelihood",
    "one_hot_loss",
    "pixel_cross_entropy",
    "softmax_cross_entropy",
    "usage_distance",
]
