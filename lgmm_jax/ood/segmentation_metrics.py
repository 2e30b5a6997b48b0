"""Segmentation metrics, accumulated image by image: mIoU / aAcc as mmseg, pixel-level open-set metrics as
the Fishyscapes benchmark.

Closed set (`ConfusionAccumulator`): per-class intersection and union summed over the whole set, void
pixels (``ignore_index``, 255) excluded; IoU = intersection / union; mIoU = mean IoU over the classes whose
union is not empty; aAcc = correctly labelled pixels / labelled pixels; Acc (per class) = intersection /
the class's labelled pixels. This is mmseg's ``intersect_and_union`` + ``total_area_to_metrics``, kept as
a ``C x C`` confusion matrix of int64 counts (exact at any size).

Open set (`AnomalyAccumulator`): all non-void pixels of all images pooled, the anomaly (label 1) is the
positive class, and a pixel is flagged as an anomaly when its score is LOW (scores follow this library's
convention: higher = more known):

- ``auroc``: ``roc_auc_score(is_anomaly, -score)``, ties counting one half;
- ``ap``: ``average_precision_score(is_anomaly, -score)`` (sklearn's step-wise sum, no interpolation);
- ``fpr95``: the share of known pixels flagged at the first threshold (flag ``score <= t``, ``t`` rising)
  that catches at least 95% of the anomaly pixels: ``roc_curve(is_anomaly, -score)``'s FPR at its first
  point with TPR >= 0.95 (bdl-benchmark's FPR@95%TPR; `metrics.ood_metrics`'s ``fpr95_ood_positive``).

These are exact, not binned: the scores of known and anomaly pixels are kept as two growing float32
vectors (4 bytes per non-void pixel, never copied, no float64 copy), each sorted in place once, and the metrics are counts
taken with ``np.searchsorted`` on the sorted vectors, summed in int64. Fishyscapes Lost & Found's
validation set (100 images of 1024 x 2048 = 210M pixels) thus needs about 0.85 GB per score; see
``bench/segmentation_metrics.py`` for the measured peak and time. Scores are compared in float32: pass
float32 scores to reproduce them with scikit-learn exactly.
"""

from __future__ import annotations

import math

import numpy as np

IGNORE_INDEX = 255
KNOWN = 0
ANOMALY = 1
DEFAULT_TPR = 0.95
_QUERY_CHUNK = 1 << 22  # anomaly scores searched at a time: bounds the int64 temporaries to 32 MB each


# ----------------------------------------------------------------------------------------------------------
# Closed set: mIoU, aAcc, per-class IoU
# ----------------------------------------------------------------------------------------------------------


