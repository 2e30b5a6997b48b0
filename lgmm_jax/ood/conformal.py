"""Split-conformal rejection: a threshold and p-values with a stated guarantee (Vovk et al., 2005; Angelopoulos
& Bates, "A Gentle Introduction to Conformal Prediction", 2021, Section 1 and Appendix D).

With n held-out known-class calibration scores s_1..s_n (higher = more like the known classes) and a new
known-class input whose score s is exchangeable with them, accepting when s >= the k-th smallest
calibration score, k = floor(alpha (n + 1)), rejects it with probability at most alpha. Its p-value
(1 + #{i: s_i <= s}) / (n + 1) is at most alpha exactly when s falls below that threshold, so
`known = p_value > alpha` decides at any alpha after the fact. Class-conditional calibration does the
same within each predicted class (the guarantee then holds per class) and needs at least
ceil(1 / alpha) - 1 calibration examples in every class. Nothing is promised for unknown inputs, nor
when the inputs are not exchangeable with the calibration data (another distribution of known images,
pixels of one image).
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_ALPHA = 0.05
CALIBRATIONS = ("marginal", "class_conditional")


def check_alpha(alpha: float) -> float:
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha={alpha} must lie strictly between 0 and 1, e.g. 0.05")
    return float(alpha)


def rank_of_threshold(num_scores: int, alpha: float) -> int:
    """k = floor(alpha (n + 1)): the threshold is the k-th smallest calibration score (0: accept all)."""
    return math.floor(check_alpha(alpha) * (num_scores + 1))


def minimum_calibration_size(alpha: float) -> int:
    """The fewest calibration scores for which an input can be rejected (k >= 1: n >= 1/alpha - 1)."""
    size = max(math.ceil(1.0 / check_alpha(alpha)) - 2, 0)
    while rank_of_threshold(size, alpha) < 1:
        size += 1
    return size


def threshold(calibration_scores, alpha: float) -> float:
    """The k-th smallest calibration score (`rank_of_threshold`); -inf when k = 0 (too few scores to
    reject anything at this alpha). Accept as known when score >= threshold."""
    scores = np.sort(np.asarray(calibration_scores, np.float64).ravel())
    k = rank_of_threshold(scores.size, alpha)
    return float(scores[k - 1]) if k >= 1 else -math.inf


def p_values(sorted_calibration_scores, scores) -> np.ndarray:
    """(1 + #{calibration scores <= score}) / (n + 1) for each score; the calibration scores sorted."""
    calibration = np.asarray(sorted_calibration_scores, np.float64)
    below = np.searchsorted(calibration, np.asarray(scores, np.float64), side="right")
    return (1.0 + below) / (calibration.size + 1.0)


def class_thresholds(calibration_scores, calibration_classes, num_classes: int, alpha: float) -> np.ndarray:
    """[C] thresholds, each from the calibration scores of inputs predicted as that class.

    Raises:
      ValueError: a class has fewer than `minimum_calibration_size(alpha)` calibration scores (the
        message says which classes and how many are needed).
    """
    scores = np.asarray(calibration_scores, np.float64)
    classes = np.asarray(calibration_classes, np.int64)
    counts = np.bincount(classes, minlength=num_classes)
    needed = minimum_calibration_size(alpha)
    short = [int(c) for c in np.flatnonzero(counts < needed)]
    if short:
        raise ValueError(
            f"class-conditional calibration at alpha={alpha} needs at least {needed} held-out examples "
            f"predicted as each class; classes {short} have {[int(counts[c]) for c in short]}: use "
            "calibration='marginal', a larger alpha or more held-out data")
    return np.array([threshold(scores[classes == c], alpha) for c in range(num_classes)])


def class_p_values(calibration_scores, calibration_classes, scores, classes) -> np.ndarray:
    """p-values of `scores` against the calibration scores of their own predicted `classes`."""
    calibration_scores = np.asarray(calibration_scores, np.float64)
    calibration_classes = np.asarray(calibration_classes, np.int64)
    scores, classes = np.asarray(scores, np.float64), np.asarray(classes, np.int64)
    values = np.empty(scores.shape, np.float64)
    for c in np.unique(classes):
        rows = classes == c
        values[rows] = p_values(np.sort(calibration_scores[calibration_classes == c]), scores[rows])
    return values
