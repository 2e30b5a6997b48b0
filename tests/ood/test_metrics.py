"""Open-set metrics and top-k accuracy against scikit-learn and independent brute-force numpy sweeps."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from lgmm_jax.ood import metrics

METRIC_NAMES = ("auroc", "fpr95", "fpr95_ood_positive", "aupr_in", "aupr_out", "detection_error")


# ----------------------------------------------------------------------------------------------
# Brute-force references: explicit sweeps over every distinct threshold, no scikit-learn.


def _sweep(positive_scores, negative_scores):
    """(TPR, FPR) when accepting `score >= t`, for t = +inf then every distinct score, descending."""
    positive_scores = np.asarray(positive_scores, np.float64)
    negative_scores = np.asarray(negative_scores, np.float64)
    all_scores = np.concatenate([positive_scores, negative_scores])
    thresholds = np.concatenate([[np.inf], np.unique(all_scores)[::-1]])
    tpr = np.array([np.count_nonzero(positive_scores >= t) / positive_scores.size for t in thresholds])
    fpr = np.array([np.count_nonzero(negative_scores >= t) / negative_scores.size for t in thresholds])
    return tpr, fpr


def brute_fpr_at_tpr(positive_scores, negative_scores, target=0.95):
    tpr, fpr = _sweep(positive_scores, negative_scores)
    for tpr_here, fpr_here in zip(tpr, fpr):
        if tpr_here >= target:
            return fpr_here
    raise AssertionError("the sweep always ends at TPR 1")


def brute_detection_error(id_scores, ood_scores):
    tpr, fpr = _sweep(id_scores, ood_scores)
    return min(0.5 * (1 - t) + 0.5 * f for t, f in zip(tpr, fpr))


def brute_auroc(positive_scores, negative_scores):
    """Probability that a positive outscores a negative, ties counting one half (Mann-Whitney)."""
    total = 0.0
    for p in positive_scores:
        total += np.count_nonzero(p > negative_scores) + 0.5 * np.count_nonzero(p == negative_scores)
    return total / (len(positive_scores) * len(negative_scores))


def brute_average_precision(positive_scores, negative_scores):
    """sum over distinct thresholds of (R_t - R_previous) * P_t, with ties sharing one threshold."""
    positive_scores = np.asarray(positive_scores, np.float64)
    negative_scores = np.asarray(negative_scores, np.float64)
    previous_recall, total = 0.0, 0.0
    for t in np.unique(np.concatenate([positive_scores, negative_scores]))[::-1]:
        true_positives = np.count_nonzero(positive_scores >= t)
        false_positives = np.count_nonzero(negative_scores >= t)
        recall = true_positives / positive_scores.size
        total += (recall - previous_recall) * true_positives / (true_positives + false_positives)
        previous_recall = recall
    return total


def brute_ood_metrics(id_scores, ood_scores):
    id_scores = np.asarray(id_scores, np.float64)
    ood_scores = np.asarray(ood_scores, np.float64)
    return {
        "auroc": brute_auroc(id_scores, ood_scores),
        "fpr95": brute_fpr_at_tpr(id_scores, ood_scores),
        # OOD positive with negated scores: OOD becomes the positive class.
        "fpr95_ood_positive": brute_fpr_at_tpr(-ood_scores, -id_scores),
        "aupr_in": brute_average_precision(id_scores, ood_scores),
        "aupr_out": brute_average_precision(-ood_scores, -id_scores),
        "detection_error": brute_detection_error(id_scores, ood_scores),
    }


def _cases():
    rng = np.random.default_rng(0)
    return {
        "ties_small_integers": (rng.integers(0, 6, 50) * 1.0, rng.integers(0, 5, 40) * 1.0),
        "continuous_overlap": (rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)),
        "imbalance_many_id": (rng.normal(1.0, 1.0, 3000), rng.normal(0.0, 1.0, 7)),
        "imbalance_many_ood": (rng.normal(1.0, 1.0, 7), rng.normal(0.0, 1.0, 3000)),
        "imbalance_with_ties": (rng.integers(0, 4, 1000) * 1.0, rng.integers(0, 3, 3) * 1.0),
        "one_each": (np.array([1.0]), np.array([0.0])),
        "one_each_tied": (np.array([0.3]), np.array([0.3])),
        "one_each_reversed": (np.array([0.0]), np.array([1.0])),
        "all_tied": (np.full(20, 0.5), np.full(30, 0.5)),
        "perfect_separation": (rng.uniform(2, 3, 40), rng.uniform(0, 1, 60)),
        "reversed_separation": (rng.uniform(0, 1, 40), rng.uniform(2, 3, 60)),
        "float32_log_likelihoods": (
            rng.normal(-50, 5, 500).astype(np.float32), rng.normal(-60, 8, 400).astype(np.float32)),
        "twenty_id_exact_95": (np.arange(20.0), np.array([0.5, 1.0, 1.5, 18.5])),
    }


CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_ood_metrics_match_brute_force(case):
    id_scores, ood_scores = CASES[case]
    got = metrics.ood_metrics(id_scores, ood_scores)
    expected = brute_ood_metrics(id_scores, ood_scores)
    assert set(got) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert isinstance(got[name], float)
        assert 0.0 <= got[name] <= 1.0
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ood_metrics_match_sklearn_directly(case):
    id_scores, ood_scores = CASES[case]
    got = metrics.ood_metrics(id_scores, ood_scores)
    is_id = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    scores = np.r_[id_scores, ood_scores].astype(np.float64)
    assert got["auroc"] == pytest.approx(sk_metrics.roc_auc_score(is_id, scores), abs=1e-12)
    assert got["aupr_in"] == pytest.approx(sk_metrics.average_precision_score(is_id, scores), abs=1e-12)
    aupr_out = sk_metrics.average_precision_score(1 - is_id, -scores)
    assert got["aupr_out"] == pytest.approx(aupr_out, abs=1e-12)


def test_hand_computed_case_where_aupr_in_and_out_differ():
    # ID 3, 2, 1 against OOD 2.5. Sorted: 3 (ID), 2.5 (OOD), 2 (ID), 1 (ID).
    got = metrics.ood_metrics([3.0, 2.0, 1.0], [2.5])
    assert got["auroc"] == pytest.approx(1 / 3)
    assert got["aupr_in"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)  # precision at each ID, x 1/3.
    assert got["aupr_out"] == pytest.approx(1 / 3)  # the OOD example ranks last of four.
    assert got["fpr95"] == 1.0  # keeping all 3 ID (tau = 1) accepts the OOD at 2.5.
    assert got["fpr95_ood_positive"] == pytest.approx(2 / 3)  # rejecting s <= 2.5 rejects ID 2 and 1.
    assert got["detection_error"] == pytest.approx(1 / 3)  # at tau = 3: TPR 1/3, FPR 0.


def test_aupr_in_and_out_are_not_swapped_under_imbalance():
    rng = np.random.default_rng(1)
    id_scores, ood_scores = rng.normal(0.5, 1.0, 900), rng.normal(0.0, 1.0, 100)
    got = metrics.ood_metrics(id_scores, ood_scores)
    assert got["aupr_in"] == pytest.approx(brute_average_precision(id_scores, ood_scores), abs=1e-12)
    assert got["aupr_out"] == pytest.approx(brute_average_precision(-ood_scores, -id_scores), abs=1e-12)
    assert got["aupr_in"] > 0.85 > 0.35 > got["aupr_out"]  # ID is 90% of the data, OOD 10%.


def test_perfect_and_reversed_separation_extremes():
    perfect = metrics.ood_metrics([2.0, 3.0], [0.0, 1.0])
    best = ("auroc", "aupr_in", "aupr_out")
    assert perfect == {name: (1.0 if name in best else 0.0) for name in METRIC_NAMES}
    reversed_ = metrics.ood_metrics([0.0, 1.0], [2.0, 3.0])
    assert reversed_["auroc"] == 0.0
    assert reversed_["fpr95"] == 1.0
    assert reversed_["fpr95_ood_positive"] == 1.0
    assert reversed_["detection_error"] == 0.5  # accept-all or accept-none is the best one can do.
    assert reversed_["aupr_in"] == pytest.approx(0.5 * (1 / 3) + 0.5 * (2 / 4))
    assert reversed_["aupr_out"] == pytest.approx(0.5 * (1 / 3) + 0.5 * (2 / 4))


def test_fpr95_uses_first_point_at_or_above_95_percent_without_interpolation():
    # 20 ID scores 0..19: TPR reaches exactly 0.95 at tau = 1 (19 of 20 kept). OOD is accepted when
    # >= 1: 1.0, 1.5 and 18.5 are, 0.5 is not -> 3 of 4.
    assert metrics.ood_metrics(np.arange(20.0), [0.5, 1.0, 1.5, 18.5])["fpr95"] == 0.75
    assert metrics.threshold_at_tpr(np.arange(20.0)) == 1.0
    # 21 ID: 0.95 * 21 = 19.95 -> 20 must be kept -> tau = 1 (no interpolation between points).
    assert metrics.threshold_at_tpr(np.arange(21.0)) == 1.0
    assert metrics.fpr_at_tpr(np.arange(21.0), [0.99, 1.0], tpr=0.95) == 0.5


@pytest.mark.parametrize("case", sorted(CASES))
def test_threshold_at_tpr_is_consistent_with_fpr95_and_roc_curve(case):
    id_scores, ood_scores = CASES[case]
    tau = metrics.threshold_at_tpr(id_scores)
    assert np.mean(np.asarray(id_scores) >= tau) >= 0.95
    assert np.mean(np.asarray(id_scores) > tau) < 0.95  # the largest such threshold.
    assert metrics.ood_metrics(id_scores, ood_scores)["fpr95"] == np.mean(np.asarray(ood_scores) >= tau)
    is_id = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    _, tpr, thresholds = sk_metrics.roc_curve(is_id, np.r_[id_scores, ood_scores], drop_intermediate=False)
    assert tau == thresholds[np.argmax(tpr >= 0.95)]


def test_threshold_at_tpr_with_ties_and_other_rates():
    assert metrics.threshold_at_tpr([5.0, 5.0, 5.0, 1.0]) == 1.0
    assert metrics.threshold_at_tpr([5.0, 5.0, 5.0, 1.0], tpr=0.5) == 5.0
    assert metrics.threshold_at_tpr([5.0, 5.0, 5.0, 1.0], tpr=0.75) == 5.0
    assert metrics.threshold_at_tpr([3.0, 1.0, 2.0], tpr=1.0) == 1.0
    for bad_tpr in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="tpr"):
            metrics.threshold_at_tpr([1.0, 2.0], tpr=bad_tpr)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.99])
def test_fpr_at_other_tpr_matches_brute_force(target):
    id_scores, ood_scores = CASES["ties_small_integers"]
    expected = brute_fpr_at_tpr(id_scores, ood_scores, target)
    assert metrics.fpr_at_tpr(id_scores, ood_scores, target) == expected


def test_metrics_do_not_depend_on_input_order():
    id_scores, ood_scores = CASES["ties_small_integers"]
    rng = np.random.default_rng(2)
    shuffled = metrics.ood_metrics(rng.permutation(id_scores), rng.permutation(ood_scores))
    assert shuffled == metrics.ood_metrics(id_scores, ood_scores)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["id", "ood"])
def test_non_finite_scores_raise(bad, which):
    good = np.array([0.1, 0.2, 0.3])
    broken = np.array([0.1, bad, 0.3])
    arguments = (broken, good) if which == "id" else (good, broken)
    with pytest.raises(ValueError, match="non-finite"):
        metrics.ood_metrics(*arguments)
    with pytest.raises(ValueError, match="non-finite"):
        metrics.fpr_at_tpr(*arguments)
    if which == "id":
        with pytest.raises(ValueError, match="non-finite"):
            metrics.threshold_at_tpr(broken)


def test_empty_and_misshapen_inputs_raise():
    with pytest.raises(ValueError, match="id_scores is empty"):
        metrics.ood_metrics([], [1.0])
    with pytest.raises(ValueError, match="ood_scores is empty"):
        metrics.ood_metrics([1.0], np.zeros(0))
    with pytest.raises(ValueError, match="1-D"):
        metrics.ood_metrics(np.zeros((3, 1)), [1.0])
    with pytest.raises(ValueError, match="empty"):
        metrics.threshold_at_tpr([])


# ----------------------------------------------------------------------------------------------
# Top-k accuracy.


def brute_topk_hits(scores, labels, k):
    """Label within the first k of a stable descending sort (ties go to the lower class index)."""
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")
    return np.array([label in row[:k] for row, label in zip(order, labels)])


@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_matches_sklearn_without_ties(k):
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(200, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 200)
    expected = sk_metrics.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(7))
    assert metrics.topk_accuracy(scores, labels, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_topk_with_ties_matches_stable_sort(k):
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 3, size=(300, 6)).astype(np.float32)
    labels = rng.integers(0, 6, 300)
    expected = np.mean(brute_topk_hits(scores, labels, k))
    assert metrics.topk_accuracy(scores, labels, k) == pytest.approx(expected)
    if k == 1:
        assert expected == pytest.approx(np.mean(scores.argmax(1) == labels))


def test_constant_scores_are_not_all_correct():
    labels = np.array([0, 1, 2, 3, 0, 0])
    assert metrics.topk_accuracy(np.zeros((6, 4)), labels, 1) == pytest.approx(3 / 6)
    assert metrics.topk_accuracy(np.zeros((6, 4)), labels, 2) == pytest.approx(4 / 6)


def test_topk_is_one_when_fewer_classes_than_k():
    rng = np.random.default_rng(5)
    scores, labels = rng.normal(size=(10, 3)), rng.integers(0, 3, 10)
    assert metrics.topk_accuracies(scores, labels)["top5"] == 1.0
    assert metrics.topk_accuracy(scores, labels, 3) == 1.0


def test_topk_mask_excludes_padded_examples():
    rng = np.random.default_rng(6)
    scores = rng.normal(size=(50, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    mask = np.arange(50) < 37
    padded_scores = scores.copy()
    padded_scores[~mask] = np.nan  # whatever padding holds must not matter.
    padded_labels = np.where(mask, labels, -1)
    got = metrics.topk_accuracies(padded_scores, padded_labels, (1, 5), mask=mask)
    assert got == {
        "top1": pytest.approx(np.mean(brute_topk_hits(scores[:37], labels[:37], 1))),
        "top5": pytest.approx(np.mean(brute_topk_hits(scores[:37], labels[:37], 5))),
    }


def test_topk_correct_is_jittable_per_batch():
    scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]], np.float32)
    np.testing.assert_array_equal(metrics.topk_correct(scores, np.array([1, 2]), 1), [True, False])
    np.testing.assert_array_equal(metrics.topk_correct(scores, np.array([1, 2]), 2), [True, True])


def test_topk_bad_inputs_raise():
    scores, labels = np.zeros((4, 3)), np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match="shape"):
        metrics.topk_accuracy(np.zeros(4), labels, 1)
    with pytest.raises(ValueError, match="labels"):
        metrics.topk_accuracy(scores, np.array([0, 1, 3, 0]), 1)
    with pytest.raises(ValueError, match="labels"):
        metrics.topk_accuracy(scores, labels[:3], 1)
    with pytest.raises(ValueError, match="masking"):
        metrics.topk_accuracy(scores, labels, 1, mask=np.zeros(4, bool))
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.topk_accuracy(np.full((4, 3), np.nan), labels, 1)
    with pytest.raises(ValueError, match="ks"):
        metrics.topk_accuracies(scores, labels, ks=(0,))
