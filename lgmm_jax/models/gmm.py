"""The latent Gaussian mixture: class-conditional densities p(z|y) with diagonal Gaussians (Eq. 4).

Shapes used throughout:
  z            [B, D]     latents
  means        [C, K, D]  component means mu_yk
  scales       [C, K, D]  component standard deviations sigma_yk (not variances)
  log_weights  [C, K]     log pi_yk, each row normalised (logsumexp over k is 0)

Everything here computes in float32 whatever the caller's dtype. The squared Mahalanobis distance is
expanded into two matmuls (`z^2 @ (1/sigma^2)^T - 2 z @ (mu/sigma^2)^T + sum(mu^2/sigma^2)`) at HIGHEST
precision, so no `[B, C*K, D]` tensor is ever built.
"""

from __future__ import annotations

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST
REDUCTIONS = ("logsumexp", "max")


def component_log_prob(z: jax.Array, means: jax.Array, scales: jax.Array) -> jax.Array:
    """log N(z; mu_yk, diag(sigma_yk^2)) for every class y and component k: [B, C, K].

    log N = -D/2 log 2pi - sum_d log sigma_d - 1/2 sum_d (z_d - mu_d)^2 / sigma_d^2   (Eq. 4's Gaussians)

    scales are [C, K, D], or [C, 1, D] when a class's components share one scale (`share_scale`): then
    `z^2 @ (1/sigma^2)^T` has C columns instead of C*K (this expansion: a third fewer FLOPs at
    equal results up to rounding); with [C, K, D] the computation is unchanged.
    """
    chex.assert_rank(z, 2)
    chex.assert_rank(means, 3)
    chex.assert_rank(scales, 3)
    num_classes, num_components, dim = means.shape
    if scales.shape not in ((num_classes, num_components, dim), (num_classes, 1, dim)):
        raise ValueError(f"scales {scales.shape} must be [C, K, D] or [C, 1, D] for means {means.shape}")
    chex.assert_axis_dimension(z, 1, dim)
    scale_components = scales.shape[1]
    z = z.astype(jnp.float32)
    scales = scales.astype(jnp.float32)
    inv_var = 1.0 / jnp.square(scales)  # [C, K or 1, D]
    weighted_means = (means.astype(jnp.float32) * inv_var).reshape(-1, dim)
    quadratic = jnp.matmul(jnp.square(z), inv_var.reshape(-1, dim).T, precision=HIGHEST)
    quadratic = quadratic.reshape(z.shape[0], num_classes, scale_components)
    cross = jnp.matmul(z, weighted_means.T, precision=HIGHEST)
    constant = jnp.sum(jnp.square(means.astype(jnp.float32)) * inv_var, axis=-1)  # [C, K]
    squared_distance = quadratic - 2.0 * cross.reshape(-1, num_classes, num_components) + constant
    # The expansion can dip just below zero through rounding; the true distance cannot.
    squared_distance = jnp.maximum(squared_distance, 0.0)
    log_det = jnp.sum(jnp.log(scales), axis=-1)  # [C, K or 1]
    return -0.5 * dim * math.log(2.0 * math.pi) - log_det - 0.5 * squared_distance


def mixture_log_likelihood(
    component_log_probs: jax.Array, log_weights: jax.Array, reduction: str = "logsumexp"
) -> jax.Array:
    """log p(z|y) from component log-densities [B, C, K] and log pi [C, K]: [B, C] (Eq. 4).

    `reduction="max"` is Appendix G's pseudo-code, which takes the best component instead of the sum.
    """
    joint = component_log_probs + log_weights.astype(jnp.float32)[None]
    if reduction == "logsumexp":
        return jax.nn.logsumexp(joint, axis=-1)
    if reduction == "max":
        return jnp.max(joint, axis=-1)
    raise ValueError(f"unknown mixture reduction {reduction!r}: use one of {REDUCTIONS}")


