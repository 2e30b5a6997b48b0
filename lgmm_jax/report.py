"""report.md and PNG plots from an evaluation's results (tables shaped like the paper's Tables 3, 4, 10)."""

from __future__ import annotations

import io

import numpy as np
from etils import epath

METRIC_COLUMNS = (
    ("auroc", "AUROC ↑"),
    ("fpr95", "FPR95 ↓"),
    ("fpr95_ood_positive", "FPR95 (OOD+) ↓"),
    ("aupr_in", "AUPR-In ↑"),
    ("aupr_out", "AUPR-Out ↑"),
    ("detection_error", "Det. err ↓"),
)


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(results: dict) -> str:
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
    for set_name, by_score in results["open_set"].items():
        rows = [
            [score] + [percent(values[key]) for key, _ in METRIC_COLUMNS]
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
        "",
        "## Rejection thresholds (keep 95% of held-out known data)",
        "",
        markdown_table(["score", "tau"], [[k, f"{v:.4g}"] for k, v in results["thresholds"].items()]),
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
    """One line: top-1 and the AUROC of each score on each unknown set."""
    parts = [f"top-1 {percent(results['closed_set']['top1'])}%"]
    for set_name, by_score in results["open_set"].items():
        aurocs = ", ".join(
            f"{score} {percent(v['auroc'])}" for score, v in by_score.items() if isinstance(v, dict)
        )
        parts.append(f"AUROC vs {set_name}: {aurocs}")
    if "components" in results:
        parts.append(f"effective K {results['components']['mean_effective_components']:.2f}")
    return "; ".join(parts)


def write_report(folder: str, results: dict) -> str:
    path = epath.Path(folder) / "report.md"
    path.write_text(render_report(results))
    return str(path)


def save_figure(figure, folder: str, name: str) -> str:
    """PNG bytes through etils.epath, so a gs:// workdir works like a local one."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    path = epath.Path(folder) / name
    path.write_bytes(buffer.getvalue())
    return str(path)


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
            axis.hist(known[score], bins=bins, alpha=0.6, density=True, label="known")
            axis.hist(unknown[score], bins=bins, alpha=0.6, density=True, label=set_name)
            axis.set(title=score, xlabel="score")
            axis.legend()
        written.append(save_figure(figure, folder, f"hist_{set_name}.png"))
        plt.close(figure)
    return written
