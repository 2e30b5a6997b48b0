"""The density head against float64 references built on scipy (Eq. 4, Eq. 1/7)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from lgmm_jax.models import gmm


def random_mixture(rng, batch, classes, components, dim, z_scale=1.0, scale_low=0.05, scale_high=2.0):
    z = rng.normal(size=(batch, dim)) * z_scale
    means = rng.normal(size=(classes, components, dim))
    scales = rng.uniform(scale_low, scale_high, size=(classes, components, dim))
    weights = rng.dirichlet(np.ones(components), size=classes)
    return z, means, scales, np.log(weights)


def scipy_component_log_prob(z, means, scales):
    """float64: sum over dimensions of univariate normal log-densities (a diagonal Gaussian)."""
    return stats.norm.logpdf(z[:, None, None, :], means[None], scales[None]).sum(-1)


def as32(*arrays):
    return [jnp.asarray(a, jnp.float32) for a in arrays]


@pytest.mark.parametrize(
    "batch,classes,components,dim", [(7, 10, 3, 16), (3, 100, 1, 128), (4, 1000, 3, 64), (2, 10, 4, 512)]
)
def test_component_log_prob_matches_scipy(batch, classes, components, dim):
    rng = np.random.default_rng(batch * classes + dim)
    z, means, scales, _ = random_mixture(rng, batch, classes, components, dim)
    expected = scipy_component_log_prob(z, means, scales)
    got = np.asarray(gmm.component_log_prob(*as32(z, means, scales)))
    assert got.shape == (batch, classes, components)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-3)


def test_shared_scales_given_once_per_class_match_scipy():
    """[C, 1, D] scales (the segmenters' compact form) give scipy's densities with the scale repeated."""
    rng = np.random.default_rng(3)
    z, means, scales, _ = random_mixture(rng, 6, 12, 3, 32)
    shared = scales[:, :1]
    expected = scipy_component_log_prob(z, means, np.repeat(shared, 3, axis=1))
    got = np.asarray(gmm.component_log_prob(*as32(z, means, shared)))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-3)
    with pytest.raises(ValueError, match=r"must be \[C, K, D\] or \[C, 1, D\]"):
        gmm.component_log_prob(*as32(z, means, scales[:, :2]))


@pytest.mark.parametrize("reduction", gmm.REDUCTIONS)
def test_shared_scale_log_likelihood_matches_scipy(reduction):
    """The components-major path of [C, 1, D] scales against scipy with the scale repeated K times."""
    rng = np.random.default_rng(4)
    z, means, scales, log_weights = random_mixture(rng, 9, 7, 3, 16)
    shared = scales[:, :1]
    joint = scipy_component_log_prob(z, means, np.repeat(shared, 3, axis=1)) + log_weights[None]
    expected = special.logsumexp(joint, axis=-1) if reduction == "logsumexp" else joint.max(-1)
    got = gmm.log_likelihood(*as32(z, means, shared, log_weights), reduction=reduction)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-3)


def test_shared_scale_gradients_match_the_closed_form_in_float64():
    """The hand-written backward pass of the components-major logsumexp (`_components_logsumexp`) against Eq. 4's
    derivatives in float64 numpy: with responsibilities r_bck and upstream g_bc,
    d/dz = -sum_ck g r (z - mu_ck) / sigma_c^2, d/dmu_ck = sum_b g r (z - mu_ck) / sigma_c^2,
    d/dsigma_c = sum_bk g r ((z - mu_ck)^2 / sigma_c^3 - 1 / sigma_c), d/dlog pi_ck = sum_b g r."""
    rng = np.random.default_rng(11)
    z, means, scales, log_weights = random_mixture(rng, 13, 9, 3, 16, scale_low=0.3, scale_high=1.5)
    shared = scales[:, :1]
    upstream = rng.normal(size=(13, 9))
    difference = z[:, None, None, :] - means[None]  # [B, C, K, D]
    joint = scipy_component_log_prob(z, means, np.repeat(shared, 3, axis=1)) + log_weights[None]
    weighted = upstream[:, :, None] * special.softmax(joint, axis=-1)  # g * r, [B, C, K]
    expected = {
        "z": -np.einsum("bck,bckd->bd", weighted, difference / shared[None] ** 2),
        "means": np.einsum("bck,bckd->ckd", weighted, difference / shared[None] ** 2),
        "scales": np.einsum("bck,bckd->cd", weighted, difference**2 / shared[None] ** 3 - 1 / shared[None])[:, None],
        "log_weights": weighted.sum(0),
    }
    loss = lambda *args: jnp.sum(gmm.shared_scale_log_likelihood(*args) * upstream)
    got = jax.grad(loss, argnums=(0, 1, 2, 3))(*as32(z, means, shared, log_weights))
    for name, value in zip(expected, got):
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-4 * np.abs(expected[name]).max(),
                                   err_msg=name)


def test_single_component_matches_scipy_multivariate_normal():
    rng = np.random.default_rng(0)
    z, means, scales, _ = random_mixture(rng, 5, 2, 1, 8)
    expected = np.stack(
        [stats.multivariate_normal(means[c, 0], np.diag(scales[c, 0] ** 2)).logpdf(z) for c in range(2)], -1
    )
    got = gmm.component_log_prob(*as32(z, means, scales))[:, :, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dim,classes", [(128, 10), (512, 1000)])
def test_log_likelihood_and_posterior_match_scipy(dim, classes):
    rng = np.random.default_rng(dim)
    z, means, scales, log_weights = random_mixture(rng, 6, classes, 3, dim)
    joint = scipy_component_log_prob(z, means, scales) + log_weights[None]
    expected_likelihood = special.logsumexp(joint, axis=-1)
    expected_posterior = expected_likelihood - special.logsumexp(expected_likelihood, axis=-1, keepdims=True)
    args = as32(z, means, scales, log_weights)
    np.testing.assert_allclose(gmm.log_likelihood(*args), expected_likelihood, rtol=2e-5, atol=1e-3)
    np.testing.assert_allclose(gmm.log_posterior(*args), expected_posterior, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.exp(gmm.log_posterior(*args)).sum(-1), 1.0, rtol=1e-5)


def test_max_reduction_is_appendix_g_best_component():
    rng = np.random.default_rng(1)
    z, means, scales, log_weights = random_mixture(rng, 4, 5, 3, 8)
    joint = scipy_component_log_prob(z, means, scales) + log_weights[None]
    got = gmm.log_likelihood(*as32(z, means, scales, log_weights), reduction="max")
    np.testing.assert_allclose(got, joint.max(-1), rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="reduction"):
        gmm.log_likelihood(*as32(z, means, scales, log_weights), reduction="mean")


def test_extreme_latents_and_floor_scales_stay_finite_and_accurate():
    rng = np.random.default_rng(2)
    dim = 128
    z = rng.uniform(-1e3, 1e3, size=(4, dim))
    means = rng.normal(size=(10, 3, dim))
    scales = np.full((10, 3, dim), 0.05)
    log_weights = np.log(np.full((10, 3), 1 / 3))
    got = np.asarray(gmm.log_likelihood(*as32(z, means, scales, log_weights)))
    assert np.all(np.isfinite(got))
    expected = special.logsumexp(scipy_component_log_prob(z, means, scales) + log_weights, axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # A latent sitting exactly on a mean at the floor scale: the distance cannot go negative.
    on_mean = np.asarray(gmm.component_log_prob(*as32(means[:1, 0], means, scales)))
    expected_peak = -dim / 2 * math.log(2 * math.pi) - dim * math.log(0.05)
    np.testing.assert_allclose(on_mean[0, 0, 0], expected_peak, rtol=1e-5)
    assert np.all(on_mean <= expected_peak + 1e-2)


def test_responsibilities_sum_to_one():
    rng = np.random.default_rng(3)
    z, means, scales, log_weights = random_mixture(rng, 9, 4, 3, 16)
    component = gmm.component_log_prob(*as32(z, means, scales))
    r = np.asarray(gmm.responsibilities(component, jnp.asarray(log_weights, jnp.float32)))
    np.testing.assert_allclose(r.sum(-1), 1.0, rtol=1e-6)
    assert np.all(r >= 0)


def test_no_batch_by_components_by_dim_tensor_is_built():
    batch, classes, components, dim = 8, 50, 3, 64
    jaxpr = jax.make_jaxpr(gmm.log_likelihood)(
        jnp.zeros((batch, dim)),
        jnp.zeros((classes, components, dim)),
        jnp.ones((classes, components, dim)),
        jnp.zeros((classes, components)),
    )
    largest = max(np.prod(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars)
    assert largest < batch * classes * components * dim / 4


def test_bfloat16_latents_are_computed_in_float32():
    rng = np.random.default_rng(4)
    z, means, scales, log_weights = random_mixture(rng, 3, 4, 3, 32)
    out = gmm.log_likelihood(jnp.asarray(z, jnp.bfloat16), *as32(means, scales, log_weights))
    assert out.dtype == jnp.float32


def test_head_scale_floor_and_uniform_weights():
    head = gmm.GMMHead(num_classes=5, num_components=3, latent_dim=16, init_scale=0.1, scale_floor=0.05)
    variables = head.init(jax.random.key(0), jnp.zeros((1, 16)))
    means, scales = head.apply(variables, method=head.gaussians)
    np.testing.assert_allclose(scales, 0.1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(means, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.exp(variables["mixture"]["log_weights"]), 1 / 3, rtol=1e-6)
    collapsed = jax.tree.map(lambda x: x, variables)
    collapsed["params"]["raw_scales"] = jnp.full_like(variables["params"]["raw_scales"], -1e6)
    _, floor_scales = head.apply(collapsed, method=head.gaussians)
    np.testing.assert_allclose(floor_scales, 0.05, rtol=1e-6)
    out = jax.jit(lambda v, z: head.apply(v, z))(collapsed, jnp.full((2, 16), 1e3))
    assert out.shape == (2, 5) and np.all(np.isfinite(out))


def test_initial_scale_must_exceed_floor():
    with pytest.raises(ValueError, match="floor"):
        gmm.raw_from_scale(0.05, 0.05)
