"""Classification's report.md (tables shaped like the paper's Tables 1, 3, 4 and 10), its summary line and
its plots (per unknown set, every score's ROC curve and its known / unknown histograms)."""

from __future__ import annotations

import numpy as np

from lgmm_jax.tasks.report import markdown_table, percent, save_figure

METRIC_COLUMNS = (
    ("auroc", "AUROC ↑"),
    ("fpr95", "FPR95 ↓"),
    ("fpr95_ood_positive", "FPR95 (OOD+) ↓"),
    ("aupr_in", "AUPR-In ↑"),
    ("aupr_out", "AUPR-Out ↑"),
    ("detection_error", "Det. err ↓"),
)


def render(results: dict) -> str:
    """The markdown text: closed-set accuracy, one open-set table per unknown set, component usage."""
    closed = results["closed_set"]
    parts = [
        f"# {results['head']} / {results['encoder']} on {results['protocol']}",
        "",
        "Numbers in percent. ↑ higher is better, ↓ lower is better.",
        "",
        "## Closed-set recognition (Table 1/8)",
        "",
        markdown_table(
            ["top-1", "top-5", "test examples"],
            [[percent(closed["top1"]), percent(closed["top5"]), str(closed["num_examples"])]],
        ),
    ]
    tuned_on_ood = results.get("tuned_on_ood", {})
    for set_name, by_score in results["open_set"].items():
        rows = [
            [f"{score} †" if score in tuned_on_ood else score] + [percent(values[key]) for key, _ in METRIC_COLUMNS]
            for score, values in by_score.items()
            if isinstance(values, dict)
        ]
        parts += [
            "",
            f"## Open-set recognition: known test vs {set_name} ({by_score['num_examples']} unknown; Tables 3, 4, 10)",
            "",
            markdown_table(["score"] + [title for _, title in METRIC_COLUMNS], rows),
        ]
        parts += [
            f"\n† uses OOD data: {score}'s hyper-parameters were chosen on {chosen[set_name]['held_out']} images "
            f"of {set_name} (temperature {chosen[set_name]['temperature']:g}, step {chosen[set_name]['epsilon']:g}), "
            f"scored on the other {chosen[set_name]['scored']}"
            for score, chosen in tuned_on_ood.items() if set_name in chosen
        ]
    parts += [
        "",
        "## Rejection thresholds (keep 95% of held-out known data)",
        "",
        markdown_table(["score", "tau"], [[k, f"{v:.4g}"] for k, v in results["thresholds"].items()]),
    ]
    if "conformal" in results:
        checked = results["conformal"]
        parts += [
            "",
            f"## Conformal rejection at alpha = {checked['alpha']:g} (threshold set on the validation split, as "
            "an export deploys it; the share of known test data rejected should be at most alpha)",
            "",
            markdown_table(["score", "tau", "known test rejected", "worst class"],
                           [[name, f"{c['threshold']:.4g}", percent(c["rejected"]),
                             percent(max(r for r in c["rejected_per_class"] if r is not None))]
                            for name, c in checked["scores"].items()]),
        ]
    if "components" in results:
        effective = results["components"]["effective_components_per_class"]
        parts += [
            "",
            "## Mixture components in use (exp entropy of hard usage on known test latents)",
            "",
            f"Mean effective components per class: {results['components']['mean_effective_components']:.2f}",
            "",
            markdown_table(
                ["class"] + [str(i) for i in range(len(effective))],
                [["effective K"] + [f"{e:.2f}" for e in effective]],
            ),
        ]
    return "\n".join(parts) + "\n"


def summary_line(results: dict) -> str:
    """One line: top-1, the AUROC of each score on each unknown set, the effective number of components."""
    parts = [f"top-1 {percent(results['closed_set']['top1'])}%"]
    for set_name, by_score in results["open_set"].items():
        aurocs = ", ".join(
            f"{score} {percent(v['auroc'])}" for score, v in by_score.items() if isinstance(v, dict)
        )
        parts.append(f"AUROC vs {set_name}: {aurocs}")
    if "components" in results:
        parts.append(f"effective K {results['components']['mean_effective_components']:.2f}")
    return "; ".join(parts)


def write_plots(folder: str, plots: dict[str, tuple[dict, dict]]) -> list[str]:
    """For each unknown set: ROC curves of every score, and histograms of known vs unknown scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    written = []
    for set_name, (known, unknown) in plots.items():
        figure, axis = plt.subplots(figsize=(5, 5))
        for score in known:
            is_known = np.r_[np.ones(len(known[score])), np.zeros(len(unknown[score]))]
            fpr, tpr, _ = roc_curve(is_known, np.r_[known[score], unknown[score]])
            axis.plot(fpr, tpr, label=score)
        axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        axis.set(xlabel="false positive rate (unknown accepted)", ylabel="true positive rate (known kept)",
                 title=f"ROC: known vs {set_name}")
        axis.legend()
        written.append(save_figure(figure, folder, f"roc_{set_name}.png"))
        plt.close(figure)

        names = list(known)
        figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
        for axis, score in zip(axes[0], names):
            values = np.r_[known[score], unknown[score]]
            bins = np.linspace(np.percentile(values, 0.5), np.percentile(values, 99.5), 50)
            # Outlines (one path per histogram, not a patch per bin): the same densities, drawn fast.
            axis.hist(known[score], bins=bins, density=True, histtype="step", linewidth=1.5, label="known")
            axis.hist(unknown[score], bins=bins, density=True, histtype="step", linewidth=1.5, label=set_name)
            axis.set(title=score, xlabel="score")
            axis.legend()
        written.append(save_figure(figure, folder, f"hist_{set_name}.png"))
        plt.close(figure)
    return written