def confusion_matrix(prediction, label, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """int64 ``[C, C]`` counts of (label row, predicted column) over the pixels whose label is not void.

    Args:
      prediction: integer class map of any shape (e.g. [H, W] or [N, H, W]), values in ``[0, C)``.
      label: integer class map of the same shape, values in ``[0, C)`` or ``ignore_index``.
    Raises:
      ValueError: shapes differ, or a non-void label or a prediction lies outside ``[0, C)``.
    """
    prediction, label = np.asarray(prediction), np.asarray(label)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {prediction.shape} and label {label.shape} must have the same shape")
    labelled = label != ignore_index
    label, prediction = label[labelled].astype(np.int64), prediction[labelled].astype(np.int64)
    for name, values in (("label", label), ("prediction", prediction)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} values must lie in [0, {num_classes}) (void = {ignore_index}), "
                f"got {values.min()}..{values.max()}")
    counts = np.bincount(label * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_metrics(confusion: np.ndarray) -> dict:
    """mmseg's metrics from a confusion matrix (rows = labels, columns = predictions).

    Returns:
      ``miou`` (mean IoU over classes with a non-empty union), ``aacc``, ``iou`` and ``acc`` (per-class
      lists, ``None`` where undefined: an empty union, resp. no labelled pixel) and ``num_pixels``.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    intersection = np.diag(confusion)
    area_label = confusion.sum(axis=1)
    union = area_label + confusion.sum(axis=0) - intersection
    labelled = int(area_label.sum())
    if labelled == 0:
        raise ValueError("no labelled pixel: every label is void")
    iou = [float(i / u) if u else None for i, u in zip(intersection, union)]
    acc = [float(i / a) if a else None for i, a in zip(intersection, area_label)]
    defined = [value for value in iou if value is not None]
    return {
        "miou": float(np.mean(defined)),
        "aacc": float(intersection.sum() / labelled),
        "iou": iou,
        "acc": acc,
        "num_pixels": labelled,
    }


class ConfusionAccumulator:
    """Sums the confusion matrix of batch after batch; `result` gives mmseg's mIoU, aAcc and per-class IoU."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, prediction, label) -> None:
        """Adds a batch of predicted and true class maps (same shape; void labels are skipped)."""
        self.confusion += confusion_matrix(prediction, label, self.num_classes, self.ignore_index)

    def result(self) -> dict:
        """See `iou_metrics`."""
        return iou_metrics(self.confusion)


# ----------------------------------------------------------------------------------------------------------
# Open set: pixel AUROC, AP and FPR95, anomaly positive
# ----------------------------------------------------------------------------------------------------------


class Float32Buffer:
    """A float32 vector that grows by appending, without a second copy of its values at any time.

    It grows in place with ``ndarray.resize`` (``realloc``: large blocks are remapped, not copied), by at
    least half its capacity each time, and `trimmed` gives the values back in that same block. Pooling
    chunks with ``np.concatenate`` instead would hold every value twice for a moment, and glibc keeps
    freed per-image chunks resident: 1.63 GiB instead of 0.91 GiB at 210M pixels (bench/README.md).
    """

    def __init__(self):
        self._data = np.empty(0, dtype=np.float32)
        self.size = 0
        self._handed_out = False

    def append(self, values: np.ndarray) -> None:
        if self._handed_out:  # resizing an array someone else holds would leave them a dangling pointer
            raise ValueError("trimmed() was already called: a Float32Buffer takes no values after that")
        end = self.size + values.size
        if end > self._data.size:
            self._data.resize(max(end, self._data.size * 3 // 2), refcheck=False)
        self._data[self.size:end] = values
        self.size = end

    def trimmed(self) -> np.ndarray:
        """The values appended so far, as the buffer's own (shrunk) array; no `append` after this."""
        if not self._handed_out:
            self._data.resize(self.size, refcheck=False)
            self._handed_out = True
        return self._data


def _first_index_reaching(count: int, fraction: float) -> int:
    """Smallest k >= 1 with ``k / count >= fraction`` in float64, as ``roc_curve``'s TPR is compared."""
    k = max(1, math.ceil(fraction * count))
    while k > 1 and (k - 1) / count >= fraction:
        k -= 1
    while k / count < fraction:
        k += 1
    return k


def _chunks(length: int):
    """Slices of at most ``_QUERY_CHUNK`` consecutive positions covering ``range(length)``."""
    for start in range(0, length, _QUERY_CHUNK):
        yield slice(start, min(start + _QUERY_CHUNK, length))


def sorted_scores_auroc(known: np.ndarray, anomaly: np.ndarray) -> float:
    """P(known score > anomaly score) + P(equal) / 2, from two ascending-sorted vectors (exact in int64)."""
    twice_wins = 0
    for part in _chunks(anomaly.size):
        queries = anomaly[part]
        at_most = np.searchsorted(known, queries, side="right")
        below = np.searchsorted(known, queries, side="left")
        # Known pixels above the anomaly score count 2 (a win), tied ones 1 (half a win).
        twice_wins += int(np.sum(2 * (known.size - at_most) + (at_most - below), dtype=np.int64))
    return twice_wins / (2 * known.size * anomaly.size)


def sorted_scores_average_precision(known: np.ndarray, anomaly: np.ndarray) -> float:
    """sklearn's AP with the anomaly positive and the known-score threshold rising, from sorted vectors.

    Recall changes only at the distinct anomaly scores v (flag ``score <= v``): AP = sum over them of
    (TP_v - TP_previous) / P * TP_v / (TP_v + FP_v).
    """
    total, previous_true = 0.0, 0
    for part in _chunks(anomaly.size):
        values = anomaly[part]
        last_of_run = np.empty(values.size, dtype=bool)
        last_of_run[:-1] = values[1:] != values[:-1]
        last_of_run[-1] = part.stop == anomaly.size or anomaly[part.stop] != values[-1]
        distinct = values[last_of_run]
        true_positives = np.flatnonzero(last_of_run) + (part.start + 1)  # anomaly scores <= v
        false_positives = np.searchsorted(known, distinct, side="right")  # known scores <= v
        newly_caught = np.diff(true_positives, prepend=previous_true)
        total += float(np.sum(newly_caught * (true_positives / (true_positives + false_positives))))
        if true_positives.size:
            previous_true = int(true_positives[-1])
    return total / anomaly.size


def sorted_scores_fpr_at_tpr(known: np.ndarray, anomaly: np.ndarray, tpr: float = DEFAULT_TPR) -> float:
    """Share of known scores <= the lowest threshold that flags at least ``tpr`` of the anomaly scores."""
    threshold = anomaly[_first_index_reaching(anomaly.size, tpr) - 1]
    return int(np.searchsorted(known, threshold, side="right")) / known.size


def sorted_scores_roc_points(known: np.ndarray, anomaly: np.ndarray, num_points: int = 201):
    """``(fpr, tpr)`` at up to ``num_points`` thresholds spread over the anomaly scores' quantiles.

    Every point (besides the added (0, 0) and (1, 1)) is an exact point of ``roc_curve(is_anomaly,
    -score)``; enough to draw the curve, small enough to store in a report.
    """
    positions = np.unique(np.linspace(0, anomaly.size - 1, num_points).round().astype(np.int64))
    thresholds = anomaly[positions]
    tpr = np.searchsorted(anomaly, thresholds, side="right") / anomaly.size
    fpr = np.searchsorted(known, thresholds, side="right") / known.size
    return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], tpr, [1.0]])


