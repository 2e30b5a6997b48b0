"""Where does a trained L-GMM lose: in its latent space, or in the mixture on it?

    python bench/latent_diagnosis.py --workdir=studies/fashion_mnist/fashion_mnist_vs_mnist/lgmm/seed0

Restores a workdir's latest checkpoint and compares, on the same model, what L-GMM does with what other
read-outs of its two spaces do: the backbone's pooled features (before the projection) and the latents z
the GMM sees, each fitted here on the known training images.

Open set (its first unknown set against the known test set; AUROC, known = positive): L-GMM's likelihood
and its class posterior max_y softmax(log p(z|y) / T) at L_D's temperature T (the classifier L_D trains;
an MSP of the mixture); Mahalanobis (tied full covariance, Lee et al. 2018, `ood.scores.fit_mahalanobis`),
per-class diagonal and isotropic Gaussians (maximum likelihood) in both spaces; and per-class mixtures of
K = 3, 5 diagonal Gaussians fitted by EM (scikit-learn) to all training latents: the best fit the
mixture could have at this encoder, with no memory bank, no balancing and no scale floor. If a density on
the features beats every density on the latents, the projection and normalisation discard what separates
the unknowns; if the likelihood trails the EM mixtures on its own latents, the GMM's fit is the weak part.
It also reports the mean norm of the backbone features of known and unknown test images.

Closed set (top-1 on the known test set): L-GMM's argmax_y log p(z|y), a linear probe (multinomial
logistic regression, scikit-learn) on each space, and the fitted densities' argmax. A probe well above the
model says the encoder's representation holds more than the mixture's decision rule reads out.

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lgmm_jax.tasks.classification import data as classification_data  # noqa: E402
from lgmm_jax.deploy import forward  # noqa: E402
from lgmm_jax.training import experiment, restore  # noqa: E402
from lgmm_jax.ood import scores  # noqa: E402
from lgmm_jax.runtime.sharding import make_mesh  # noqa: E402


def known_positive_auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown]))


def gaussian_log_likelihoods(train, labels, num_classes, isotropic: bool):
    """x -> [N, C] log N(x; mu_y, diag(var_y)) with the ML fit per class (one variance when isotropic)."""
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
        return -0.5 * squared - 0.5 * np.log(variances).sum(-1)[None]

    return score


def em_mixture_log_likelihoods(train, labels, num_classes, components: int):
    """z -> [N, C] log p(z|y) under per-class mixtures of `components` diagonal Gaussians fitted by EM."""
    x = train.astype(np.float64)
    mixtures = [GaussianMixture(components, covariance_type="diag", reg_covar=1e-6, random_state=0)
                .fit(x[labels == c]) for c in range(num_classes)]
    return lambda z: np.stack([m.score_samples(z.astype(np.float64)) for m in mixtures], axis=1)


def linear_probe_top1(train, labels, test, test_labels) -> float:
    """Top-1 of multinomial logistic regression on standardised inputs (the representation's read-out)."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(train, labels)
    return float(probe.score(test, test_labels))


def top1(class_scores, labels) -> float:
    return float(np.mean(np.argmax(class_scores, axis=1) == labels))


def model_outputs(workdir: str):
    """The restored run, and the latents, features, log p(z|y) and labels of its known training and test
    images and of its first unknown set."""
    mesh = make_mesh()
    trained = restore.restore_workdir(workdir, mesh)
    config, protocol, model = trained.config, trained.protocol, trained.model
    if config.model.head != "lgmm":
        raise SystemExit(f"error: {workdir} is a {config.model.head} run: pass an L-GMM workdir")
    outputs_fn = forward.make_forward(model, "lgmm", mesh)
    features_fn = jax.jit(lambda v, x: model.apply(v, x, False, method=lambda m, x, t: m.features(x, t)))

    def outputs(source, classes, all_unknown=False):
        batches = classification_data.eval_stream(config, protocol, source, classes, all_unknown)
        return forward.collect(batches, mesh, trained.variables, outputs_fn, extra={"features": features_fn})

    source = lambda ref, split=None: experiment.data_source(ref, split, config=config)  # noqa: E731
    unknown_ref = protocol.unknown[0]
    return (trained, unknown_ref.dataset,
            outputs(source(protocol.dataset, protocol.train_split), protocol.known_classes),
            outputs(source(protocol.dataset, protocol.test_split), protocol.known_classes),
            outputs(source(unknown_ref), unknown_ref.classes, all_unknown=True))


def read_outs(train, known, unknown, space: str, num_classes: int) -> dict:
    """AUROC and top-1 of the densities fitted to one space's training outputs, and its linear probe."""
    report = {}
    means, precision = scores.fit_mahalanobis(train[space], train["label"], num_classes)
    report[f"mahalanobis_{space}"] = known_positive_auroc(
        np.asarray(scores.mahalanobis(known[space], means, precision)),
        np.asarray(scores.mahalanobis(unknown[space], means, precision)))
    densities = {"diagonal": lambda: gaussian_log_likelihoods(train[space], train["label"], num_classes, False),
                 "isotropic": lambda: gaussian_log_likelihoods(train[space], train["label"], num_classes, True)}
    if space == "latent":  # one EM component is `diagonal`
        densities |= {f"em_k{k}": (lambda k=k: em_mixture_log_likelihoods(train[space], train["label"], num_classes, k))
                      for k in (3, 5)}
    for name, fit in densities.items():
        log_likelihoods = fit()
        known_ll, unknown_ll = log_likelihoods(known[space]), log_likelihoods(unknown[space])
        report[f"{name}_{space}"] = known_positive_auroc(known_ll.max(1), unknown_ll.max(1))
        report[f"top1_{name}_{space}"] = top1(known_ll, known["label"])
    report[f"top1_probe_{space}"] = linear_probe_top1(train[space], train["label"], known[space], known["label"])
    return report


def diagnose(workdir: str) -> dict:
    trained, unknown_set, train, known, unknown = model_outputs(workdir)
    temperature = trained.config.loss.discriminative_temperature
    posterior = lambda outputs: log_softmax(outputs["class_log_likelihood"] / temperature, axis=1).max(1)  # noqa: E731
    report = {"workdir": workdir, "unknown_set": unknown_set,
              "likelihood": known_positive_auroc(known["class_log_likelihood"].max(1),
                                                 unknown["class_log_likelihood"].max(1)),
              "posterior": known_positive_auroc(posterior(known), posterior(unknown)),
              "top1_model": top1(known["class_log_likelihood"], known["label"])}
    for space in ("features", "latent"):
        report |= read_outs(train, known, unknown, space, trained.num_classes)
    report["feature_norm_known"] = float(np.linalg.norm(known["features"], axis=1).mean())
    report["feature_norm_unknown"] = float(np.linalg.norm(unknown["features"], axis=1).mean())
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, action="append", help="an L-GMM run; repeat for several")
    args = parser.parse_args(argv)
    reports = [diagnose(workdir) for workdir in args.workdir]
    keys = [key for key in reports[0] if key not in ("workdir", "unknown_set")]
    print_table("AUROC (%), known positive", reports, [k for k in keys if not k.startswith(("top1", "feature_norm"))])
    print_table("top-1 (%) on the known test set", reports, [k for k in keys if k.startswith("top1")])
    print_table("mean backbone feature norm", reports, [k for k in keys if k.startswith("feature_norm")], percent=False)
    print(json.dumps(reports))


def print_table(title: str, reports: list[dict], columns: list[str], percent: bool = True) -> None:
    print(f"\n{title}\n| run | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for report in reports:
        cells = [f"{100 * report[c]:.2f}" if percent else f"{report[c]:.2f}" for c in columns]
        print(f"| {report['workdir']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
