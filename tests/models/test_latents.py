"""The latent z the GMM sees: projection and normalisation (lgmm_jax.models.lgmm)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgmm_jax.models.lgmm import LATENT_NORMALIZATIONS, create_lgmm, normalize_latents


def test_each_normalization_against_numpy():
    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32) * 3.0
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(normalize_latents(jnp.asarray(x), "none"), x)
    np.testing.assert_allclose(normalize_latents(jnp.asarray(x), "l2"), x / norm, rtol=1e-6)
    log_norm = normalize_latents(jnp.asarray(x), "l2_log_norm")
    assert log_norm.shape == (5, 8)
    np.testing.assert_allclose(log_norm[:, :7], x / norm, rtol=1e-6)
    np.testing.assert_allclose(log_norm[:, 7], np.log(norm[:, 0]), rtol=1e-6)


@pytest.mark.parametrize("normalization", LATENT_NORMALIZATIONS)
def test_the_latent_has_latent_dim_dimensions_whatever_the_normalization(normalization):
    """The head's D is z's dimension: with "l2_log_norm" the projection gives D - 1 and log |x| is the last."""
    model = create_lgmm("small_cnn", 4, 2, 12, latent_normalization=normalization)
    images = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    variables = model.init(jax.random.key(1), images)
    z, log_likelihood = model.apply(variables, images)
    assert z.shape == (3, 12) and log_likelihood.shape == (3, 4)
    kernel = variables["params"]["projection"]["kernel"]
    assert kernel.shape[1] == (11 if normalization == "l2_log_norm" else 12)
    if normalization == "l2_log_norm":
        features = model.apply(variables, images, method=model.features)
        projected = np.asarray(features @ kernel + variables["params"]["projection"]["bias"])
        np.testing.assert_allclose(z[:, -1], np.log(np.linalg.norm(projected, axis=1)), rtol=1e-5, atol=1e-5)
