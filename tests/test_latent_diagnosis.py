"""bench/latent_diagnosis.py's fitted read-outs against scipy and a second computation."""
import numpy as np
import pytest
from scipy import stats

from tests import bench_scripts


@pytest.fixture(scope="module")
def diagnosis():
    return bench_scripts.load("latent_diagnosis")


@pytest.fixture(scope="module")
def two_classes():
    rng = np.random.default_rng(0)
    scales = np.array([[0.5, 1.0, 2.0], [1.5, 0.3, 0.7]])
    means = np.array([[0.0, 1.0, -1.0], [3.0, -2.0, 0.5]])
    labels = np.repeat([0, 1], 400)
    x = means[labels] + scales[labels] * rng.standard_normal((800, 3))
    return x, labels, rng.standard_normal((5, 3))


@pytest.mark.parametrize("isotropic", [False, True])
def test_gaussian_log_likelihoods_are_scipy_densities_of_the_ml_fit(diagnosis, two_classes, isotropic):
    x, labels, z = two_classes
    log_likelihoods = diagnosis.gaussian_log_likelihoods(x, labels, 2, isotropic)(z)
    for c in range(2):
        members = x[labels == c]
        variance = members.var(0)
        if isotropic:
            variance = np.full(3, ((members - members.mean(0)) ** 2).mean())
        reference = stats.multivariate_normal(members.mean(0), np.diag(variance)).logpdf(z)
        # the helper drops the constant -D/2 log(2 pi), which no AUROC or argmax sees
        np.testing.assert_allclose(log_likelihoods[:, c] - 1.5 * np.log(2 * np.pi), reference, rtol=1e-6)


def test_em_mixtures_of_one_component_are_the_diagonal_ml_fit(diagnosis, two_classes):
    x, labels, z = two_classes
    em = diagnosis.em_mixture_log_likelihoods(x, labels, 2, 1)(z)
    closed_form = diagnosis.gaussian_log_likelihoods(x, labels, 2, False)(z) - 1.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(em, closed_form, rtol=1e-5)


def test_the_probe_and_top1_read_separable_classes(diagnosis, two_classes):
    x, labels, _ = two_classes
    assert diagnosis.linear_probe_top1(x[::2], labels[::2], x[1::2], labels[1::2]) > 0.97
    assert diagnosis.top1(np.eye(2)[labels], labels) == 1.0
    assert diagnosis.known_positive_auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
