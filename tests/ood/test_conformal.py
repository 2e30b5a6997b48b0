"""Split-conformal rejection against written-out computations, and its guarantee measured on digits."""
import math

import numpy as np
import pytest

from lgmm_jax.ood import conformal
from tests.shared_runs import tiny_default_run


def kth_smallest(scores, alpha):
    """The floor(alpha (n + 1))-th smallest score, written out (-inf when that rank is 0)."""
    k = math.floor(alpha * (len(scores) + 1))
    return sorted(scores)[k - 1] if k >= 1 else -math.inf


@pytest.mark.parametrize("n", [1, 18, 19, 20, 100, 999])
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.5])
def test_threshold_is_the_floor_alpha_n_plus_1_th_smallest_score(n, alpha):
    scores = np.random.default_rng(n).normal(size=n).round(1)  # rounded: ties
    assert conformal.threshold(scores, alpha) == kth_smallest(scores.tolist(), alpha)


def test_p_values_follow_the_formula_and_decide_as_the_threshold_at_every_alpha():
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=57).round(1)
    scores = np.r_[rng.normal(size=300).round(1), calibration[:5]]  # ties with calibration scores too
    expected = np.array([(1 + sum(c <= s for c in calibration)) / (len(calibration) + 1) for s in scores])
    p_values = conformal.p_values(np.sort(calibration), scores)
    np.testing.assert_allclose(p_values, expected, rtol=1e-15)
    for alpha in (0.01, 0.05, 0.1, 0.2, 0.5):
        np.testing.assert_array_equal(p_values > alpha, scores >= conformal.threshold(calibration, alpha))


def test_class_conditional_thresholds_are_each_classes_own_and_too_few_examples_are_refused():
    rng = np.random.default_rng(1)
    scores, classes = rng.normal(size=120), rng.integers(0, 3, size=120)
    thresholds = conformal.class_thresholds(scores, classes, 3, 0.1)
    for c in range(3):
        assert thresholds[c] == kth_smallest(scores[classes == c].tolist(), 0.1)
    p_values = conformal.class_p_values(scores, classes, scores[:10], classes[:10])
    for p, s, c in zip(p_values, scores[:10], classes[:10]):
        own = scores[classes == c]
        assert p == (1 + np.sum(own <= s)) / (len(own) + 1)
    assert conformal.minimum_calibration_size(0.05) == 19  # floor(0.05 * 20) = 1, floor(0.05 * 19) = 0
    with pytest.raises(ValueError, match=r"needs at least 19 .* classes \[2\] have \[18\]"):
        conformal.class_thresholds(np.zeros(57), np.repeat([0, 1, 2], [20, 19, 18]), 3, 0.05)
    with pytest.raises(ValueError, match="alpha=0 must lie strictly between 0 and 1"):
        conformal.threshold(scores, 0)


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_known_images_are_rejected_at_most_alpha_of_the_time_on_digits(tmp_path_factory, alpha):
    """The digits default's held-out known images (validation and test, likelihood scores): over 200 random
    halvings into calibration and test, the mean share of test images rejected is at most alpha + 0.01."""
    workdir = tiny_default_run(tmp_path_factory, "conformal")
    with np.load(workdir / "scores.npz") as stored:
        known = np.r_[stored["validation/likelihood"], stored["test/likelihood"]]
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(200):
        order = rng.permutation(len(known))
        calibration, test = known[order[: len(known) // 2]], known[order[len(known) // 2:]]
        rates.append(np.mean(test < conformal.threshold(calibration, alpha)))
    assert np.mean(rates) <= alpha + 0.01
    assert np.mean(rates) >= alpha - 0.03  # and it is not trivially conservative
