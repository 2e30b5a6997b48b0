"""The gradient split (Section 2.1): L_D trains only phi, L_G trains only theta, in one value_and_grad.

The per-pixel objective (segmentation) is checked against the classification objective on the flattened
labelled pixels, and against scipy's upsampling. The reference is a second, naive computation: a broadcast [B, C, K, D] Gaussian log-density and two
separate `jax.grad` calls, one per loss, each w.r.t. its own parameters only.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from lgmm_jax.method.memory import create_memory
from lgmm_jax.models.gmm import GMMHead
from lgmm_jax.method.objective import VARIANTS, ObjectiveConfig, PixelConfig, lgmm_objective, pixel_lgmm_objective

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
    usage = jnp.stack([r[np.asarray(labels) == c].mean(0) for c in range(C)])  # the bank holds exactly this batch
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

    # The references compiled whole (labels closed over, so their class masks stay concrete).
    expected_phi = jax.jit(jax.grad(
        lambda phi: naive_discriminative(phi, theta, log_weights, images, labels, temperature)))(phi)
    z = encode(phi, images)
    expected_theta = jax.jit(jax.grad(lambda theta: naive_generative(theta, z, log_weights, labels, 0.3, 2.0)))(theta)
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

    assert_gradient_split(term)


def assert_gradient_split(term):
    """Section 2.1's split: `term(name)` -> (d/dphi, d/dtheta) of one loss term. L_D reaches only the
    encoder phi, L_G only the Gaussians theta, and each reaches its own side."""
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
    objective = functools.partial(lgmm_objective, z, labels, jnp.ones(B, bool), theta, log_weights, memory)
    subsampled = jax.jit(functools.partial(objective, config))  # compiled once for both keys
    _, first = subsampled(jax.random.key(0))
    _, second = subsampled(jax.random.key(1))
    assert first.bank_latents.shape == (C, 4, D)
    assert first.memory.latents.shape == (C, 10, D)  # the bank itself keeps every slot
    assert not np.array_equal(first.bank_latents, second.bank_latents)
    _, whole = jax.jit(objective, static_argnums=0)(config)  # no key: every slot
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

    value_and_grad = jax.jit(jax.value_and_grad(objective, (0, 1), has_aux=True))  # one compilation per shape
    (total, few), grads = value_and_grad(z, theta, labels, mask)
    padded = (
        jnp.concatenate([z, jnp.tile(z[:1], (padding, 1))]),
        theta,
        jnp.concatenate([labels, jnp.zeros(padding, labels.dtype)]),
        jnp.concatenate([mask, jnp.zeros(padding, bool)]),
    )
    (expected_total, every), expected_grads = value_and_grad(*padded)

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


# --- The per-pixel objective (segmentation): a pixel is an example --------------------------------------

VOID = 255
H, W = 4, 6  # the decoder's resolution in these tests


def pixel_setup(void_fraction=0.3, scale=1, seed=0):
    """A per-pixel linear encoder (images [2, H, W, F] -> unit latents) and labels at `scale` x the
    latents' resolution, some void."""
    theta, log_weights, phi, _, _ = setup()
    images = jax.random.normal(jax.random.key(seed + 10), (2, H, W, F))
    labels = jax.random.randint(jax.random.key(seed + 11), (2, H * scale, W * scale), 0, C)
    void = jax.random.uniform(jax.random.key(seed + 12), labels.shape) < void_fraction
    return theta, log_weights, phi, images, jnp.where(void, VOID, labels)


def pixel_config(**overrides):
    return ObjectiveConfig(
        num_components=K, scale_floor=FLOOR, bank_sample_size=1000, **overrides
    )


def pixel_objective_and_grads(phi, theta, images, labels, log_weights, memory, config, pixels, key=0):
    def objective(phi, theta, images):  # images an argument: calls with other images reuse the compilation
        return pixel_lgmm_objective(
            encode(phi, images), labels, theta, log_weights, memory, config, jax.random.key(key), pixels
        )

    return jax.jit(jax.value_and_grad(objective, (0, 1), has_aux=True))(phi, theta, images)


