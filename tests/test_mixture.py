"""Keeping the mixture alive: balanced assignments, counted weights, moments, k-means."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgmm_jax.method import losses, mixture
from lgmm_jax.method.memory import create_memory, update_memory
from lgmm_jax.models.gmm import scales_from_raw
from lgmm_jax.method.objective import ObjectiveConfig

C, K, D, PER_MODE = 2, 3, 16, 200
SINKHORN_ITERATIONS = ObjectiveConfig().sinkhorn_iterations  # the default the training uses


def three_mode_classes(seed=0, spread=0.03):
    """Per class, three well separated modes on the unit sphere: latents [C, 3*PER_MODE, D], modes [C, 3, D]."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.normal(size=(D, D)))[0][: C * K].reshape(C, K, D)
    modes = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    points = modes[:, :, None, :] + spread * rng.normal(size=(C, K, PER_MODE, D))
    points /= np.linalg.norm(points, axis=-1, keepdims=True)
    return points.reshape(C, K * PER_MODE, D).astype(np.float32), modes


def fit(latents, initial_means, assignment, iterations=30, floor=0.01):
    """Alternate assignments and M-steps (rate 1) on a fixed bank, as training does step by step."""
    latents = jnp.asarray(latents)
    valid = jnp.ones(latents.shape[:2], bool)

    @jax.jit
    def iteration(head, log_weights):
        means = head["means"]
        scales = jnp.broadcast_to(scales_from_raw(head["raw_scales"], floor), means.shape)
        log_prob = mixture.own_class_log_prob(latents, means, scales)
        if assignment == "sinkhorn":
            potentials = mixture.sinkhorn_log_potentials(log_prob, valid, 0.05, SINKHORN_ITERATIONS)
            chosen = mixture.balanced_assignment(log_prob, potentials[:, None], 0.05)
        else:
            chosen = jnp.argmax(log_prob + log_weights[:, None], -1)
        weights = jax.nn.one_hot(chosen, K)
        head = mixture.moment_matched_head(head, latents, valid, weights, floor, 1.0)
        usage, present = mixture.masked_usage(weights, valid)
        return head, mixture.counted_log_weights(jnp.sum(weights, 1), present, log_weights), usage

    raw = jnp.full((C, 1, D), np.log(np.expm1(0.1 - floor)), jnp.float32)
    head = {"means": jnp.asarray(initial_means), "raw_scales": raw}
    log_weights = jnp.full((C, K), -np.log(K))
    for _ in range(iterations):
        head, log_weights, usage = iteration(head, log_weights)
    return head, usage


def collapse_prone_start(modes, seed=1):
    """One component on a mode; the other two on the far side of the sphere, where no latent lies (dead
    components, as they end up when one component wins a class early in training)."""
    rng = np.random.default_rng(seed)
    far_side = -modes.sum(axis=1, keepdims=True) + 0.05 * rng.normal(size=(C, K - 1, D))
    far_side /= np.linalg.norm(far_side, axis=-1, keepdims=True)
    return np.concatenate([modes[:, :1], far_side], axis=1).astype(np.float32)


def test_balanced_assignment_recovers_three_modes_where_argmax_collapses():
    latents, modes = three_mode_classes()
    start = collapse_prone_start(modes)
    balanced_head, balanced_usage = fit(latents, start, "sinkhorn")
    _, argmax_usage = fit(latents, start, "posterior")

    assert float(jnp.min(losses.effective_components(balanced_usage))) > 2.9
    assert float(jnp.max(losses.effective_components(argmax_usage))) < 1.5
    # each true mode has a component mean near it
    distances = np.linalg.norm(np.asarray(balanced_head["means"])[:, :, None] - modes[:, None], axis=-1)
    assert np.all(distances.min(axis=1) < 0.1), distances.min(axis=1)


def test_sinkhorn_plan_is_balanced():
    rng = np.random.default_rng(0)
    log_prob = jnp.asarray(rng.normal(size=(C, 60, K)) * 20 + np.array([30.0, 0, 0]), jnp.float32)
    valid = jnp.ones((C, 60), bool).at[1, 45:].set(False)
    potentials = mixture.sinkhorn_log_potentials(log_prob, valid, epsilon=1.0, iterations=50)
    chosen = np.asarray(mixture.balanced_assignment(log_prob, potentials[:, None], 1.0))
    counts0 = np.bincount(chosen[0], minlength=K)
    counts1 = np.bincount(chosen[1][:45], minlength=K)
    assert counts0.max() - counts0.min() <= 6 and counts1.max() - counts1.min() <= 6
    # without balancing the first component would take almost everything
    assert np.bincount(np.argmax(np.asarray(log_prob[0]), -1), minlength=K)[0] > 40


def test_counted_weights_are_laplace_smoothed_frequencies():
    counts = jnp.array([[6.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    previous = jnp.log(jnp.full((2, 3), 1 / 3))
    log_weights = mixture.counted_log_weights(counts, jnp.array([True, False]), previous)
    np.testing.assert_allclose(np.exp(log_weights[0]), np.array([7, 4, 1]) / 12, rtol=1e-6)
    np.testing.assert_allclose(log_weights[1], previous[1])  # nothing counted: unchanged
    ema = mixture.counted_log_weights(counts, jnp.array([True, False]), previous, ema_decay=0.5)
    np.testing.assert_allclose(np.exp(ema[0]), 0.5 / 3 + 0.5 * np.array([7, 4, 1]) / 12, rtol=1e-6)


@pytest.mark.parametrize("share_scale", [True, False])
def test_bank_moments_match_numpy(share_scale):
    rng = np.random.default_rng(3)
    latents = rng.normal(size=(C, 50, 4)).astype(np.float32)
    valid = rng.random((C, 50)) > 0.3
    chosen = rng.integers(0, K, (C, 50))
    means, stds, has = mixture.bank_moments(jnp.asarray(latents), jnp.asarray(valid), jax.nn.one_hot(chosen, K), share_scale)
    for c in range(C):
        pooled = []
        for k in range(K):
            members = latents[c][valid[c] & (chosen[c] == k)]
            np.testing.assert_allclose(means[c, k], members.mean(0), rtol=1e-4, atol=1e-5)
            pooled.append(members - members.mean(0))
            if not share_scale:
                np.testing.assert_allclose(stds[c, k], members.std(0), rtol=1e-3, atol=1e-5)
        if share_scale:
            np.testing.assert_allclose(stds[c, 0], np.concatenate(pooled).std(0), rtol=1e-3, atol=1e-5)
    assert bool(has.all())


def test_spherical_kmeans_on_the_memory_bank_finds_the_modes():
    latents, modes = three_mode_classes(seed=5)
    memory = create_memory(C, K * PER_MODE, D)
    labels = jnp.repeat(jnp.arange(C), K * PER_MODE)
    memory = update_memory(memory, jnp.asarray(latents.reshape(-1, D)), labels)
    previous = jnp.zeros((C, K, D))
    means = np.asarray(mixture.spherical_kmeans(jax.random.key(0), memory, previous, iterations=10))
    distances = np.linalg.norm(means[:, :, None] - modes[:, None], axis=-1)
    assert np.all(distances.min(axis=1) < 0.1)
