"""The real-data study: L-GMM against its softmax counterpart, and the paper's Table 7 ablations.

    python bench/study.py                       # Fashion-MNIST, 10 epochs: the committed study (docs/results.md)
    python bench/study.py --suite=digits        # the same on scikit-learn digits, in minutes
    python bench/study.py --only=lgmm,softmax --seeds=0 --no-ablations
    python bench/study.py --suite=scenes --only=lgmm,softmax,paper,gmmseg --no-ablations \
        --init_weights=GARMENTS_WORKDIR   # segmentation testbed, from configs/scenes_garments.py's run

Each run is one `lgmm_jax.training.train.train_and_evaluate` with the suite's base config plus a variant's
overrides, in its own workdir under --root (default: `studies/` in the checkout, ignored by git). A
finished run is not repeated and an unfinished one resumes from its last checkpoint, so the study can be
stopped at any moment and started again with the same command (delete a run's folder to redo it);
`--collect` trains nothing and writes the JSON from the runs of the plan that have finished, e.g. after
running subsets (`--only`, `--seeds`, `--protocols`) to their own --output. `--reuse=JSON` takes the runs
an earlier --output recorded instead of training them, for a new checkout whose studies/ is gone;
`--no-curve` evaluates each run once, at the end.
Every variant runs on each protocol of the suite (Fashion-MNIST: all ten classes known with MNIST-5k as
unknown, and the 6/4 split) for each seed, seed by seed, so that the first seed of every variant is done
before the second starts. The main variants also evaluate after the suite's curve epochs (a learning
curve, `eval.epochs`). After every run --output (JSON) is rewritten with what has finished:
rows[variant][protocol] holds each seed's numbers and their summary (mean and standard deviation), shaped
like results.json: `closed_set` (top1), `open_set` (per unknown set, per score: auroc, fpr95, aupr_in,
aupr_out) and `effective_components`; `curve[variant][protocol][epoch]` the top-1 and the best AUROC of
each seed after that epoch. It prints a markdown table and draws the curve (--curve_plot).

The `scenes` suite is segmentation (configs/scenes.py, the testbed; `scenes_2x`: configs/scenes_2x.py, the
testbed at 128x128 for 24 epochs): its headline is mIoU in place of top-1 and, per unknown set (`near`,
`far`) and score, the pixel AUROC, AP and FPR95 (anomaly positive).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default, fashion_mnist, scenes, scenes_2x  # noqa: E402

SUITES = {
    # suite -> (base config, protocols, epochs, learning-curve epochs)
    "fashion_mnist": (fashion_mnist.get_config, ("fashion_mnist_vs_mnist", "fashion_mnist_6_4"), 10, (1, 3)),
    "digits": (default.get_config, ("digits_6_4",), 40, (5, 15)),
    "scenes": (scenes.get_config, ("scenes",), 8, ()),
    "scenes_2x": (scenes_2x.get_config, ("scenes",), 24, ()),  # the testbed at 128x128 (configs/scenes_2x.py)
}
SEGMENTATION_METRICS = ("auroc", "ap", "fpr95")
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Table 7's loss ablations change L_G, which only gradient updates of the Gaussians follow (with the
# default moment matching L_G moves nothing): they run with gradient updates, against `gradient_t10`.
GRADIENT = {"model.gmm_update": "gradient"}
# Variant name -> config overrides. "lgmm" is the default L-GMM; the rest change one thing.
WIDE = (64, 128, 256)  # small_cnn at twice its default widths (32, 64, 128)
VARIANTS = {
    "lgmm": {},
    "softmax": {"model.head": "softmax"},
    "paper": {"method": "paper"},  # Section 2 exactly as written (lgmm_jax.training.experiment.paper_method_settings)
    "gmmseg": {"method": "gmmseg"},  # segmentation: GMMSeg's head and updates (lgmm_jax/method/gmmseg.py)
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
    # issue 13: the latent space (L-GMM's own backbone features separate MNIST far better than its
    # L2-normalised latents: bench/diagnose.py)
    "raw_latent": {"model.latent_normalization": "none"},
    "log_norm_latent": {"model.latent_normalization": "l2_log_norm"},
    "layernorm_latent": {"model.latent_normalization": "layernorm_l2"},
    "raw_latent_k1": {"model.latent_normalization": "none", "model.num_components": 1},
    "latent_dim_32": {"model.latent_dim": 32},
    "raw_latent_t3": {"model.latent_normalization": "none", "loss.discriminative_temperature": 3.0},
    "raw_latent_t30": {"model.latent_normalization": "none", "loss.discriminative_temperature": 30.0},
    # issue 13: the encoder's width (both models, 4x the convolutions' compute) and the learning-rate
    # schedule (a one-epoch linear warm-up to a 3x higher peak, then the same cosine)
    "wide_encoder": {"model.encoder_widths": WIDE},
    "softmax_wide_encoder": {"model.head": "softmax", "model.encoder_widths": WIDE},
    "warmup_peak_3e-3": {"optimizer.learning_rate": 3e-3, "optimizer.warmup_epochs": 1.0},
    "softmax_warmup_peak_3e-3": {"model.head": "softmax", "optimizer.learning_rate": 3e-3,
                                 "optimizer.warmup_epochs": 1.0},
}
# method=paper with one of its departures from the library undone (`method_except`), and with the two
# that matter undone together: which of them makes Section 2 as written collapse on the testbed.
PAPER_DEPARTURES = {
    "l2_latent": "model.latent_normalization",
    "shared_scale": "model.share_scale",
    "tempered": "loss.discriminative_temperature",
    "sinkhorn": "loss.assignment",
    "reseed": "loss.reseed_epochs",
    "bank_sample": "loss.bank_sample_size",
}
VARIANTS.update({f"paper_but_{name}": {"method": "paper", "method_except": (key,)}
                 for name, key in PAPER_DEPARTURES.items()})
VARIANTS["paper_but_l2_latent_tempered"] = {
    "method": "paper", "method_except": (PAPER_DEPARTURES["l2_latent"], PAPER_DEPARTURES["tempered"])}
DEFAULT_VARIANTS = ("lgmm", "softmax", "paper")
# Levers that may change the default, on every protocol (a lever that helps one protocol and hurts the
# other is a finding, not a default): unnormalised latents keep the feature norm, which separates
# Fashion-MNIST from MNIST; the encoder at twice the width, for both models (a fair comparison needs the
# same encoder), lifts L-GMM's 6/4 likelihood by 4 points and the softmax model's MSP by 3 (issue 13).
CANDIDATES = ("raw_latent", "wide_encoder", "softmax_wide_encoder")
# First protocol only, with --ablation_seeds: Table 7 (K, generative-only, the loss components against
# their gradient-step reference) and the ways of keeping the components alive.
ABLATIONS = ("lgmm_k1", "lgmm_k2", "lgmm_k4", "gradient_t10", "generative_only", "no_one_hot", "no_average",
             "mle_only", "appendix_g", "posterior_only")
# Issue 13's further levers, first ablation seed only, on the protocol they aim at: near-OOD levers on 6/4,
# whose seeds spread by 1.2 AUROC points (one seed tells), and unnormalised latents with one component
# (the closed-set and the far-OOD goal at once) against MNIST; the warm-up schedule for both models on both.
LEVERS = {
    "fashion_mnist_6_4": ("lgmm_k1", "temperature_3", "latent_dim_32", "warmup_peak_3e-3",
                          "softmax_warmup_peak_3e-3"),
    "fashion_mnist_vs_mnist": ("raw_latent_k1", "warmup_peak_3e-3", "softmax_warmup_peak_3e-3"),
}


def headline(results: dict) -> dict:
    """The numbers the study compares: top-1, every score's metrics per unknown set, effective K
    (segmentation: mIoU and every score's pixel AUROC / AP / FPR95 per unknown set)."""
    if results.get("task") == "segmentation":
        row = {"miou": results["closed_set"]["miou"]}
        for set_name, by_score in results["open_set"].items():
            for score, values in by_score.items():
                if isinstance(values, dict):
                    row.update({f"{set_name}/{score}/{metric}": values[metric] for metric in SEGMENTATION_METRICS})
        return row
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
        if key in ("top1", "miou"):
            nested["closed_set"][key] = value
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


def is_segmentation_suite(suite: str | None) -> bool:
    """Whether the suite's base config segments (its headline is mIoU, not top-1)."""
    return suite in SUITES and SUITES[suite][0]().get("task") == "segmentation"


def run_workdir(root: str, suite: str, protocol: str, variant: str, seed: int) -> str:
    return os.path.join(root, suite, protocol, variant, f"seed{seed}")


def finished_run(root: str, suite: str, protocol: str, variant: str, seed: int) -> bool:
    return os.path.exists(os.path.join(run_workdir(root, suite, protocol, variant, seed), "results.json"))


def run_one(suite: str, protocol: str, variant: str, seed: int, epochs: float, root: str, curve=(),
            init_weights: str = "") -> dict:
    """results.json of one run: read if it finished before, else trained (resuming where it stopped);
    `init_weights` starts the encoder from that file or workdir (`init.weights`)."""
    from lgmm_jax.training import train

    workdir = run_workdir(root, suite, protocol, variant, seed)
    results_path = os.path.join(workdir, "results.json")
    if finished_run(root, suite, protocol, variant, seed):
        with open(results_path) as f:
            return json.load(f)
    make_config = SUITES[suite][0]
    config = make_config()
    dataset = "fashion_mnist" if protocol.startswith("fashion") else config.dataset
    run = {"protocol": protocol, "dataset": dataset, "seed": seed, "num_epochs": epochs, "eval.epochs": tuple(curve)}
    if config.get("task") == "segmentation":  # the testbed's unknown sets are the config's, no protocol
        run = {"seed": seed, "num_epochs": epochs, "eval.epochs": tuple(curve)}
    config.update_from_flattened_dict(run)
    config.update_from_flattened_dict(VARIANTS[variant])
    if init_weights:
        config.init.weights = init_weights
    started = time.time()
    results = train.train_and_evaluate(config, workdir)
    print(f"[{time.time() - started:.0f}s] {protocol} {variant} seed {seed}", flush=True)
    return results


def best_auroc(results: dict) -> float:
    """The highest AUROC of any score on any unknown set: the model's best open-set showing."""
    return max(
        values["auroc"]
        for by_score in results["open_set"].values()
        for values in by_score.values()
        if isinstance(values, dict)
    )


def curve_point(results: dict) -> dict:
    closed = "miou" if results.get("task") == "segmentation" else "top1"
    return {closed: results["closed_set"][closed], "best_auroc": best_auroc(results)}


def read_curve(workdir: str, curve_epochs, epochs: float, final: dict) -> dict:
    """epoch -> curve_point for each learning-curve evaluation the run wrote, and the final one."""
    points = {}
    for epoch in curve_epochs:
        path = os.path.join(workdir, "curve", f"epoch_{float(epoch):g}", "results.json")
        if os.path.exists(path):
            with open(path) as f:
                points[f"{float(epoch):g}"] = curve_point(json.load(f))
    points[f"{float(epochs):g}"] = curve_point(final)
    return points


def study_plan(protocols, variants, seeds, ablations: bool, ablation_seeds) -> list[tuple[str, str, int, bool]]:
    """(protocol, variant, seed, with the learning curve) in the order they run: seed by seed, then the
    candidates on every protocol and the ablations on the first, with the ablation seeds, then the levers
    on their protocols with the first ablation seed."""
    plan = [(p, v, s, True) for s in seeds for p in protocols for v in variants]
    if ablations:
        plan += [(p, v, s, True) for s in ablation_seeds for p in protocols for v in CANDIDATES if v not in variants]
        plan += [(protocols[0], v, s, False) for s in ablation_seeds for v in ABLATIONS if v not in variants]
        plan += [(p, v, ablation_seeds[0], False) for p in protocols for v in LEVERS.get(p, ()) if v not in variants]
    return plan


def write_study(study: dict, finished: dict, output: str) -> None:
    """Rebuild rows and curve from the finished runs, (protocol, variant) -> [(seed, headline, curve points)],
    and write the JSON."""
    study["rows"], study["curve"] = {}, {}
    for (protocol, variant), runs in finished.items():
        per_seed = [row for _, row, _ in runs]
        study["rows"].setdefault(variant, {})[protocol] = {
            "seeds": [nest(row) for row in per_seed],
            "seed_ids": [seed for seed, _, _ in runs],
            "summary": nest(summarise(per_seed)),
        }
        curves = {seed: points for seed, _, points in runs if points}
        if curves:
            epochs = sorted({e for points in curves.values() for e in points}, key=float)
            study["curve"].setdefault(variant, {})[protocol] = {
                epoch: {str(seed): points[epoch] for seed, points in curves.items() if epoch in points}
                for epoch in epochs
            }
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(study, f, indent=1)


def plot_curve(study: dict, path: str) -> None:
    """Top-1 and best AUROC against epochs, mean over seeds with min-max bands, one column per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = sorted({p for by_protocol in study["curve"].values() for p in by_protocol})
    if not protocols:
        return
    closed = "miou" if is_segmentation_suite(study.get("suite")) else "top1"
    figure, axes = plt.subplots(2, len(protocols), figsize=(5 * len(protocols), 7), squeeze=False)
    for column, protocol in enumerate(protocols):
        for variant, by_protocol in study["curve"].items():
            if protocol not in by_protocol:
                continue
            epochs = sorted(by_protocol[protocol], key=float)
            for row, metric in enumerate((closed, "best_auroc")):
                values = [[100 * p[metric] for p in by_protocol[protocol][e].values()] for e in epochs]
                x = [float(e) for e in epochs]
                axes[row][column].plot(x, [np.mean(v) for v in values], marker="o", label=variant)
                axes[row][column].fill_between(x, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
        axes[0][column].set_title(protocol)
        axes[0][column].set_ylabel("mIoU (%)" if closed == "miou" else "top-1 (%)")
        axes[1][column].set_ylabel("best AUROC of the model's scores (%)")
        axes[1][column].set_xlabel("epochs")
        for row in range(2):
            axes[row][column].set_xscale("log")
            axes[row][column].grid(alpha=0.3)
            axes[row][column].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="fashion_mnist")
    parser.add_argument("--only", default=",".join(DEFAULT_VARIANTS), help="variants, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                        help="also run ABLATIONS on the first protocol")
    parser.add_argument("--ablation_seeds", default="0,1,2", help="seeds of the candidates and ablations")
    parser.add_argument("--curve", action=argparse.BooleanOptionalAction, default=True,
                        help="evaluate the main variants after the suite's curve epochs too (--no-curve: at the "
                             "end only; each evaluation computes every score, the post-hoc ones included)")
    parser.add_argument("--protocols", default=None, help="comma-separated; default: the suite's")
    parser.add_argument("--epochs", type=float, default=None, help="default: the suite's")
    parser.add_argument("--init_weights", default="",
                        help="start every run's encoder from this checkpoint or workdir (init.weights), e.g. the "
                             "scenes suite from configs/scenes_garments.py's run")
    parser.add_argument("--root", default=os.path.join(REPOSITORY, "studies"))
    parser.add_argument("--output", default=None, help="default: bench/results/<suite>.json")
    parser.add_argument("--curve_plot", default=None, help="default: bench/results/<suite>_curve.png")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: write --output from the runs of the plan that have finished")
    parser.add_argument("--reuse", default=None,
                        help="an earlier --output of this suite and epochs (e.g. a committed partial study): its "
                             "runs are taken from it, not trained again, for when their workdirs are gone")
    args = parser.parse_args(argv)
    _, suite_protocols, default_epochs, curve_epochs = SUITES[args.suite]
    protocols = args.protocols.split(",") if args.protocols else list(suite_protocols)
    if not set(protocols) <= set(suite_protocols):
        parser.error(f"unknown protocols {sorted(set(protocols) - set(suite_protocols))}; "
                     f"the {args.suite} suite has {list(suite_protocols)}")
    epochs = args.epochs or default_epochs
    variants = [v for v in args.only.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    ablation_seeds = [int(s) for s in args.ablation_seeds.split(",")]
    results_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    output = args.output or os.path.join(results_dir, f"{args.suite}.json")
    curve_plot = args.curve_plot or os.path.join(results_dir, f"{args.suite}_curve.png")
    curve_epochs = tuple(e for e in curve_epochs if e < epochs) if args.curve else ()
    study = {"suite": args.suite, "epochs": epochs, "curve_epochs": list(curve_epochs), "seeds": seeds,
             "ablation_seeds": ablation_seeds, "init_weights": args.init_weights, "commit": current_commit()}
    reused = recorded_runs(args.reuse, study) if args.reuse else {}
    finished: dict = {}
    started = time.time()
    for protocol, variant, seed, with_curve in study_plan(protocols, variants, seeds, args.ablations, ablation_seeds):
        curve = curve_epochs if with_curve else ()
        if (protocol, variant, seed) in reused:
            finished.setdefault((protocol, variant), []).append((seed, *reused[protocol, variant, seed]))
            continue
        if args.collect and not finished_run(args.root, args.suite, protocol, variant, seed):
            continue
        results = run_one(args.suite, protocol, variant, seed, epochs, args.root, curve, args.init_weights)
        workdir = run_workdir(args.root, args.suite, protocol, variant, seed)
        points = read_curve(workdir, curve, epochs, results) if with_curve else None
        finished.setdefault((protocol, variant), []).append((seed, headline(results), points))
        if not args.collect:  # after every run, so that a stopped study keeps what it finished
            study["minutes"] = round((time.time() - started) / 60, 1)
            write_study(study, finished, output)
            plot_curve(study, curve_plot)
    if args.collect:
        write_study(study, finished, output)
        plot_curve(study, curve_plot)
    print(markdown(study))


def recorded_runs(path: str, study: dict) -> dict:
    """(protocol, variant, seed) -> (headline, curve points) of each run an earlier --output recorded, so
    that a study whose workdirs are lost (a new checkout) does not train them again. The recording must
    be of the same suite and epochs; a missing or different file is a one-line error."""
    try:
        with open(path) as f:
            recorded = json.load(f)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--reuse={path}: cannot read a study JSON ({error}); give an earlier --output")
    for key in ("suite", "epochs"):
        if recorded.get(key) != study[key]:
            raise SystemExit(f"--reuse={path}: its {key} is {recorded.get(key)!r}, this study's "
                             f"{study[key]!r}; reuse only a study of the same suite and epochs")
    runs = {}
    for variant, by_protocol in recorded["rows"].items():
        for protocol, entry in by_protocol.items():
            curve = recorded.get("curve", {}).get(variant, {}).get(protocol, {})
            for seed, row in zip(entry["seed_ids"], entry["seeds"]):
                points = {epoch: by_seed[str(seed)] for epoch, by_seed in curve.items() if str(seed) in by_seed}
                runs[protocol, variant, seed] = (flatten(row), points or None)
    return runs


def current_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPOSITORY, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def table_from_file(path: str) -> None:
    """Print the markdown table of a saved study (python -c 'from bench.study import ...')."""
    with open(path) as f:
        print(markdown(json.load(f)))


def markdown(study: dict) -> str:
    """One row per variant and protocol: top-1, then AUROC / FPR95 of each score (mean ± std over seeds)."""
    if is_segmentation_suite(study.get("suite")):
        return segmentation_markdown(study)
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


def segmentation_markdown(study: dict) -> str:
    """One row per variant, unknown set and score: mIoU, pixel AUROC / AP / FPR95 (mean ± std over seeds)."""
    lines = ["| variant | seeds | mIoU | unknown set | score | AUROC | AP | FPR95 |", "|---|---|---|---|---|---|---|---|"]
    for variant, by_protocol in study["rows"].items():
        for entry in by_protocol.values():
            summary = flatten(entry["summary"])
            keys = sorted({key.rsplit("/", 1)[0] for key in summary if key.count("/") == 2})
            for key in keys:
                set_name, score = key.split("/")
                cells = [variant, str(len(entry["seeds"])), fmt(summary["miou"]), set_name, score]
                cells += [fmt(summary[f"{key}/{metric}"]) for metric in SEGMENTATION_METRICS]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


if __name__ == "__main__":
    main()
