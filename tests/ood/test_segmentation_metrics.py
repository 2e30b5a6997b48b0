"""Segmentation metrics against scikit-learn and a plain numpy recomputation of mmseg's formulas."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from lgmm_jax.ood import metrics, segmentation_metrics as seg

VOID = 255


# ------------------------------------------------------------------------------------------ closed set


def _random_maps(rng, shape, num_classes, void_share=0.2):
    label = rng.integers(0, num_classes, shape).astype(np.uint8)
    label[rng.random(shape) < void_share] = VOID
    # A prediction right about 60% of the time, so IoUs are neither 0 nor 1.
    prediction = np.where(rng.random(shape) < 0.6, label, rng.integers(0, num_classes, shape)).astype(np.int32)
    prediction[label == VOID] = rng.integers(0, num_classes, int(np.sum(label == VOID)))
    return prediction, label


def mmseg_reference(predictions, labels, num_classes):
    """mmseg's intersect_and_union + total_area_to_metrics, written out with per-class boolean masks."""
    intersection, union, area_label = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for prediction, label in zip(predictions, labels):
        keep = label != VOID
        prediction, label = prediction[keep], label[keep]
        for c in range(num_classes):
            intersection[c] += np.sum((prediction == c) & (label == c))
            union[c] += np.sum((prediction == c) | (label == c))
            area_label[c] += np.sum(label == c)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersection / union
    return {"miou": np.nanmean(iou), "aacc": intersection.sum() / area_label.sum(), "iou": iou}


def test_confusion_matrix_matches_sklearn_without_void_pixels():
    prediction, label = _random_maps(np.random.default_rng(0), (3, 17, 23), 5)
    keep = label != VOID
    expected = sk_metrics.confusion_matrix(label[keep], prediction[keep], labels=range(5))
    np.testing.assert_array_equal(seg.confusion_matrix(prediction, label, 5), expected)


def test_batch_by_batch_miou_matches_mmseg_formulas_and_sklearn_jaccard():
    rng = np.random.default_rng(1)
    num_classes = 7
    batches = [_random_maps(rng, (2, 16, 20), num_classes) for _ in range(4)]
    # Class 6 never appears: its union is empty and it must not count in the mean.
    batches = [(np.where(p == 6, 5, p), np.where(l == 6, 5, l)) for p, l in batches]
    accumulator = seg.ConfusionAccumulator(num_classes)
    for prediction, label in batches:
        accumulator.update(prediction, label)
    result = accumulator.result()

    predictions = np.concatenate([p for p, _ in batches])
    labels = np.concatenate([l for _, l in batches])
    reference = mmseg_reference(predictions, labels, num_classes)
    assert result["miou"] == pytest.approx(reference["miou"], abs=1e-12)
    assert result["aacc"] == pytest.approx(reference["aacc"], abs=1e-12)
    assert result["iou"][6] is None and result["acc"][6] is None
    np.testing.assert_allclose(result["iou"][:6], reference["iou"][:6], atol=1e-12)

    keep = labels != VOID
    jaccard = sk_metrics.jaccard_score(labels[keep], predictions[keep], labels=range(6), average=None)
    np.testing.assert_allclose(result["iou"][:6], jaccard, atol=1e-12)
    assert result["aacc"] == pytest.approx(sk_metrics.accuracy_score(labels[keep], predictions[keep]), abs=1e-12)
    recall = sk_metrics.recall_score(labels[keep], predictions[keep], labels=range(6), average=None)
    np.testing.assert_allclose(result["acc"][:6], recall, atol=1e-12)
    assert result["num_pixels"] == int(keep.sum())


def test_a_perfect_prediction_scores_one_and_void_pixels_never_count():
    label = np.array([[0, 1, VOID], [2, 2, VOID]], np.uint8)
    prediction = np.array([[0, 1, 7], [2, 2, 9]])  # wrong (even out of range) only under the void pixels
    result = seg.iou_metrics(seg.confusion_matrix(prediction, label, 3))
    assert result["miou"] == 1.0 and result["aacc"] == 1.0 and result["iou"] == [1.0, 1.0, 1.0]


def test_out_of_range_labels_or_predictions_are_one_line_errors():
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 3\)") as info:
        seg.confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 3), 3)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="prediction values"):
        seg.confusion_matrix(np.full((2, 2), -1), np.zeros((2, 2), int), 3)
    with pytest.raises(ValueError, match="same shape"):
        seg.confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
    with pytest.raises(ValueError, match="every label is void"):
        seg.iou_metrics(seg.confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), VOID), 3))


# --------------------------------------------------------------------------------------------- open set


def sklearn_reference(scores, anomaly):
    """The Fishyscapes definitions through scikit-learn: void dropped, anomaly positive, score negated."""
    keep = anomaly != VOID
    is_anomaly, flagging_score = (anomaly[keep] == 1).astype(int), -scores[keep].astype(np.float64)
    fpr, tpr, _ = sk_metrics.roc_curve(is_anomaly, flagging_score, drop_intermediate=False)
    return {
        "auroc": sk_metrics.roc_auc_score(is_anomaly, flagging_score),
        "ap": sk_metrics.average_precision_score(is_anomaly, flagging_score),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
    }