class AnomalyAccumulator:
    """Pools the scores of known and anomaly pixels, image after image; `result` gives AUROC, AP, FPR95.

    Memory: 4 bytes per non-void pixel (float32, in two `Float32Buffer`), sorted in place by `result`.
    """

    def __init__(self):
        self._known = Float32Buffer()
        self._anomaly = Float32Buffer()
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def num_known(self) -> int:
        return self._known.size

    @property
    def num_anomaly(self) -> int:
        return self._anomaly.size

    def update(self, scores, anomaly) -> None:
        """Adds the per-pixel scores (higher = more known) and anomaly map (0 known, 1 anomaly, 255 void)."""
        scores, anomaly = np.asarray(scores), np.asarray(anomaly)
        if scores.shape != anomaly.shape:
            raise ValueError(f"scores {scores.shape} and anomaly map {anomaly.shape} must have the same shape")
        if self._sorted is not None:
            raise ValueError("result() was already taken: start a new AnomalyAccumulator for more pixels")
        is_known, is_anomaly = anomaly == KNOWN, anomaly == ANOMALY
        if not (is_known | is_anomaly | (anomaly == IGNORE_INDEX)).all():
            raise ValueError(f"anomaly map values must be {KNOWN} (known), {ANOMALY} (anomaly) or "
                             f"{IGNORE_INDEX} (void), got {np.unique(anomaly).tolist()}")
        known_scores = scores[is_known].astype(np.float32, copy=False)
        anomaly_scores = scores[is_anomaly].astype(np.float32, copy=False)
        if not (np.isfinite(known_scores).all() and np.isfinite(anomaly_scores).all()):
            raise ValueError("scores of non-void pixels contain NaN or inf: fix the score upstream")
        self._known.append(known_scores)
        self._anomaly.append(anomaly_scores)

    def sorted_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """The pooled known and anomaly scores, each sorted ascending in place (once, then kept)."""
        if self._sorted is None:
            if self.num_known == 0 or self.num_anomaly == 0:
                raise ValueError(f"need known and anomaly pixels, got {self.num_known} known and "
                                 f"{self.num_anomaly} anomaly: evaluate on a set with both")
            known, anomaly = self._known.trimmed(), self._anomaly.trimmed()
            known.sort()
            anomaly.sort()
            self._sorted = (known, anomaly)
        return self._sorted

    def result(self) -> dict:
        """``auroc``, ``ap``, ``fpr95`` (fractions, anomaly positive) and the pixel counts."""
        known, anomaly = self.sorted_scores()
        return {
            "auroc": sorted_scores_auroc(known, anomaly),
            "ap": sorted_scores_average_precision(known, anomaly),
            "fpr95": sorted_scores_fpr_at_tpr(known, anomaly),
            "num_known": int(known.size),
            "num_anomaly": int(anomaly.size),
        }

    def roc_points(self, num_points: int = 201) -> tuple[np.ndarray, np.ndarray]:
        """``(fpr, tpr)`` of the pixel-level ROC curve; see `sorted_scores_roc_points`."""
        return sorted_scores_roc_points(*self.sorted_scores(), num_points)


def pixel_anomaly_metrics(scores, anomaly) -> dict:
    """`AnomalyAccumulator`'s result for one array of scores and its anomaly map (any same shape)."""
    accumulator = AnomalyAccumulator()
    accumulator.update(scores, anomaly)
    return accumulator.result()
