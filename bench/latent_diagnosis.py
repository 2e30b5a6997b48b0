"""Where does a trained L-GMM's open-set score lose: in its latent space, or in the density on it?

    python bench/latent_diagnosis.py --workdir=studies/fashion_mnist/fashion_mnist_vs_mnist/lgmm/seed0

Restores a workdir's latest checkpoint and scores its first unknown set against the known test set
(AUROC, known = positive) with L-GMM's own likelihood and with class-conditional Gaussians fitted here on
the known training images, in two spaces of the same model: the backbone's pooled features (before the
projection) and the latents z the GMM sees. Fitted densities: Mahalanobis (tied full covariance, Lee et
al. 2018, `ood.scores.fit_mahalanobis`), per-class diagonal Gaussians and per-class isotropic Gaussians
(maximum likelihood). It also reports the mean norm of the backbone features of known and unknown test
images. If a density on the features beats every density on the latents, the projection and
normalisation discard what separates the unknowns; if the likelihood trails densities on its own latents,
the GMM's fit is the weak part. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lgmm_jax import evaluate, experiment, forward  # noqa: E402
from lgmm_jax.ood import scores  # noqa: E402
from lgmm_jax.sharding import make_mesh  # noqa: E402


def known_positive_auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown]))


def diagonal_gaussian_scores(train, labels, num_classes, isotropic: bool):
    """s(x) = max_y log N(x; mu_y, diag(var_y)) with the ML fit per class (one variance when isotropic)."""
    x = train.astype(np.float64)
    means = np.stack([x[labels == c].mean(0) for c in range(num_classes)])
    if isotropic:
        variances = np.stack([np.full(x.shape[1], ((x[labels == c] - means[c]) ** 2).mean())
                              for c in range(num_classes)])
    else:
        variances = np.stack([x[labels == c].var(0) for c in range(num_classes)]) + 1e-8

    def score(z):
        z = z.astype(np.float64)
        squared = (((z[:, None] - means[None]) ** 2) / variances[None]).sum(-1)
        return np.max(-0.5 * squared - 0.5 * np.log(variances).sum(-1)[None], axis=1)

    return score


def diagnose(workdir: str) -> dict:
    mesh = make_mesh()
    trained = evaluate.restore_workdir(workdir, mesh)
    config, protocol, model = trained.config, trained.protocol, trained.model
    if config.model.head != "lgmm":
        raise SystemExit(f"error: {workdir} is a {config.model.head} run: pass an L-GMM workdir")
    outputs_fn = forward.make_forward(model, "lgmm", mesh)
    features_fn = jax.jit(lambda v, x: model.apply(v, x, False, method=lambda m, x, t: m.features(x, t)))

    def outputs(source, classes, all_unknown=False):
        batches = experiment.eval_stream(config, protocol, source, classes, all_unknown)
        return forward.collect(batches, mesh, trained.variables, outputs_fn, extra={"features": features_fn})

    source = lambda ref, split=None: experiment.data_source(ref, split, config=config)  # noqa: E731
    train = outputs(source(protocol.dataset, protocol.train_split), protocol.known_classes)
    known = outputs(source(protocol.dataset, protocol.test_split), protocol.known_classes)
    unknown_ref = protocol.unknown[0]
    unknown = outputs(source(unknown_ref), unknown_ref.classes, all_unknown=True)
    num_classes = trained.num_classes
    report = {"workdir": workdir, "unknown_set": unknown_ref.dataset,
              "likelihood": known_positive_auroc(known["class_log_likelihood"].max(1),
                                                 unknown["class_log_likelihood"].max(1))}
    for space in ("features", "latent"):
        means, precision = scores.fit_mahalanobis(train[space], train["label"], num_classes)
        report[f"mahalanobis_{space}"] = known_positive_auroc(
            np.asarray(scores.mahalanobis(known[space], means, precision)),
            np.asarray(scores.mahalanobis(unknown[space], means, precision)))
        for kind, isotropic in (("diagonal", False), ("isotropic", True)):
            score = diagonal_gaussian_scores(train[space], train["label"], num_classes, isotropic)
            report[f"{kind}_{space}"] = known_positive_auroc(score(known[space]), score(unknown[space]))
    report["feature_norm_known"] = float(np.linalg.norm(known["features"], axis=1).mean())
    report["feature_norm_unknown"] = float(np.linalg.norm(unknown["features"], axis=1).mean())
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, action="append", help="an L-GMM run; repeat for several")
    args = parser.parse_args(argv)
    reports = [diagnose(workdir) for workdir in args.workdir]
    columns = [key for key in reports[0] if key not in ("workdir", "unknown_set")]
    print("| run | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for report in reports:
        cells = [f"{100 * report[c]:.2f}" if not c.startswith("feature_norm") else f"{report[c]:.2f}" for c in columns]
        print(f"| {report['workdir']} | " + " | ".join(cells) + " |")
    print(json.dumps(reports))


if __name__ == "__main__":
    main()
