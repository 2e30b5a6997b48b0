"""Open-set scores against plain numpy / scipy computations and analytic gradients."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats
from scipy.spatial import distance

from lgmm_jax.ood import scores


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------
# L-GMM scores.


def test_likelihood_and_marginal_match_numpy_scipy():
    class_log_likelihood = _rng().normal(-200.0, 30.0, size=(16, 10)).astype(np.float32)
    np.testing.assert_allclose(scores.likelihood(class_log_likelihood), class_log_likelihood.max(axis=1))
    expected = special.logsumexp(class_log_likelihood.astype(np.float64), axis=1) - np.log(10)
    np.testing.assert_allclose(scores.marginal(class_log_likelihood), expected, rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_posterior_is_the_largest_tempered_class_posterior_from_scipy(temperature):
    class_log_likelihood = _rng().normal(-200.0, 30.0, size=(16, 10)).astype(np.float32)
    probability = special.softmax(class_log_likelihood.astype(np.float64) / temperature, axis=1).max(axis=1)
    # Compare where float64 holds p apart from 1; the score is p's log-odds.
    expected = np.log(probability) - np.log1p(-probability)
    got = scores.posterior(class_log_likelihood, temperature)
    usable = probability < 1 - 1e-12
    assert usable.sum() >= 8
    np.testing.assert_allclose(got[usable], expected[usable], rtol=1e-5, atol=1e-4)
    # Where p rounds to 1.0 in float32 (the runner-up 30 and 40 nats behind) the log-odds still rank.
    confident = np.array([[0.0, -30.0, -60.0], [0.0, -40.0, -40.0]], np.float32) * temperature
    np.testing.assert_allclose(scores.posterior(confident, temperature), [30.0, 40.0 - np.log(2)], rtol=1e-5)
    # Ambiguity, not distance: moving every class's log-likelihood by the same amount leaves it unchanged.
    shifted = scores.posterior(class_log_likelihood - 500.0, temperature)
    np.testing.assert_allclose(shifted, got, rtol=1e-4, atol=1e-3)


def test_lgmm_scores_stay_finite_for_finite_input():
    extreme = np.array([[-3e38, -3e38, -3e38], [-1e30, 5.0, -1e30], [-3e38, 0.0, 3e38]], np.float32)
    assert np.all(np.isfinite(scores.likelihood(extreme)))
    assert np.all(np.isfinite(scores.marginal(extreme)))
    np.testing.assert_allclose(scores.marginal(extreme)[1], 5.0 - np.log(3), rtol=1e-6)


def test_lgmm_scores_with_minus_inf_classes():
    # A class at -inf (e.g. a zero mixture weight) is ignored; only an all -inf row gives -inf.
    rows = np.array([[-np.inf, -2.0, -3.0], [-np.inf, -np.inf, -np.inf]], np.float32)
    expected = special.logsumexp([-2.0, -3.0]) - np.log(3)
    np.testing.assert_allclose(scores.marginal(rows)[0], expected, rtol=1e-6)
    assert scores.likelihood(rows)[0] == -2.0
    assert scores.likelihood(rows)[1] == -np.inf and scores.marginal(rows)[1] == -np.inf


def test_scores_upcast_low_precision_inputs():
    logits = jnp.asarray(_rng().normal(size=(4, 5)), jnp.bfloat16)
    for function in (scores.likelihood, scores.marginal, scores.posterior, scores.msp, scores.maxlogit,
                     scores.energy):
        assert function(logits).dtype == jnp.float32


def test_scores_reject_wrong_rank():
    for function in (scores.likelihood, scores.marginal, scores.posterior, scores.msp, scores.maxlogit,
                     scores.energy):
        with pytest.raises(ValueError, match=r"\[B, C\]"):
            function(np.zeros(5, np.float32))


# ----------------------------------------------------------------------------------------------
# Softmax scores.


def test_msp_maxlogit_energy_match_scipy():
    logits = _rng(1).normal(0.0, 4.0, size=(32, 10)).astype(np.float32)
    as64 = logits.astype(np.float64)
    np.testing.assert_allclose(scores.msp(logits), special.softmax(as64, axis=1).max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(scores.maxlogit(logits), as64.max(axis=1))
    for temperature in (1.0, 2.5, 1000.0):
        expected = temperature * special.logsumexp(as64 / temperature, axis=1)
        np.testing.assert_allclose(scores.energy(logits, temperature), expected, rtol=1e-6)


def test_energy_and_msp_are_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [500.0, 500.0, 0.0]], np.float32)
    np.testing.assert_allclose(scores.energy(logits), [1000.0, 500.0 + np.log(2)], rtol=1e-6)
    np.testing.assert_allclose(scores.msp(logits), [1.0, 0.5], rtol=1e-6)


def _linear_logits_fn(weights, bias):
    """images [B, 4, 4, 2] -> logits [B, C], linear in the image."""
    return lambda images: images.reshape(images.shape[0], -1) @ weights + bias


def _linear_model(seed=2, num_classes=5):
    rng = _rng(seed)
    weights = rng.normal(size=(32, num_classes)).astype(np.float32)
    bias = rng.normal(size=num_classes).astype(np.float32)
    images = rng.normal(size=(6, 4, 4, 2)).astype(np.float32)
    return weights, bias, images


def _numpy_linear_odin(weights, bias, images, temperature, epsilon):
    """ODIN for logits = x W + b with the analytic input gradient, in float64 numpy."""
    x = images.reshape(images.shape[0], -1).astype(np.float64)
    w, b = weights.astype(np.float64), bias.astype(np.float64)
    probabilities = special.softmax((x @ w + b) / temperature, axis=1)
    predicted = probabilities.argmax(axis=1)
    # d/dx [l_yhat / T - logsumexp(l / T)] = (W[:, yhat] - W p) / T.
    gradient = (w[:, predicted].T - probabilities @ w.T) / temperature
    perturbed = x + epsilon * np.sign(gradient)
    return special.softmax((perturbed @ w + b) / temperature, axis=1).max(axis=1), gradient


def test_odin_with_zero_epsilon_is_msp_of_tempered_logits():
    rng = _rng(3)
    hidden = rng.normal(size=(8, 16)).astype(np.float32)
    output = rng.normal(size=(16, 4)).astype(np.float32)
    logits_fn = lambda x: jnp.tanh(x @ hidden) @ output  # noqa: E731 (a non-linear network)
    images = rng.normal(size=(10, 8)).astype(np.float32)
    logits = np.tanh(images.astype(np.float64) @ hidden) @ output
    for temperature in (1.0, 1000.0):
        expected = special.softmax(logits / temperature, axis=1).max(axis=1)
        np.testing.assert_allclose(scores.odin(logits_fn, images, temperature, 0.0), expected, rtol=1e-5)


def test_odin_perturbation_follows_the_analytic_gradient_of_a_linear_model():
    weights, bias, images = _linear_model()
    for temperature, epsilon in ((1.0, 0.01), (1000.0, 0.0014), (10.0, 0.2)):
        expected_scores, gradient = _numpy_linear_odin(weights, bias, images, temperature, epsilon)
        logits_fn = _linear_logits_fn(weights, bias)
        direction = np.asarray(scores.odin_perturbation(logits_fn, images, temperature))
        assert direction.shape == images.shape
        # Where the softmax saturates (p_max ~ 1 - 1e-8) the gradient is ~1e-8 and its float32 sign is
        # noise; compare the signs wherever the analytic gradient is clearly non-zero.
        clear = np.abs(gradient) > 1e-4 * np.abs(gradient).max()
        assert clear.mean() > 0.5  # 4 of the 6 examples are far from saturation at T = 1.
        np.testing.assert_array_equal(direction.reshape(len(images), -1)[clear], np.sign(gradient)[clear])
        got = scores.odin(_linear_logits_fn(weights, bias), images, temperature, epsilon)
        np.testing.assert_allclose(got, expected_scores, rtol=1e-5)


def test_odin_step_raises_the_score_and_is_per_example():
    weights, bias, images = _linear_model(seed=4)
    logits_fn = _linear_logits_fn(weights, bias)
    plain = scores.odin(logits_fn, images, 1.0, 0.0)
    stepped = scores.odin(logits_fn, images, 1.0, 0.01)
    assert np.all(np.asarray(stepped) > np.asarray(plain))  # a small step up the log-softmax max.
    one_by_one = [scores.odin(logits_fn, images[i:i + 1], 1.0, 0.01)[0] for i in range(len(images))]
    np.testing.assert_allclose(stepped, one_by_one, rtol=1e-6)


def test_odin_jits_with_parameters_as_arguments():
    weights, bias, images = _linear_model(seed=5)

    @jax.jit
    def jitted(weights, bias, images):
        return scores.odin(_linear_logits_fn(weights, bias), images, 10.0, 0.05)

    expected, _ = _numpy_linear_odin(weights, bias, images, 10.0, 0.05)
    unperturbed, _ = _numpy_linear_odin(weights, bias, images, 10.0, 0.0)
    assert np.abs(expected - unperturbed).min() > 1e-3  # the step is visible at this tolerance.
    np.testing.assert_allclose(jitted(weights, bias, images), expected, rtol=1e-5)


def test_select_odin_hyperparameters_maximises_mean_id_score():
    weights, bias, _ = _linear_model(seed=6)
    images = _rng(7).normal(size=(10, 4, 4, 2)).astype(np.float32)
    epsilons = (0.0, 0.01, 0.3, 3.0)
    chosen = scores.select_odin_hyperparameters(
        _linear_logits_fn(weights, bias), images, temperature=1.0, epsilons=epsilons, batch_size=4)
    expected_means = {e: _numpy_linear_odin(weights, bias, images, 1.0, e)[0].mean() for e in epsilons}
    assert chosen.temperature == 1.0
    assert set(chosen.mean_id_score_by_epsilon) == set(epsilons)
    for epsilon in epsilons:
        assert chosen.mean_id_score_by_epsilon[epsilon] == pytest.approx(expected_means[epsilon], rel=1e-5)
    assert chosen.epsilon == max(expected_means, key=expected_means.get)


def test_select_odin_hyperparameters_defaults_and_bad_input():
    weights, bias, images = _linear_model(seed=8)
    chosen = scores.select_odin_hyperparameters(_linear_logits_fn(weights, bias), images)
    assert chosen.temperature == scores.ODIN_TEMPERATURE
    assert chosen.epsilon in scores.ODIN_STAR_EPSILONS
    with pytest.raises(ValueError, match="id_val_images"):
        scores.select_odin_hyperparameters(_linear_logits_fn(weights, bias), np.zeros((0, 4, 4, 2)))
    with pytest.raises(ValueError, match="epsilon"):
        scores.select_odin_hyperparameters(_linear_logits_fn(weights, bias), images, epsilons=())


def test_kl_templates_match_numpy_means_per_predicted_class():
    rng = _rng(9)
    logits = rng.normal(0.0, 3.0, size=(200, 6)).astype(np.float32)
    probabilities = special.softmax(logits.astype(np.float64), axis=1)
    predicted = logits.argmax(axis=1)
    expected = np.stack([probabilities[predicted == k].mean(axis=0) for k in range(6)])
    np.testing.assert_allclose(scores.fit_kl_templates(logits, 6), expected, rtol=1e-5)


def test_kl_templates_skip_classes_never_predicted():
    logits = np.array([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0]], np.float32)
    templates = scores.fit_kl_templates(logits, 3)
    assert templates.shape == (2, 3)  # class 1 is never the argmax.
    expected = [special.softmax(logits[:2].astype(np.float64), axis=1).mean(axis=0),
                special.softmax(logits[2].astype(np.float64))]
    np.testing.assert_allclose(templates, expected, rtol=1e-5)


def test_kl_matching_matches_kl_by_hand_and_scipy():
    rng = _rng(10)
    templates = scores.fit_kl_templates(rng.normal(0.0, 3.0, size=(300, 5)).astype(np.float32), 5)
    logits = rng.normal(0.0, 3.0, size=(20, 5)).astype(np.float32)
    p = special.softmax(logits.astype(np.float64), axis=1)
    d = np.asarray(templates, np.float64)
    by_hand = np.array([[np.sum(p_i * (np.log(p_i) - np.log(d_k))) for d_k in d] for p_i in p])
    with_scipy = np.array([[stats.entropy(p_i, d_k) for d_k in d] for p_i in p])
    np.testing.assert_allclose(by_hand, with_scipy, rtol=1e-6)  # scipy renormalises the float32 templates.
    got = scores.kl_matching(logits, templates)
    np.testing.assert_allclose(got, -by_hand.min(axis=1), rtol=1e-4, atol=1e-6)


def test_kl_matching_stays_finite_for_saturated_softmax():
    logits = np.array([[200.0, 0.0, 0.0], [0.0, 200.0, 0.0], [0.0, 0.0, 200.0]], np.float32)
    templates = scores.fit_kl_templates(logits, 3)  # entries underflow to 0 and are clipped.
    assert np.all(np.asarray(templates) > 0)
    got = scores.kl_matching(np.vstack([logits, [[0.0, 0.0, 0.0]]]), templates)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[:3], 0.0, atol=1e-5)  # each row matches its own template.
    with pytest.raises(ValueError, match="classes"):
        scores.kl_matching(np.zeros((2, 4), np.float32), templates)


def _class_data(seed=11, num_classes=4, num_features=6, per_class=60, offset=5.0):
    rng = _rng(seed)
    centres = rng.normal(0.0, 3.0, size=(num_classes, num_features)) + offset
    mixing = rng.normal(size=(num_features, num_features))
    labels = np.repeat(np.arange(num_classes), per_class)
    features = centres[labels] + rng.normal(size=(labels.size, num_features)) @ mixing
    return features.astype(np.float32), labels


def test_fit_mahalanobis_matches_numpy_tied_covariance():
    features, labels = _class_data()
    class_means, precision = scores.fit_mahalanobis(features, labels, 4)
    x = features.astype(np.float64)
    expected_means = np.stack([x[labels == c].mean(axis=0) for c in range(4)])
    centred = x - expected_means[labels]
    expected_covariance = sum(np.outer(row, row) for row in centred) / len(x)
    np.testing.assert_allclose(class_means, expected_means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(precision, np.linalg.inv(expected_covariance), rtol=1e-4, atol=1e-6)


def test_mahalanobis_score_matches_scipy_distance():
    features, labels = _class_data(seed=12)
    class_means, precision = scores.fit_mahalanobis(features, labels, 4)
    queries = _class_data(seed=13)[0][::7] + np.float32(1.5)
    mu, inverse = np.asarray(class_means, np.float64), np.asarray(precision, np.float64)
    expected = -np.array([min(distance.mahalanobis(q, m, inverse) ** 2 for m in mu)
                          for q in queries.astype(np.float64)])
    got = scores.mahalanobis(queries, class_means, precision)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    at_means = scores.mahalanobis(class_means, class_means, precision)
    np.testing.assert_allclose(at_means, 0.0, atol=1e-3)


def test_mahalanobis_bad_input_raises():
    features, labels = _class_data(seed=14)
    with pytest.raises(ValueError, match=r"classes \[4\] have no example.*every known class"):
        scores.fit_mahalanobis(features, labels, 5)  # class 4 has no example.
    with pytest.raises(ValueError, match="integers"):
        scores.fit_mahalanobis(features, labels.astype(np.float32), 4)
    class_means, precision = scores.fit_mahalanobis(features, labels, 4)
    with pytest.raises(ValueError, match="feature sizes"):
        scores.mahalanobis(features[:, :5], class_means, precision)


def test_registry_names_every_score():
    assert set(scores.SCORE_FUNCTIONS) == set(scores.LGMM_SCORES) | set(scores.SOFTMAX_SCORES)
    assert not set(scores.LGMM_SCORES) & set(scores.SOFTMAX_SCORES)
    assert all(callable(function) for function in scores.SCORE_FUNCTIONS.values())
    logits = _rng(15).normal(size=(3, 4)).astype(np.float32)
    for name in ("likelihood", "marginal", "msp", "maxlogit", "energy"):
        assert scores.SCORE_FUNCTIONS[name](logits).shape == (3,)


def test_odin_accepts_a_partial_logits_fn():
    weights, bias, images = _linear_model(seed=16)
    logits_fn = functools.partial(lambda w, b, x: x.reshape(x.shape[0], -1) @ w + b, weights, bias)
    expected, _ = _numpy_linear_odin(weights, bias, images, 1000.0, 0.0014)
    np.testing.assert_allclose(scores.odin(logits_fn, images), expected, rtol=1e-5)


def test_mahalanobis_streamed_in_batches_equals_sklearn_on_all_features():
    """Issue 12: the fit keeps O(C*F + F^2) statistics, not the features. Batch by batch, with features far
    from the origin (cancellation), it must equal sklearn's EmpiricalCovariance on every feature at once
    (what the fit computed before)."""
    from sklearn.covariance import EmpiricalCovariance

    features, labels = _class_data(seed=17, num_classes=5, num_features=8, per_class=90, offset=300.0)
    order = _rng(18).permutation(len(labels))
    features, labels = features[order], labels[order]
    statistics = None
    for batch in np.array_split(np.arange(len(labels)), 7):
        statistics = scores.accumulate_mahalanobis(statistics, features[batch], labels[batch], 5)
    class_means, precision = scores.mahalanobis_from_statistics(statistics)
    x = features.astype(np.float64)
    expected_means = np.stack([x[labels == c].mean(axis=0) for c in range(5)])
    expected_precision = EmpiricalCovariance(assume_centered=True).fit(x - expected_means[labels]).precision_
    np.testing.assert_allclose(class_means, expected_means, rtol=1e-6)
    np.testing.assert_allclose(precision, expected_precision, rtol=1e-4, atol=1e-7)
    assert statistics.scatter.shape == (8, 8) and statistics.sums.shape == (5, 8)


def test_odin_steps_each_channel_by_epsilon_over_its_own_std():
    """ODIN's and OpenOOD's code divide the step by each channel's std, not by their mean."""
    std = (0.2, 0.3, 0.4)
    step = np.asarray(scores.odin_step(0.01, std))
    np.testing.assert_allclose(step, [0.05, 0.01 / 0.3, 0.025], rtol=1e-6)
    rng = _rng(19)
    weights = rng.normal(size=(2 * 2 * 3, 4)).astype(np.float32)
    images = rng.normal(size=(5, 2, 2, 3)).astype(np.float32)
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ weights  # noqa: E731
    direction = np.asarray(scores.odin_perturbation(logits_fn, images, 10.0))
    by_hand = scores.msp(logits_fn(images + step * direction) / 10.0)
    np.testing.assert_allclose(scores.odin(logits_fn, images, 10.0, step), by_hand, rtol=1e-6)
    chosen = scores.select_odin_hyperparameters(logits_fn, images, 10.0, (0.0, 0.01), input_std=std)
    expected = float(np.mean(by_hand))
    assert chosen.mean_id_score_by_epsilon[0.01] == pytest.approx(expected, rel=1e-5)
