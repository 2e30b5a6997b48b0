"""Open-set metrics: AUROC, FPR95 (two conventions), AUPR-In/Out, detection error, top-k accuracy.

Conventions (paper Section 5.2 and Appendix C.1):

* A score is higher for inputs that look more in-distribution (ID); an input is accepted as ID when
  ``score >= tau``.
* Every metric is a fraction in [0, 1] (reports may show percent).
* ID is the positive class unless the metric's name says otherwise.
* Ties are handled exactly: all inputs with the same score are accepted or rejected together, as in
  ``sklearn.metrics.roc_curve``; nothing depends on the order of the inputs.
* Scores must be finite: a ``-inf`` log-likelihood is a bug upstream, never something to rank.

The open-set metrics run on the host (numpy + scikit-learn) on the scores of a whole evaluation set.
``topk_correct`` is the jittable per-batch part of top-k accuracy; ``topk_accuracy`` and
``topk_accuracies`` are its host-side wrappers.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_TPR = 0.95


def _as_finite_scores(scores, name: str) -> np.ndarray:
    """Returns `scores` as a float64 vector, or raises ValueError naming what is wrong and the fix."""
    array = np.asarray(scores)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of scores, got shape {array.shape}; "
            "pass one score per example (e.g. .ravel()).")
    if array.size == 0:
        raise ValueError(f"{name} is empty; evaluate on at least one example of each kind.")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}; pass float scores.")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite score(s) (NaN or +-inf); fix the score "
            "upstream (e.g. a -inf log-likelihood) before computing metrics.")
    return array


def _validated_tpr(tpr: float) -> float:
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}; pass a fraction such as 0.95.")
    return float(tpr)


def _labels_and_scores(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates ID and OOD scores with `is_id` labels (1 for ID, 0 for OOD)."""
    id_scores = _as_finite_scores(id_scores, "id_scores")
    ood_scores = _as_finite_scores(ood_scores, "ood_scores")
    is_id = np.concatenate([np.ones(id_scores.size, np.int64), np.zeros(ood_scores.size, np.int64)])
    return is_id, np.concatenate([id_scores, ood_scores])


def _sklearn_metrics():
    """sklearn.metrics, imported on first use rather than with this module: its import takes seconds (it
    brings scipy.stats and pandas), and processes that train without evaluating never need it."""
    from sklearn import metrics as sk_metrics

    return sk_metrics