@pytest.mark.parametrize("assignment", ["posterior", "sinkhorn"])
def test_pixel_objective_is_the_classification_objective_on_the_labelled_pixels(assignment):
    """Labels at the latents' resolution, every class within the per-class sample and L_D averaged over the
    labelled pixels (`avg_non_ignore`): same value, same gradients (encoder and Gaussians), same bank and
    counts as `lgmm_objective` on the flattened labelled pixels, which the reference picks by numpy
    indexing."""
    theta, log_weights, phi, images, labels = pixel_setup()
    config = pixel_config(assignment=assignment, lambda_one=0.3, discriminative_temperature=3.0)
    memory = create_memory(C, 40, D)
    (total, outputs), grads = pixel_objective_and_grads(
        phi, theta, images, labels, log_weights, memory, config,
        PixelConfig(pixels_per_class=H * W * 2, avg_non_ignore=True),
    )

    keep = np.asarray(labels).reshape(-1) != VOID
    flat_images = np.asarray(images).reshape(-1, F)[keep]
    flat_labels = jnp.asarray(np.asarray(labels).reshape(-1)[keep])

    def reference(phi, theta):
        return lgmm_objective(
            encode(phi, flat_images), flat_labels, jnp.ones(keep.sum(), bool), theta, log_weights, memory, config
        )

    (expected_total, expected), expected_grads = jax.jit(jax.value_and_grad(reference, (0, 1), has_aux=True))(
        phi, theta
    )
    np.testing.assert_allclose(total, expected_total, rtol=1e-6)
    for name in expected.terms:
        np.testing.assert_allclose(outputs.terms[name], expected.terms[name], rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(grads[0], expected_grads[0], rtol=1e-4, atol=1e-7)
    for name in theta:
        np.testing.assert_allclose(grads[1][name], expected_grads[1][name], rtol=1e-4, atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(outputs.memory.valid, expected.memory.valid)
    np.testing.assert_array_equal(outputs.memory.write_index, expected.memory.write_index)
    # The same latents in the same slots (the encoder's matmul on another shape may differ by an ulp).
    np.testing.assert_allclose(outputs.memory.latents, expected.memory.latents, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outputs.counts, expected.counts)
    assert outputs.class_log_likelihood.shape == (2, H, W, C)


def naive_upsampled_discriminative(phi, theta, log_weights, images, labels, temperature):
    """L_D with log p(z|y) upsampled by scipy (order-1 zoom on the pixel grid: PyTorch's bilinear
    align_corners=False) and the naive broadcast log-density, summed over labelled pixels and divided by
    all pixels as mmseg's CrossEntropyLoss (numpy)."""
    z = encode(phi, images.reshape(-1, F))
    log_likelihood = jax.nn.logsumexp(naive_log_normal(z, theta) + log_weights, -1).reshape(2, H, W, C)
    factor = labels.shape[1] // H
    upsampled = scipy.ndimage.zoom(np.asarray(log_likelihood), (1, factor, factor, 1), order=1, grid_mode=True, mode="nearest")
    log_posterior = np.asarray(jax.nn.log_softmax(jnp.asarray(upsampled) / temperature))
    labels = np.asarray(labels)
    keep = labels != VOID
    return -log_posterior[keep, labels[keep]].sum() / labels.size


def test_pixel_discriminative_loss_is_taken_on_log_likelihoods_upsampled_to_the_labels():
    theta, log_weights, phi, images, labels = pixel_setup(scale=4)
    config = pixel_config(discriminative_temperature=2.0)
    (_, outputs), _ = pixel_objective_and_grads(
        phi, theta, images, labels, log_weights, create_memory(C, 8, D), config, PixelConfig()
    )
    expected = naive_upsampled_discriminative(phi, theta, log_weights, images, labels, 2.0)
    np.testing.assert_allclose(outputs.terms["discriminative"], expected, rtol=1e-5)


def test_void_pixels_have_no_influence():
    """Labels at 4x the latents' resolution with the first 16 label columns void: the latents of the first
    three decoder columns feed only void pixels (bilinear footprint) and are void after nearest
    downsampling. Changing their image content changes nothing: value, gradients, bank."""
    theta, log_weights, phi, images, labels = pixel_setup(void_fraction=0.1, scale=4)
    labels = labels.at[:, :, :16].set(VOID)
    changed = images.at[:, :, :3].set(jax.random.normal(jax.random.key(99), (2, H, 3, F)))
    config = pixel_config()
    pixels = PixelConfig(pixels_per_class=5)  # fewer than most classes have: a real sample
    memory = create_memory(C, 7, D)
    (total, outputs), grads = pixel_objective_and_grads(phi, theta, images, labels, log_weights, memory, config, pixels)
    (total2, outputs2), grads2 = pixel_objective_and_grads(phi, theta, changed, labels, log_weights, memory, config, pixels)
    assert float(total) == float(total2)
    for a, b in zip(jax.tree.leaves((grads, outputs.memory, outputs.counts)), jax.tree.leaves((grads2, outputs2.memory, outputs2.counts))):
        np.testing.assert_array_equal(a, b)

    def latent_gradient(z):
        def f(z):
            return pixel_lgmm_objective(z, labels, theta, log_weights, memory, config, jax.random.key(0), pixels)[0]
        return jax.jit(jax.grad(f))(z)

    dz = latent_gradient(encode(phi, images))
    assert float(jnp.abs(dz[:, :, :3]).max()) == 0.0
    assert float(jnp.abs(dz[:, :, 3]).max()) > 0.0


def test_pixel_objective_keeps_the_gradient_split():
    theta, log_weights, phi, images, labels = pixel_setup(scale=4)
    config = pixel_config()
    memory = create_memory(C, 5, D)

    def term(name):
        def f(phi, theta):
            _, outputs = pixel_lgmm_objective(
                encode(phi, images), labels, theta, log_weights, memory, config, jax.random.key(0), PixelConfig(pixels_per_class=3)
            )
            return outputs.terms[name]

        return jax.jit(jax.grad(f, (0, 1)))(phi, theta)

    assert_gradient_split(term)


@pytest.mark.parametrize("remember_misclassified", [True, False])
def test_the_bank_receives_a_bounded_sample_of_each_class(remember_misclassified):
    theta, log_weights, phi, images, labels = pixel_setup(void_fraction=0.2)
    pixels = PixelConfig(pixels_per_class=2, remember_misclassified=remember_misclassified)
    memory = create_memory(C, 10, D)
    (_, outputs), _ = pixel_objective_and_grads(phi, theta, images, labels, log_weights, memory, pixel_config(), pixels)
    flat_labels = np.asarray(labels).reshape(-1)
    z = np.asarray(encode(phi, images)).reshape(-1, D)
    predicted = np.asarray(outputs.class_log_likelihood).reshape(-1, C).argmax(-1)
    for c in range(C):
        candidates = (flat_labels == c) & (remember_misclassified | (predicted == c))
        remembered = np.asarray(outputs.memory.latents[c][outputs.memory.valid[c]])
        assert len(remembered) == min(2, candidates.sum())
        for latent in remembered:  # each one is a latent of an eligible pixel of its class
            assert np.any(np.all(z[candidates] == latent, axis=1))


def test_pixel_options_are_checked():
    with pytest.raises(ValueError, match="pixels_per_class=0"):
        PixelConfig(pixels_per_class=0)
    theta, log_weights, phi, images, labels = pixel_setup()
    with pytest.raises(ValueError, match=r"latents \[B, h, w, D\] and labels \[B, H, W\]"):
        pixel_lgmm_objective(
            encode(phi, images).reshape(-1, D), labels, theta, log_weights, create_memory(C, 2, D), pixel_config(),
            jax.random.key(0),
        )
