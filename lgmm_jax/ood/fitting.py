"""What the feature-based scores fit on the known classes' training data, in one streamed pass.

The scores that read a network's features (`scores.mahalanobis`; `posthoc.knn`, `vim`, `rmds`) fit on
the training split's outputs, one batch in memory at a time: Gaussian statistics are summed
(O(C F + F^2) whatever the number of examples) and KNN's bank and ViM's alpha come from a uniform
subsample of at most `posthoc.DEFAULT_SAMPLE_SIZE` (50,000) rows. L-GMM's encoder gets the same read-outs
on its latents z and on its backbone's pooled features (`knn_latent`, `knn_features`, `rmds_features`;
`posthoc.LGMM_POSTHOC_SCORES` says why not RMDS on the latents), so that each model is scored by its best
post-hoc read-out as well as by its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lgmm_jax.ood import posthoc, scores

# Which output each training-fitted score reads.
TRAINING_FITTED = {
    "mahalanobis": "features",
    "knn": "features",
    "vim": "features",
    "rmds": "features",
    "knn_latent": "latent",
    "knn_features": "features",
    "rmds_features": "features",
}
SAMPLED = ("knn", "vim", "knn_latent", "knn_features")  # need examples, not only sums


def fit_on_training_outputs(outputs_per_batch: Iterable[dict], chosen, num_classes: int,
                            classifier: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """{score: fitted statistics} for every chosen score in TRAINING_FITTED, from one pass over the
    training outputs ({"label", "features" and / or "latent"} per batch). `classifier`: the final linear
    layer's (kernel [F, C], bias [C]), which ViM needs."""
    names = [name for name in chosen if name in TRAINING_FITTED]
    if not names:
        return {}
    keys = sorted({TRAINING_FITTED[name] for name in names})
    sampled = {TRAINING_FITTED[name] for name in names if name in SAMPLED}
    statistics: dict[str, Any] = {key: None for key in keys}
    samples = {key: posthoc.UniformSample() for key in sampled}
    for outputs in outputs_per_batch:
        if not len(outputs["label"]):
            continue
        for key in keys:
            statistics[key] = scores.accumulate_mahalanobis(statistics[key], outputs[key], outputs["label"],
                                                            num_classes)
            if key in samples:
                samples[key].add(outputs[key])
    if any(value is None for value in statistics.values()):
        raise ValueError("no training example to fit the feature-based scores on: check the training split")
    fitted: dict[str, Any] = {}
    for name in names:
        key = TRAINING_FITTED[name]
        if name == "mahalanobis":
            fitted[name] = scores.mahalanobis_from_statistics(statistics[key])
        elif name.startswith("knn"):
            fitted[name] = posthoc.knn_from_sample(samples[key])
        elif name.startswith("rmds"):
            fitted[name] = posthoc.rmds_from_statistics(statistics[key])
        elif name == "vim":
            fitted[name] = posthoc.vim_from_statistics(statistics[key], samples[key], *classifier)
    return fitted