def _roc(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC curve, one point per distinct score plus the (0, 0) point at threshold +inf."""
    return _sklearn_metrics().roc_curve(positive, scores, drop_intermediate=False)


def _fpr_at_tpr(positive: np.ndarray, scores: np.ndarray, tpr: float) -> float:
    """FPR at the first ROC point whose TPR reaches `tpr` (no interpolation)."""
    fpr_curve, tpr_curve, _ = _roc(positive, scores)
    first = int(np.argmax(tpr_curve >= tpr))  # tpr_curve ends at 1.0, so the match exists.
    return float(fpr_curve[first])


def threshold_at_tpr(id_scores, tpr: float = DEFAULT_TPR) -> float:
    """The rejection threshold tau set on held-out known-class (ID) data.

    tau is the largest threshold such that accepting ``score >= tau`` keeps at least a fraction `tpr`
    of `id_scores`: the ``ceil(tpr * N)``-th largest ID score (with the same float arithmetic as
    ``roc_curve``). It is the threshold of the ROC point that ``ood_metrics`` uses for ``fpr95``, so
    ``fpr95 == mean(ood_scores >= threshold_at_tpr(id_scores))`` exactly, ties included.

    Args:
        id_scores: [N] finite scores of ID examples, higher = more ID.
        tpr: fraction of ID examples to keep, in (0, 1].

    Returns:
        tau, one of the values of `id_scores`.
    """
    tpr = _validated_tpr(tpr)
    descending = np.sort(_as_finite_scores(id_scores, "id_scores"))[::-1]
    kept_fraction = np.arange(1, descending.size + 1) / descending.size
    return float(descending[int(np.argmax(kept_fraction >= tpr))])


def fpr_at_tpr(id_scores, ood_scores, tpr: float = DEFAULT_TPR) -> float:
    """Fraction of OOD accepted at the first ROC point (ID positive) with TPR >= `tpr`.

    The FPR95 of Hendrycks & Gimpel (2017) and ODIN (Liang et al., 2018) that the paper reports
    (Table 3); equal to ``mean(ood_scores >= threshold_at_tpr(id_scores, tpr))``.
    """
    is_id, scores = _labels_and_scores(id_scores, ood_scores)
    return _fpr_at_tpr(is_id, scores, _validated_tpr(tpr))


def auroc(id_scores, ood_scores) -> float:
    """AUROC with ID positive (``roc_auc_score``; ties count one half): `ood_metrics`' auroc alone."""
    return float(_sklearn_metrics().roc_auc_score(*_labels_and_scores(id_scores, ood_scores)))


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """All open-set detection metrics for one ID set against one OOD set.

    Args:
        id_scores: [N_id] finite scores of in-distribution (known-class) examples.
        ood_scores: [N_ood] finite scores of out-of-distribution (unknown) examples.
            Higher = more in-distribution for both.

    Returns:
        A dict of fractions in [0, 1]:
        auroc: ``roc_auc_score`` with ID positive (ties count one half).
        fpr95: fraction of OOD accepted at the first ROC point with TPR >= 0.95, ID positive, no
            interpolation (Hendrycks & Gimpel; ODIN; the paper's Table 3). Lower is better.
        fpr95_ood_positive: OpenOOD v1.5's FPR@95: OOD positive with negated scores, i.e. the
            fraction of ID rejected at the first point where >= 95% of OOD is rejected. Lower is
            better.
        aupr_in: ``average_precision_score`` with ID positive, scores as is.
        aupr_out: ``average_precision_score`` with OOD positive, scores negated.
        detection_error: min over the ROC points (every distinct threshold, plus accept-none) of
            ``0.5 (1 - TPR) + 0.5 FPR`` (ODIN's definition, used by the paper's Table 10; Appendix
            C.1's wording "at TPR 95%" is not what ODIN computes). Lower is better; at most 0.5.

    Raises:
        ValueError: an input is empty, not 1-D, or holds a non-finite score.
    """
    is_id, scores = _labels_and_scores(id_scores, ood_scores)
    is_ood = 1 - is_id
    sk_metrics = _sklearn_metrics()
    fpr_curve, tpr_curve, _ = _roc(is_id, scores)
    return {
        "auroc": float(sk_metrics.roc_auc_score(is_id, scores)),
        "fpr95": _fpr_at_tpr(is_id, scores, DEFAULT_TPR),
        "fpr95_ood_positive": _fpr_at_tpr(is_ood, -scores, DEFAULT_TPR),
        "aupr_in": float(sk_metrics.average_precision_score(is_id, scores)),
        "aupr_out": float(sk_metrics.average_precision_score(is_ood, -scores)),
        "detection_error": float(np.min(0.5 * (1.0 - tpr_curve) + 0.5 * fpr_curve)),
    }


# ----------------------------------------------------------------------------------------------
# Closed-set accuracy.


@jax.jit
def topk_correct(scores: jax.Array, labels: jax.Array, k: int | jax.Array) -> jax.Array:
    """Per-example top-k hit, jittable: [N, C] scores, [N] int labels -> [N] bool.

    An example is a hit when its label's rank is below `k`, the rank being the position of the label
    in the classes sorted by descending score, ties broken towards the lower class index (as
    ``argmax`` and a stable descending sort do). So top-1 agrees with ``argmax`` and constant scores
    never count as correct everywhere. Where C < k every example is a hit. Scores are compared in
    jax's dtype (float32 unless x64 is enabled). Labels outside [0, C) give meaningless values: mask
    such rows (e.g. padding) out.
    """
    num_classes = scores.shape[-1]
    label_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
    class_index = jnp.arange(num_classes)
    ahead_of_label = (scores > label_score) | ((scores == label_score) & (class_index < labels[:, None]))
    return jnp.sum(ahead_of_label, axis=-1) < k


def _validated_topk_inputs(scores, labels, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(
            f"scores must have shape [N, C], got {scores.shape}; pass one row of class scores per "
            "example.")
    if labels.shape != scores.shape[:1]:
        raise ValueError(
            f"labels must have shape [{scores.shape[0]}] to match scores {scores.shape}, got "
            f"{labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}; pass class indices.")
    mask = np.ones(labels.shape, bool) if mask is None else np.asarray(mask)
    if mask.shape != labels.shape or mask.dtype != bool:
        raise ValueError(
            f"mask must be a boolean array of shape {labels.shape}, got {mask.dtype} {mask.shape}.")
    if not mask.any():
        raise ValueError("no example is left after masking; pass at least one unmasked example.")
    if not np.all(np.isfinite(scores[mask])):
        raise ValueError(
            "scores of unmasked examples contain NaN or inf; fix the model output before computing "
            "accuracy.")
    kept_labels = labels[mask]
    if kept_labels.min() < 0 or kept_labels.max() >= scores.shape[1]:
        raise ValueError(
            f"labels of unmasked examples must lie in [0, {scores.shape[1]}); mask padded examples out.")
    return scores, labels, mask


def topk_accuracies(scores, labels, ks: Sequence[int] = (1, 5), mask=None) -> dict[str, float]:
    """Top-k accuracies for several k at once, as ``{"top1": ..., "top5": ...}``.

    Args:
        scores: [N, C] logits, class log-likelihoods or any scores where higher = more likely.
        labels: [N] integer class labels.
        ks: the k values, each >= 1. Where C < k, top-k is 1.0 (every class is in the top k).
        mask: optional [N] bool, False for padded examples, which are left out of the mean.

    Ties are broken towards the lower class index (see ``topk_correct``).
    """
    scores, labels, mask = _validated_topk_inputs(scores, labels, mask)
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}; pass e.g. (1, 5).")
    safe_labels = np.where(mask, labels, 0)
    return {
        f"top{k}": float(np.mean(np.asarray(topk_correct(scores, safe_labels, int(k)))[mask]))
        for k in ks
    }


def topk_accuracy(scores, labels, k: int, mask=None) -> float:
    """Top-k accuracy over the unmasked examples; 1.0 where C < k. See ``topk_accuracies``."""
    return topk_accuracies(scores, labels, (k,), mask)[f"top{k}"]