def _scene_scores(rng, num_images=5, shape=(24, 32), decimals=None):
    """Per-image float32 scores (anomalies lower on average), anomaly maps with void, optional ties."""
    anomaly = np.zeros((num_images, *shape), np.uint8)
    anomaly[rng.random(anomaly.shape) < 0.1] = 1
    anomaly[rng.random(anomaly.shape) < 0.15] = VOID
    scores = rng.normal(size=anomaly.shape) + 1.5 * (anomaly == 0)
    scores[anomaly == VOID] = 1e6  # void scores must not matter, however extreme
    if decimals is not None:
        scores = np.round(scores, decimals)  # many ties, within and across the two classes
    return scores.astype(np.float32), anomaly


@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("chunk", [7, 1 << 22])
def test_pooled_pixel_metrics_match_sklearn(monkeypatch, decimals, chunk):
    monkeypatch.setattr(seg, "_QUERY_CHUNK", chunk)  # small chunks: runs of ties straddle chunk edges
    scores, anomaly = _scene_scores(np.random.default_rng(2), decimals=decimals)
    accumulator = seg.AnomalyAccumulator()
    for image_scores, image_anomaly in zip(scores, anomaly):
        accumulator.update(image_scores, image_anomaly)
    result = accumulator.result()
    reference = sklearn_reference(scores, anomaly)
    for name in ("auroc", "ap", "fpr95"):
        assert result[name] == pytest.approx(reference[name], abs=1e-12), name
    assert result["num_known"] == np.sum(anomaly == 0) and result["num_anomaly"] == np.sum(anomaly == 1)


def test_pixel_metrics_agree_with_the_classification_metrics_names():
    scores, anomaly = _scene_scores(np.random.default_rng(3), decimals=1)
    result = seg.pixel_anomaly_metrics(scores, anomaly)
    classification = metrics.ood_metrics(scores[anomaly == 0], scores[anomaly == 1])
    assert result["auroc"] == pytest.approx(classification["auroc"], abs=1e-12)
    assert result["ap"] == pytest.approx(classification["aupr_out"], abs=1e-12)
    assert result["fpr95"] == pytest.approx(classification["fpr95_ood_positive"], abs=1e-12)


def test_fpr95_threshold_edge_of_exactly_twenty_anomalies():
    # 20 anomaly pixels: 19 / 20 = 0.95 exactly, so the 19th lowest anomaly score is the threshold.
    anomaly_scores = np.arange(20, dtype=np.float32)
    known_scores = np.array([17.5, 18.5, 30.0, 40.0], np.float32)
    scores = np.concatenate([anomaly_scores, known_scores])
    anomaly = np.concatenate([np.ones(20, np.uint8), np.zeros(4, np.uint8)])
    assert seg.pixel_anomaly_metrics(scores, anomaly)["fpr95"] == 0.25  # only 17.5 <= 18
    assert sklearn_reference(scores, anomaly)["fpr95"] == 0.25


def test_roc_points_lie_on_sklearns_curve():
    scores, anomaly = _scene_scores(np.random.default_rng(4), decimals=1)
    accumulator = seg.AnomalyAccumulator()
    accumulator.update(scores, anomaly)
    fpr, tpr = accumulator.roc_points(num_points=25)
    keep = anomaly != VOID
    reference_fpr, reference_tpr, _ = sk_metrics.roc_curve(anomaly[keep] == 1, -scores[keep].astype(np.float64))
    curve = set(zip(reference_fpr.round(12), reference_tpr.round(12))) | {(1.0, 1.0)}
    assert all((round(f, 12), round(t, 12)) in curve for f, t in zip(fpr, tpr))
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and len(fpr) <= 27


def test_open_set_input_errors_are_one_line():
    accumulator = seg.AnomalyAccumulator()
    with pytest.raises(ValueError, match=r"must be 0 \(known\), 1 \(anomaly\) or 255 \(void\)") as info:
        accumulator.update(np.zeros((2, 2)), np.full((2, 2), 2, np.uint8))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="NaN or inf"):
        accumulator.update(np.array([0.0, -np.inf]), np.array([0, 1], np.uint8))
    accumulator.update(np.array([0.0, np.nan]), np.array([0, VOID], np.uint8))  # void scores are never read
    with pytest.raises(ValueError, match="need known and anomaly pixels, got 1 known and 0 anomaly"):
        accumulator.result()


def test_float32_buffer_keeps_every_appended_value_in_order():
    rng = np.random.default_rng(5)
    parts = [rng.normal(size=n).astype(np.float32) for n in (0, 3, 1, 40, 7, 100)]
    buffer = seg.Float32Buffer()
    for part in parts:
        buffer.append(part)
    values = buffer.trimmed()
    assert values.dtype == np.float32 and buffer.size == values.size == 151
    np.testing.assert_array_equal(values, np.concatenate(parts))
    assert buffer.trimmed() is values
    with pytest.raises(ValueError, match="takes no values after that"):
        buffer.append(parts[1])