def log_likelihood(
    z: jax.Array,
    means: jax.Array,
    scales: jax.Array,
    log_weights: jax.Array,
    reduction: str = "logsumexp",
) -> jax.Array:
    """log p(z|y) = logsumexp_k(log pi_yk + log N(z; mu_yk, sigma_yk)) for every class: [B, C] (Eq. 4).

    Shared scales given once per class ([C, 1, D], as the segmenters pass them) take
    `shared_scale_log_likelihood`'s components-major path; [C, K, D] scales the [B, C, K] one.
    """
    if scales.shape[1] == 1 and means.shape[1] > 1:
        return shared_scale_log_likelihood(z, means, scales, log_weights, reduction)
    return mixture_log_likelihood(component_log_prob(z, means, scales), log_weights, reduction)


def shared_scale_log_likelihood(
    z: jax.Array,
    means: jax.Array,
    scales: jax.Array,
    log_weights: jax.Array,
    reduction: str = "logsumexp",
) -> jax.Array:
    """log p(z|y) [B, C] when a class's K components share one scale, scales [C, 1, D].

    The same expansion as `component_log_prob`, laid out components-major (`components_major_joint`):
    `z^2 @ (1/sigma^2)^T` once per class ([B, C]), the cross term as [B, K, C], and the reduction over
    its axis 1 (K contiguous [B, C] slabs) instead of a minor axis of size K. The logsumexp has a
    hand-written gradient (`_components_logsumexp`). On the CPU, for a segmenter's per-pixel
    log-likelihoods (150 classes, K = 3, D = 64, 8,192 pixels), the layout halves the forward pass of
    the [B, C, K] one and the hand-written gradient takes forward and backward from 39-46 ms (autodiff)
    to 24-27 ms, at equal values and gradients up to rounding (bench/README.md). Being a `jax.custom_vjp`,
    the logsumexp path supports reverse-mode differentiation only (`jax.grad`, `jax.vjp`), not `jax.jvp`.
    """
    chex.assert_rank(z, 2)
    num_classes, num_components, dim = means.shape
    chex.assert_shape(scales, (num_classes, 1, dim))
    chex.assert_axis_dimension(z, 1, dim)
    terms = shared_scale_terms(means, scales, log_weights)
    if reduction == "logsumexp":
        return _components_logsumexp(z.astype(jnp.float32), *terms)
    if reduction == "max":
        return jnp.max(components_major_joint(z.astype(jnp.float32), *terms), axis=1)
    raise ValueError(f"unknown mixture reduction {reduction!r}: use one of {REDUCTIONS}")


