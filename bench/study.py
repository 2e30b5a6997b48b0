"""The real-data study: L-GMM against its softmax counterpart, and the paper's Table 7 ablations.

    python bench/study.py                       # Fashion-MNIST, the committed study (see README)
    python bench/study.py --suite=digits        # the same on scikit-learn digits, in minutes
    python bench/study.py --only=lgmm,softmax --seeds=0

Each run is one `lgmm_jax.train.train_and_evaluate` with the suite's base config plus a variant's
overrides, in its own workdir under --root (a finished run is not repeated: delete its folder to redo
it). Every variant runs on each protocol of the suite (Fashion-MNIST: all ten classes known with
MNIST-5k as unknown, and the 6/4 split) for each seed. Writes --output (JSON: rows[variant][protocol]
holds each seed's numbers and their summary (mean and standard deviation), both shaped like results.json:
`closed_set` (top1), `open_set` (per unknown set, per score: auroc, fpr95, aupr_in, aupr_out) and
`effective_components`) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default, fashion_mnist  # noqa: E402

SUITES = {
    # suite -> (base config, protocols, epochs)
    "fashion_mnist": (fashion_mnist.get_config, ("fashion_mnist_vs_mnist", "fashion_mnist_6_4"), 1),
    "digits": (default.get_config, ("digits_6_4",), 40),
}

# Table 7's loss ablations change L_G, which only gradient updates of the Gaussians follow (with the
# default moment matching L_G moves nothing): they run with gradient updates, against `gradient_t10`.
GRADIENT = {"model.gmm_update": "gradient"}
# Variant name -> config overrides. "lgmm" is the default L-GMM; the rest change one thing.
VARIANTS = {
    "lgmm": {},
    "softmax": {"model.head": "softmax"},
    "lgmm_k1": {"model.num_components": 1},
    "lgmm_k2": {"model.num_components": 2},
    "lgmm_k4": {"model.num_components": 4},
    # Table 7(a) and (c), and Appendix G (gradient updates: see GRADIENT)
    "generative_only": {**GRADIENT, "loss.training": "generative_only"},
    "no_one_hot": {**GRADIENT, "loss.lambda_one": 0.0},
    "no_average": {**GRADIENT, "loss.lambda_avg": 0.0},
    "mle_only": {**GRADIENT, "loss.lambda_one": 0.0, "loss.lambda_avg": 0.0},
    "appendix_g": {**GRADIENT, "model.variant": "appendix_g"},
    # issue 8: ways of keeping the components alive
    "posterior_only": {"loss.assignment": "posterior", "loss.reseed_epochs": ()},
    "posterior_reseed": {"loss.assignment": "posterior"},
    "sinkhorn_no_reseed": {"loss.reseed_epochs": ()},
    "responsibility_temperature": {"loss.assignment": "posterior", "loss.reseed_epochs": (), "loss.responsibility_temperature": 10.0},
    "kl_usage": {"loss.assignment": "posterior", "loss.reseed_epochs": (), "loss.usage_distance": "kl"},
    "per_component_scale": {"model.share_scale": False},
    # how theta follows the latents, and L_D's temperature (issue 7: why L-GMM trailed on top-1)
    "paper_eq7": {**GRADIENT, "loss.discriminative_temperature": 1.0},
    "gradient_t3": {**GRADIENT, "loss.discriminative_temperature": 3.0},
    "gradient_t10": GRADIENT,
    "temperature_1": {"loss.discriminative_temperature": 1.0},
    "temperature_3": {"loss.discriminative_temperature": 3.0},
    "temperature_30": {"loss.discriminative_temperature": 30.0},
    "gmm_lr_1e-3": {**GRADIENT, "optimizer.gmm_learning_rate": 1e-3},
    "scale_floor_0.1": {"model.scale_floor": 0.1, "model.init_scale": 0.15},
    "encoder_lr_3e-3": {"optimizer.learning_rate": 3e-3},
}
DEFAULT_VARIANTS = ("lgmm", "softmax", "paper_eq7", "gradient_t3", "gradient_t10")
# One seed, first protocol only: Table 7's ablations and the issue-8 candidates.
ABLATIONS = ("lgmm_k1", "lgmm_k2", "lgmm_k4", "generative_only", "no_one_hot", "no_average", "mle_only",
             "appendix_g", "posterior_only", "sinkhorn_no_reseed", "temperature_1", "temperature_3",
             "temperature_30")


def headline(results: dict) -> dict:
    """The numbers the study compares: top-1, every score's metrics per unknown set, effective K."""
    row = {"top1": results["closed_set"]["top1"]}
    for set_name, by_score in results["open_set"].items():
        for score, values in by_score.items():
            if isinstance(values, dict):
                for metric in ("auroc", "fpr95", "aupr_in", "aupr_out"):
                    row[f"{set_name}/{score}/{metric}"] = values[metric]
    if "components" in results:
        row["effective_components"] = results["components"]["mean_effective_components"]
    return row


