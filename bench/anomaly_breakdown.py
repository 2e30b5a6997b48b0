"""Which known pixels does each anomaly score take for the anomaly? A segmenter's pixel AUROC / AP, split.

    python bench/anomaly_breakdown.py --workdir=studies/scenes_2x/scenes/lgmm/seed0 \
        --workdir=studies/scenes_2x/scenes/softmax/seed0 --set=far

Restores each segmentation workdir's latest checkpoint, runs its evaluation's forward pass (the same
`Predictor`, statistics fitted on the same training images) over one unknown set, and splits the pooled
pixel metrics of results.json by what the known pixels are (their ground-truth class in the set's label
maps, which the testbed's unknown sets carry beside the anomaly maps):

- ``auroc`` / ``ap``: the anomaly against every known pixel, as results.json reports them;
- ``vs_<class>``: AUROC of the anomaly against the known pixels of that class alone, so a score that
  separates the anomaly from the background but not from the known objects shows it here;
- ``top_<class>``: what the N pixels the score flags first (its N lowest) are, N = the number of anomaly
  pixels: shares of ``anomaly`` and of each known class, where the first false positives, which drive AP,
  come from;
- ``predicted_<class>``: what the segmenter predicts the anomaly pixels to be.

The anomaly is the positive class and a LOW score flags it (the library's convention), so every AUROC is
scikit-learn's ``roc_auc_score(is_anomaly, -score)``, as in `ood.segmentation_metrics`. Prints one
table per run, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lgmm_jax import tasks  # noqa: E402
from lgmm_jax.training import experiment, restore  # noqa: E402
from lgmm_jax.ood.segmentation_metrics import ANOMALY, KNOWN  # noqa: E402
from lgmm_jax.runtime.sharding import make_mesh  # noqa: E402
from lgmm_jax.tasks.segmentation import evaluation  # noqa: E402


def breakdown(anomaly: np.ndarray, label: np.ndarray, prediction: np.ndarray, score: np.ndarray,
              label_names: tuple[str, ...]) -> dict[str, float]:
    """One score's split metrics (see the module docstring) from flat per-pixel arrays of one set:
    anomaly map (0 known, 1 anomaly, 255 void), ground-truth class, predicted class, score (high = known)."""
    is_anomaly, is_known = anomaly == ANOMALY, anomaly == KNOWN
    flagged = -score.astype(np.float64)
    scored = is_anomaly | is_known
    result = {"auroc": float(roc_auc_score(is_anomaly[scored], flagged[scored])),
              "ap": float(average_precision_score(is_anomaly[scored], flagged[scored]))}
    for index, name in enumerate(label_names):
        of_class = is_known & (label == index)
        if of_class.any():
            pair = is_anomaly | of_class
            result[f"vs_{name}"] = float(roc_auc_score(is_anomaly[pair], flagged[pair]))
    top = np.argsort(-flagged[scored], kind="stable")[: int(is_anomaly.sum())]
    top_anomaly, top_label = is_anomaly[scored][top], label[scored][top]
    result["top_anomaly"] = float(top_anomaly.mean())
    for index, name in enumerate(label_names):
        result[f"top_{name}"] = float((~top_anomaly & (top_label == index)).mean())
    predicted = np.bincount(prediction[is_anomaly], minlength=len(label_names)) / is_anomaly.sum()
    result |= {f"predicted_{name}": float(share) for name, share in zip(label_names, predicted)}
    return result


def pixel_outputs(workdir: str, set_name: str) -> tuple[dict[str, np.ndarray], tuple[str, ...], tuple[str, ...]]:
    """Flat per-pixel anomaly, label, prediction and every score of the run's head over the unknown set
    `set_name` (the first `segmentation.eval_images` images, as its evaluation); the scores' and the
    classes' names."""
    mesh = make_mesh()
    trained = restore.restore_workdir(workdir, mesh)
    config, protocol = trained.config, trained.protocol
    names = tasks.get(config).unknown_set_names(protocol)
    if set_name not in names:
        raise SystemExit(f"--set={set_name}: {workdir}'s unknown sets are {names}; pick one of them")
    chosen = evaluation.chosen_scores(config)
    predictor = evaluation.make_predictor(config, trained.model, trained.variables, mesh, trained.train_source,
                                          chosen)
    unknown = experiment.data_source(protocol.unknown[names.index(set_name)], config=config)
    columns: dict[str, list[np.ndarray]] = {key: [] for key in ("anomaly", "label", "prediction", *chosen)}
    for example, out in predictor.examples_and_outputs(unknown, "anomaly", chosen,
                                                       int(config.segmentation.eval_images)):
        if "label" not in example:
            raise SystemExit(f"--set={set_name}: its images have no label maps, so known pixels have no class")
        columns["anomaly"].append(np.asarray(example["anomaly"]).ravel())
        columns["label"].append(np.asarray(example["label"]).ravel())
        for key in ("prediction", *chosen):
            columns[key].append(np.asarray(out[key]).ravel())
    pixels = {key: np.concatenate(values) for key, values in columns.items()}
    return pixels, chosen, tuple(trained.train_source.label_names)


def diagnose(workdir: str, set_name: str) -> dict:
    pixels, chosen, label_names = pixel_outputs(workdir, set_name)
    return {"workdir": workdir, "set": set_name, "label_names": list(label_names),
            "scores": {name: breakdown(pixels["anomaly"], pixels["label"], pixels["prediction"], pixels[name],
                                       label_names)
                       for name in chosen}}


def print_report(report: dict) -> None:
    names = report["label_names"]
    rows = [("AUROC / AP (all known)", lambda r: f"{100 * r['auroc']:.2f} / {100 * r['ap']:.2f}")]
    rows += [(f"AUROC vs {name}", lambda r, n=name: f"{100 * r[f'vs_{n}']:.2f}" if f"vs_{n}" in r else "-")
             for name in names]
    rows += [("top-N: anomaly", lambda r: f"{100 * r['top_anomaly']:.1f}%")]
    rows += [(f"top-N: {name}", lambda r, n=name: f"{100 * r[f'top_{n}']:.1f}%") for name in names]
    scores = list(report["scores"])
    print(f"\n{report['workdir']} on '{report['set']}'\n| | " + " | ".join(scores) + " |")
    print("|---" * (len(scores) + 1) + "|")
    for title, cell in rows:
        print(f"| {title} | " + " | ".join(cell(report["scores"][s]) for s in scores) + " |")
    first = report["scores"][scores[0]]
    print("anomaly pixels predicted as: " + ", ".join(f"{n} {100 * first[f'predicted_{n}']:.1f}%" for n in names))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, action="append", help="a segmentation run; repeat for several")
    parser.add_argument("--set", required=True, help="an unknown set of the runs, e.g. far or near on the testbed")
    args = parser.parse_args(argv)
    reports = [diagnose(workdir, args.set) for workdir in args.workdir]
    for report in reports:
        print_report(report)
    print(json.dumps(reports))


if __name__ == "__main__":
    main()