def shared_scale_terms(
    means: jax.Array, scales: jax.Array, log_weights: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """What Eq. 4's expansion needs of the Gaussians, components-major, float32:

    inv_var [C, D] = 1/sigma_y^2; weighted_means [K*C, D] = mu_yk/sigma_y^2 (row k*C + y);
    constant [K, C] = sum_d mu_yk^2/sigma_y^2; offset [K, C] = log pi_yk - sum_d log sigma_yd - D/2 log 2pi.
    """
    dim = means.shape[-1]
    shared = scales[:, 0].astype(jnp.float32)  # [C, D]
    inv_var = 1.0 / jnp.square(shared)
    means_by_component = jnp.swapaxes(means.astype(jnp.float32), 0, 1)  # [K, C, D]
    weighted_means = (means_by_component * inv_var).reshape(-1, dim)
    constant = jnp.sum(jnp.square(means_by_component) * inv_var, axis=-1)
    log_det = jnp.sum(jnp.log(shared), axis=-1)  # [C]
    offset = log_weights.astype(jnp.float32).T - log_det - 0.5 * dim * math.log(2.0 * math.pi)
    return inv_var, weighted_means, constant, offset


def components_major_joint(
    z: jax.Array, inv_var: jax.Array, weighted_means: jax.Array, constant: jax.Array, offset: jax.Array
) -> jax.Array:
    """log pi_yk + log N(z; mu_yk, sigma_y) as [B, K, C], from `shared_scale_terms`.

    The squared distance is clamped at zero, which rounding can cross and the true distance cannot.
    """
    num_components, num_classes = constant.shape
    quadratic = jnp.matmul(jnp.square(z), inv_var.T, precision=HIGHEST)  # [B, C]
    cross = jnp.matmul(z, weighted_means.T, precision=HIGHEST).reshape(-1, num_components, num_classes)
    squared_distance = jnp.maximum(quadratic[:, None] - 2.0 * cross + constant, 0.0)
    return offset - 0.5 * squared_distance


@jax.custom_vjp
def _components_logsumexp(
    z: jax.Array, inv_var: jax.Array, weighted_means: jax.Array, constant: jax.Array, offset: jax.Array
) -> jax.Array:
    """log p(z|y) [B, C]: logsumexp over k of `components_major_joint` (Eq. 4)."""
    return jax.nn.logsumexp(components_major_joint(z, inv_var, weighted_means, constant, offset), axis=1)


def _slab_logsumexp(joint: jax.Array) -> jax.Array:
    """logsumexp over axis 1 of [B, K, C] as elementwise operations on its K slabs (what training's
    forward pass takes: on the CPU it fuses with the backward pass's slabs)."""
    slabs = [joint[:, k] for k in range(joint.shape[1])]
    largest = functools.reduce(jnp.maximum, slabs)
    return largest + jnp.log(sum(jnp.exp(slab - largest) for slab in slabs))


def _components_logsumexp_forward(z, inv_var, weighted_means, constant, offset):
    out = _slab_logsumexp(components_major_joint(z, inv_var, weighted_means, constant, offset))
    return out, (z, inv_var, weighted_means, constant, offset, out)


def _components_logsumexp_backward(residuals, upstream):
    """The gradient through Eq. 4 in closed form, from the responsibilities r_yk = exp(joint_yk - out).

    With g = upstream [B, C] and G_k = g * r_k: d offset_k = sum_b G_k, d constant_k = -1/2 sum_b G_k,
    d cross_k = G_k, and, because sum_k r_yk = 1, d quadratic = -1/2 g whatever the responsibilities;
    then the two matmuls' transposes. The clamp at zero is taken as inactive: where it acts the true
    distance is zero, and so is its gradient. Autodiff of the forward pass instead carries the [B, K, C]
    intermediates of the max, the clamp and the sum, which costs about twice the time on the CPU.
    """
    z, inv_var, weighted_means, constant, offset, out = residuals
    num_components, num_classes = constant.shape
    joint = components_major_joint(z, inv_var, weighted_means, constant, offset)
    weighted = jnp.concatenate([upstream * jnp.exp(joint[:, k] - out) for k in range(num_components)], 1)
    grad_z = (
        jnp.matmul(weighted, weighted_means, precision=HIGHEST)
        - z * jnp.matmul(upstream, inv_var, precision=HIGHEST)
    )
    grad_inv_var = -0.5 * jnp.matmul(upstream.T, jnp.square(z), precision=HIGHEST)
    grad_weighted_means = jnp.matmul(weighted.T, z, precision=HIGHEST)
    grad_offset = jnp.sum(weighted, axis=0).reshape(num_components, num_classes)
    return grad_z, grad_inv_var, grad_weighted_means, -0.5 * grad_offset, grad_offset


_components_logsumexp.defvjp(_components_logsumexp_forward, _components_logsumexp_backward)


def log_posterior(
    z: jax.Array,
    means: jax.Array,
    scales: jax.Array,
    log_weights: jax.Array,
    reduction: str = "logsumexp",
) -> jax.Array:
    """log p(y|z) under a uniform class prior: log_softmax_y log p(z|y), [B, C] (Eq. 1 and 7)."""
    return jax.nn.log_softmax(log_likelihood(z, means, scales, log_weights, reduction), axis=-1)


def responsibilities(component_log_probs: jax.Array, log_weights: jax.Array) -> jax.Array:
    """p(k|z, y) = pi_yk N(z; mu_yk, sigma_yk) / sum_k' (...), over the last axis (Eq. 6's assignments).

    component_log_probs [..., K] and log_weights broadcastable to it.
    """
    return jax.nn.softmax(component_log_probs + log_weights, axis=-1)


def scales_from_raw(raw_scales: jax.Array, scale_floor: float) -> jax.Array:
    """sigma = floor + softplus(rho): a scale can approach the floor but never collapse to zero."""
    return scale_floor + jax.nn.softplus(raw_scales.astype(jnp.float32))


def raw_from_scale(scale: float, scale_floor: float) -> float:
    """The rho with floor + softplus(rho) = scale (inverse of `scales_from_raw`)."""
    if scale <= scale_floor:
        raise ValueError(f"initial scale {scale} must exceed the scale floor {scale_floor}")
    excess = scale - scale_floor
    return math.log(math.expm1(excess))


def raw_from_scales(scales: jax.Array, scale_floor: float) -> jax.Array:
    """The rho with floor + softplus(rho) = scales, elementwise (scales at the floor come back 1e-6 above
    it); softplus^-1(x) = x + log(1 - exp(-x)), stable for small and large x."""
    excess = jnp.maximum(scales - scale_floor, 1e-6)
    return excess + jnp.log(-jnp.expm1(-excess))


def uniform_log_weights(num_classes: int, num_components: int) -> jax.Array:
    """log pi_yk = -log K for every class: where counting starts before anything is remembered."""
    return jnp.full((num_classes, num_components), -math.log(num_components), jnp.float32)


def unit_sphere_means(key: jax.Array, num_classes: int, num_components: int, dim: int) -> jax.Array:
    """Random means on the unit sphere, where L2-normalised latents live."""
    means = jax.random.normal(key, (num_classes, num_components, dim), jnp.float32)
    return means / jnp.linalg.norm(means, axis=-1, keepdims=True)


class GMMHead(nn.Module):
    """The density head theta: owns means and scales (trained by gradient) and the mixture weights.

    Parameters (collection "params"): `means` [C, K, D] and `raw_scales` [C, K or 1, D] with
    sigma = scale_floor + softplus(raw_scales). With `share_scale=True` the K components of a class share
    one diagonal scale (measured: a per-component scale lets the winning component shrink and take every
    point back). Mixture weights live in the "mixture" collection as `log_weights` [C, K]: they are
    estimated by counting (Section 2.2), never by gradient.

    Calling the head returns the class log-likelihoods log p(z|y) [B, C] (Eq. 4) in float32.
    """

    num_classes: int
    num_components: int = 3
    latent_dim: int = 128
    init_scale: float = 0.1
    scale_floor: float = 0.05
    share_scale: bool = True
    reduction: str = "logsumexp"

    def setup(self):
        shape = (self.num_classes, self.num_components, self.latent_dim)
        scale_shape = (self.num_classes, 1 if self.share_scale else self.num_components, self.latent_dim)
        raw_init = raw_from_scale(self.init_scale, self.scale_floor)
        self.means = self.param("means", lambda key: unit_sphere_means(key, *shape))
        self.raw_scales = self.param(
            "raw_scales", lambda key: jnp.full(scale_shape, raw_init, jnp.float32)
        )
        self.log_weights = self.variable(
            "mixture",
            "log_weights",
            lambda: uniform_log_weights(self.num_classes, self.num_components),
        )

    def gaussians(self) -> tuple[jax.Array, jax.Array]:
        """(means, scales), both [C, K, D] float32."""
        params = {"means": self.means, "raw_scales": self.raw_scales}
        return head_gaussians(params, self.scale_floor, self.num_components)

    def __call__(self, z: jax.Array, compact_scales: bool = False) -> jax.Array:
        """log p(z|y) [B, C]. `compact_scales` passes shared scales as [C, 1, D] (`component_log_prob`:
        fewer FLOPs, equal up to rounding); the segmenters use it, classification keeps the broadcast."""
        params = {"means": self.means, "raw_scales": self.raw_scales}
        means, scales = head_gaussians(
            params, self.scale_floor, self.num_components, broadcast=not compact_scales
        )
        return log_likelihood(z, means, scales, self.log_weights.value, self.reduction)


def broadcast_scales(scales: jax.Array, num_components: int) -> jax.Array:
    """[C, 1, D] shared scales (or [C, K, D]) to [C, K, D]."""
    return jnp.broadcast_to(scales, (scales.shape[0], num_components, scales.shape[2]))


def head_gaussians(
    head_params: dict, scale_floor: float, num_components: int, broadcast: bool = True
) -> tuple[jax.Array, jax.Array]:
    """(means, scales) [C, K, D] from the head's parameter dict, as pure functions need them.

    `broadcast=False` keeps shared scales as stored, [C, 1, D] (cheaper in `component_log_prob`).
    """
    scales = scales_from_raw(head_params["raw_scales"], scale_floor)
    if broadcast:
        scales = broadcast_scales(scales, num_components)
    return head_params["means"].astype(jnp.float32), scales