def summarise(rows: list[dict]) -> dict:
    keys = sorted(set().union(*rows))
    return {
        key: {
            "mean": float(np.mean([r[key] for r in rows if key in r])),
            "std": float(np.std([r[key] for r in rows if key in r])),
        }
        for key in keys
    }


def nest(flat: dict) -> dict:
    """A headline (or its summary) as results.json shapes it: closed_set, open_set[set][score][metric]."""
    nested = {"closed_set": {}, "open_set": {}}
    for key, value in flat.items():
        if key == "top1":
            nested["closed_set"]["top1"] = value
        elif key.count("/") == 2:
            set_name, score, metric = key.split("/")
            nested["open_set"].setdefault(set_name, {}).setdefault(score, {})[metric] = value
        else:
            nested[key] = value
    return nested


def flatten(nested: dict) -> dict:
    """The inverse of `nest`."""
    flat = {key: value for key, value in nested.items() if key not in ("closed_set", "open_set")}
    flat.update(nested["closed_set"])
    for set_name, by_score in nested["open_set"].items():
        for score, by_metric in by_score.items():
            for metric, value in by_metric.items():
                flat[f"{set_name}/{score}/{metric}"] = value
    return flat


def run_one(suite: str, protocol: str, variant: str, seed: int, epochs: float, root: str) -> dict:
    from lgmm_jax import train

    workdir = os.path.join(root, suite, protocol, variant, f"seed{seed}")
    results_path = os.path.join(workdir, "results.json")
    if os.path.exists(results_path):
        with open(results_path) as f:
            return json.load(f)
    make_config, _, _ = SUITES[suite]
    config = make_config()
    dataset = "fashion_mnist" if protocol.startswith("fashion") else config.dataset
    config.update_from_flattened_dict({"protocol": protocol, "dataset": dataset, "seed": seed, "num_epochs": epochs})
    config.update_from_flattened_dict(VARIANTS[variant])
    started = time.time()
    results = train.train_and_evaluate(config, workdir)
    print(f"[{time.time() - started:.0f}s] {protocol} {variant} seed {seed}", flush=True)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="fashion_mnist")
    parser.add_argument("--only", default=",".join(DEFAULT_VARIANTS), help="variants, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                        help="also run ABLATIONS with the first seed on the first protocol")
    parser.add_argument("--epochs", type=float, default=None, help="default: the suite's")
    parser.add_argument("--root", default="/tmp/lgmm_study")
    parser.add_argument("--output", default=None, help="default: bench/results/<suite>.json")
    args = parser.parse_args(argv)
    _, protocols, default_epochs = SUITES[args.suite]
    epochs = args.epochs or default_epochs
    variants = [v for v in args.only.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    output = args.output or os.path.join(os.path.dirname(__file__), "results", f"{args.suite}.json")
    plan = [(protocol, variant, seeds) for protocol in protocols for variant in variants]
    if args.ablations:
        plan += [(protocols[0], variant, seeds[:1]) for variant in ABLATIONS if variant not in variants]
    study = {"suite": args.suite, "epochs": epochs, "seeds": seeds, "rows": {}}
    started = time.time()
    for protocol, variant, variant_seeds in plan:
        per_seed = [headline(run_one(args.suite, protocol, variant, s, epochs, args.root)) for s in variant_seeds]
        study["rows"].setdefault(variant, {})[protocol] = {
            "seeds": [nest(row) for row in per_seed],
            "summary": nest(summarise(per_seed)),
        }
        study["minutes"] = round((time.time() - started) / 60, 1)
        os.makedirs(os.path.dirname(output), exist_ok=True)
        with open(output, "w") as f:
            json.dump(study, f, indent=1)
    print(markdown(study))


def table_from_file(path: str) -> None:
    """Print the markdown table of a saved study (python -c 'from bench.study import ...')."""
    with open(path) as f:
        print(markdown(json.load(f)))


def markdown(study: dict) -> str:
    """One row per variant and protocol: top-1, then AUROC / FPR95 of each score (mean ± std over seeds)."""
    lines = [
        "| variant | protocol | seeds | top-1 | AUROC by score | FPR95 by score | effective K |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, by_protocol in study["rows"].items():
        for protocol, entry in by_protocol.items():
            summary = flatten(entry["summary"])
            scores = sorted({key.split("/")[1] for key in summary if key.count("/") == 2})
            per_metric = {
                metric: ", ".join(
                    f"{score} {fmt(stat)}"
                    for key, stat in summary.items()
                    for score in scores
                    if key.endswith(f"/{score}/{metric}")
                )
                for metric in ("auroc", "fpr95")
            }
            effective = summary.get("effective_components")
            cells = [
                variant, protocol, str(len(entry["seeds"])), fmt(summary["top1"]),
                per_metric["auroc"], per_metric["fpr95"],
                f"{effective['mean']:.2f} ± {effective['std']:.2f}" if effective else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


if __name__ == "__main__":
    main()
