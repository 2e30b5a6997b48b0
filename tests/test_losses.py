"""Loss terms of Eq. 5-7 against hand computations in numpy/scipy."""
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from lgmm_jax.method import losses


def test_discriminative_loss_is_cross_entropy_of_the_posterior():
    rng = np.random.default_rng(0)
    log_likelihood = rng.normal(size=(6, 4)) * 10
    labels = rng.integers(0, 4, 6)
    log_posterior = log_likelihood - special.logsumexp(log_likelihood, axis=-1, keepdims=True)
    expected = -log_posterior[np.arange(6), labels].mean()
    got = losses.discriminative_loss(jnp.asarray(log_likelihood, jnp.float32), jnp.asarray(labels))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 10.0])
def test_tempered_discriminative_loss_is_cross_entropy_of_the_tempered_posterior(temperature):
    rng = np.random.default_rng(1)
    log_likelihood = rng.normal(size=(6, 4)) * 100
    labels = rng.integers(0, 4, 6)
    log_tempered_posterior = special.log_softmax(log_likelihood / temperature, axis=-1)
    expected = -log_tempered_posterior[np.arange(6), labels].mean()
    got = losses.discriminative_loss(
        jnp.asarray(log_likelihood, jnp.float32), jnp.asarray(labels), temperature=temperature
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_padding_is_excluded_from_the_mean():
    values = jnp.array([1.0, 2.0, 100.0])
    np.testing.assert_allclose(losses.masked_mean(values, jnp.array([True, True, False])), 1.5)
    np.testing.assert_allclose(losses.masked_mean(values, jnp.zeros(3, bool)), 0.0)


def test_one_hot_loss_zero_at_one_hot_and_matches_hand_value():
    one_hot = jnp.eye(3)[jnp.array([0, 2, 1])]
    assert float(losses.one_hot_loss(one_hot)) == 0.0
    r = jnp.array([[0.5, 0.3, 0.2]])
    np.testing.assert_allclose(losses.one_hot_loss(r), 0.25 + 0.09 + 0.04, rtol=1e-6)
    np.testing.assert_allclose(losses.one_hot_loss(r, targets=jnp.array([2])), 0.25 + 0.09 + 0.64, rtol=1e-6)


def test_usage_loss_zero_at_uniform_positive_otherwise_max_at_collapse():
    k = 3
    uniform = jnp.full((4, k), 1 / k)
    present = jnp.ones(4, bool)
    assert float(losses.average_usage_loss(uniform, present)) == pytest.approx(0.0, abs=1e-7)
    assert float(losses.average_usage_loss(uniform, present, "kl")) == pytest.approx(0.0, abs=1e-6)
    skewed = jnp.array([[0.5, 0.3, 0.2]] * 4)
    assert float(losses.average_usage_loss(skewed, present)) > 0
    assert float(losses.average_usage_loss(skewed, present, "kl")) > 0
    collapsed = jnp.eye(k)[jnp.zeros(4, int)]
    np.testing.assert_allclose(
        losses.average_usage_loss(collapsed, present), losses.max_total_variation(k), rtol=1e-6
    )
    # total variation = W1 under the 0/1 ground metric; the KL against scipy's relative entropy
    np.testing.assert_allclose(losses.usage_distance(skewed)[0], 0.5 * np.abs(skewed[0] - 1 / k).sum(), rtol=1e-6)
    np.testing.assert_allclose(
        losses.usage_distance(skewed, "kl")[0], special.rel_entr(skewed[0], 1 / k).sum(), rtol=1e-5
    )


def test_usage_loss_averages_only_classes_that_are_present():
    usage = jnp.array([[1.0, 0.0], [0.5, 0.5]])
    assert float(losses.average_usage_loss(usage, jnp.array([False, True]))) == 0.0


def test_generative_loss_weights_its_terms():
    assert float(losses.generative_loss(1.0, 2.0, 3.0, 0.5, 0.1)) == pytest.approx(2.3)


def test_effective_components():
    np.testing.assert_allclose(losses.effective_components(jnp.array([[1 / 3] * 3, [1.0, 0, 0]])), [3.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_pixel_cross_entropy_divides_by_every_pixel_as_mmseg_unless_avg_non_ignore(avg_non_ignore):
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(2, 5, 6, 4)) * 3  # at the labels' size: no resize
    labels = rng.integers(0, 4, (2, 5, 6))
    labels[rng.random((2, 5, 6)) < 0.3] = 255  # void
    labelled = labels != 255
    per_pixel = -np.take_along_axis(special.log_softmax(scores, axis=-1), np.where(labelled, labels, 0)[..., None],
                                    axis=-1)[..., 0]
    # mmseg's CrossEntropyLoss: ignored pixels add 0 to the sum; the mean is over all B*H*W pixels
    # (avg_non_ignore=False, its default) or over the labelled ones (True).
    expected = per_pixel[labelled].sum() / (labelled.sum() if avg_non_ignore else labels.size)
    got = losses.pixel_cross_entropy(jnp.asarray(scores, jnp.float32), jnp.asarray(labels), 255, avg_non_ignore)
    np.testing.assert_allclose(got, expected, rtol=1e-5)

