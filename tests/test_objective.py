"""The gradient split (Section 2.1): L_D trains only phi, L_G trains only theta, in one value_and_grad.

The reference is a second, naive computation: a broadcast [B, C, K, D] Gaussian log-density and two
separate `jax.grad` calls, one per loss, each w.r.t. its own parameters only.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgmm_jax.memory import create_memory
from lgmm_jax.models.gmm import GMMHead
from lgmm_jax.objective import VARIANTS, ObjectiveConfig, lgmm_objective

C, K, D, F, B = 4, 3, 8, 6, 16
FLOOR = 0.05


def setup():
    head = GMMHead(num_classes=C, num_components=K, latent_dim=D, scale_floor=FLOOR, share_scale=False)
    variables = head.init(jax.random.key(0), jnp.zeros((1, D)))
    theta = variables["params"]
    theta = {**theta, "raw_scales": theta["raw_scales"] + jax.random.normal(jax.random.key(5), theta["raw_scales"].shape)}
    log_weights = jnp.log(jax.random.dirichlet(jax.random.key(4), jnp.ones(K), (C,)))
    phi = jax.random.normal(jax.random.key(1), (F, D))
    images = jax.random.normal(jax.random.key(2), (B, F))
    labels = jnp.arange(B) % C
    return theta, log_weights, phi, images, labels


def encode(phi, images):
    z = images @ phi
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True)


def naive_log_normal(z, theta):
    """[B, C, K] by broadcasting, independent of the two-matmul expansion under test."""
    scales = FLOOR + jax.nn.softplus(theta["raw_scales"])
    diff = z[:, None, None, :] - theta["means"][None]
    return (
        -0.5 * D * math.log(2 * math.pi)
        - jnp.sum(jnp.log(scales), -1)[None]
        - 0.5 * jnp.sum(jnp.square(diff / scales[None]), -1)
    )


def naive_discriminative(phi, theta, log_weights, images, labels, temperature=1.0):
    log_likelihood = jax.nn.logsumexp(naive_log_normal(encode(phi, images), theta) + log_weights, -1)
    return -jnp.mean(jax.nn.log_softmax(log_likelihood / temperature)[jnp.arange(B), labels])


def naive_generative(theta, z, log_weights, labels, lambda_one, lambda_avg):
    joint = naive_log_normal(z, theta)[jnp.arange(B), labels] + log_weights[labels]  # [B, K]
    nll = -jnp.mean(jax.nn.logsumexp(joint, -1))
    r = jax.nn.softmax(joint, -1)
    one = jnp.mean(jnp.sum(jnp.square(r - jax.nn.one_hot(jnp.argmax(r, -1), K)), -1))
    usage = jnp.stack([r[labels == c].mean(0) for c in range(C)])  # the bank holds exactly this batch
    avg = jnp.mean(0.5 * jnp.sum(jnp.abs(usage - 1 / K), -1))
    return nll + lambda_one * one + lambda_avg * avg


@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_one_value_and_grad_equals_two_separate_grads(temperature):
    theta, log_weights, phi, images, labels = setup()
    config = ObjectiveConfig(
        num_components=K, scale_floor=FLOOR, assignment="posterior", lambda_one=0.3, lambda_avg=2.0,
        discriminative_temperature=temperature,
    )
    memory = create_memory(C, B, D)

    def objective(phi, theta):
        return lgmm_objective(encode(phi, images), labels, jnp.ones(B, bool), theta, log_weights, memory, config)

    (_, outputs), (grad_phi, grad_theta) = jax.jit(jax.value_and_grad(objective, (0, 1), has_aux=True))(phi, theta)

    expected_phi = jax.grad(naive_discriminative)(phi, theta, log_weights, images, labels, temperature)
    z = encode(phi, images)
    expected_theta = jax.grad(naive_generative)(theta, z, log_weights, labels, 0.3, 2.0)
    np.testing.assert_allclose(grad_phi, expected_phi, rtol=1e-4, atol=1e-6)
    for name in ("means", "raw_scales"):
        np.testing.assert_allclose(grad_theta[name], expected_theta[name], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        outputs.terms["discriminative"],
        naive_discriminative(phi, theta, log_weights, images, labels, temperature),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        outputs.terms["generative"], naive_generative(theta, z, log_weights, labels, 0.3, 2.0), rtol=1e-5
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("assignment", ["posterior", "sinkhorn"])
def test_no_leak_either_way(variant, assignment):
    theta, log_weights, phi, images, labels = setup()
    config = ObjectiveConfig(num_components=K, scale_floor=FLOOR, variant=variant, assignment=assignment)
    memory = create_memory(C, 5, D)

    def term(name):
        def f(phi, theta):
            _, outputs = lgmm_objective(encode(phi, images), labels, jnp.ones(B, bool), theta, log_weights, memory, config)
            return outputs.terms[name]

        return jax.jit(jax.grad(f, (0, 1)))(phi, theta)

    d_phi, d_theta = term("discriminative")
    g_phi, g_theta = term("generative")
    assert float(jnp.abs(d_phi).max()) > 0
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(d_theta))
    assert float(jnp.abs(g_phi).max()) == 0
    assert float(jnp.abs(g_theta["means"]).max()) > 0


def test_generative_only_training_moves_the_encoder():
    theta, log_weights, phi, images, labels = setup()
    config = ObjectiveConfig(num_components=K, scale_floor=FLOOR, training="generative_only")
    memory = create_memory(C, 5, D)

    def f(phi):
        return lgmm_objective(encode(phi, images), labels, jnp.ones(B, bool), theta, log_weights, memory, config)[0]

    assert float(jnp.abs(jax.grad(f)(phi)).max()) > 0


def test_bad_option_names_the_key():
    with pytest.raises(ValueError, match="loss.assignment"):
        ObjectiveConfig(assignment="greedy")


def test_bank_subsample_looks_at_a_random_subset_of_slots():
    theta, log_weights, phi, images, labels = setup()
    config = ObjectiveConfig(num_components=K, scale_floor=FLOOR, bank_sample_size=4)
    memory = create_memory(C, 10, D)
    z = encode(phi, images)
    _, first = lgmm_objective(z, labels, jnp.ones(B, bool), theta, log_weights, memory, config, jax.random.key(0))
    _, second = lgmm_objective(z, labels, jnp.ones(B, bool), theta, log_weights, memory, config, jax.random.key(1))
    assert first.bank_latents.shape == (C, 4, D)
    assert first.memory.latents.shape == (C, 10, D)  # the bank itself keeps every slot
    assert not np.array_equal(first.bank_latents, second.bank_latents)
    _, whole = lgmm_objective(z, labels, jnp.ones(B, bool), theta, log_weights, memory, config)
    assert whole.bank_latents.shape == (C, 10, D)


@pytest.mark.parametrize("name", ["discriminative_temperature", "responsibility_temperature"])
def test_temperatures_must_be_positive(name):
    with pytest.raises(ValueError, match=f"loss.{name}=0.0 must be positive"):
        ObjectiveConfig(**{name: 0.0})


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_batch_with_fewer_examples_than_classes_updates_only_its_classes(variant):
    """With B < C the bank work covers only the batch's classes (Appendix G); the reference is the same
    batch padded with masked examples to B >= C, which takes every class (only the batch's have latents)."""
    num_classes, batch = 8, 5
    head = GMMHead(num_classes=num_classes, num_components=K, latent_dim=D, scale_floor=FLOOR)
    theta = head.init(jax.random.key(0), jnp.zeros((1, D)))["params"]
    log_weights = jnp.log(jax.random.dirichlet(jax.random.key(4), jnp.ones(K), (num_classes,)))
    z = jax.random.normal(jax.random.key(2), (batch, D))
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    labels = jnp.array([5, 1, 3, 3, 6])
    mask = jnp.array([True, True, True, True, False])  # class 6 is padding: not a class of this batch
    config = ObjectiveConfig(num_components=K, scale_floor=FLOOR, variant=variant)
    memory = create_memory(num_classes, 6, D)
    padding = num_classes - batch

    def objective(z, theta, labels, mask):
        return lgmm_objective(z, labels, mask, theta, log_weights, memory, config)

    (total, few), grads = jax.value_and_grad(objective, (0, 1), has_aux=True)(z, theta, labels, mask)
    padded = (
        jnp.concatenate([z, jnp.tile(z[:1], (padding, 1))]),
        theta,
        jnp.concatenate([labels, jnp.zeros(padding, labels.dtype)]),
        jnp.concatenate([mask, jnp.zeros(padding, bool)]),
    )
    (expected_total, every), expected_grads = jax.value_and_grad(objective, (0, 1), has_aux=True)(*padded)

    np.testing.assert_array_equal(few.classes, [1, 3, 5, 5, 5])
    np.testing.assert_array_equal(few.distinct, [True, True, True, False, False])
    assert every.classes.shape == (num_classes,)
    np.testing.assert_allclose(total, expected_total, rtol=1e-6)
    for name in every.terms:
        np.testing.assert_allclose(few.terms[name], every.terms[name], rtol=1e-6, atol=1e-7, err_msg=name)
    for row, label in enumerate([1, 3, 5]):
        np.testing.assert_allclose(few.counts[row], every.counts[label])
        np.testing.assert_allclose(few.hard_usage[row], every.hard_usage[label])
    np.testing.assert_allclose(grads[0], expected_grads[0][:batch], rtol=1e-5, atol=1e-7)
    for name in theta:
        np.testing.assert_allclose(grads[1][name], expected_grads[1][name], rtol=1e-5, atol=1e-7, err_msg=name)
