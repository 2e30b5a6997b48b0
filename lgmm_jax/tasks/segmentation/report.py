"""Segmentation's report.md (Tables 5 and 6 of the paper: mIoU and per-class IoU, pixel AUROC / AP / FPR95
per anomaly set) and its summary line; its pictures are `figures`."""

from __future__ import annotations

from lgmm_jax.tasks.report import markdown_table, percent

PIXEL_METRIC_COLUMNS = (("auroc", "AUROC ↑"), ("ap", "AP ↑"), ("fpr95", "FPR95 ↓"))


def render(results: dict, with_figures: bool) -> str:
    """Markdown: mIoU / aAcc and per-class IoU (Table 5), pixel AUROC / AP / FPR95 per unknown set
    (Table 6), the rejection thresholds; `with_figures`, where the pictures and ROC curves are."""
    closed = results["closed_set"]
    names = results.get("label_names") or [str(i) for i in range(len(closed["iou"]))]
    show = lambda value: "–" if value is None else percent(value)  # noqa: E731
    parts = [
        f"# {results['head']} / {results['encoder']} on {results['protocol']} (segmentation, "
        f"{results['inference']} inference)",
        "",
        "Numbers in percent. ↑ higher is better, ↓ lower is better."
        + (" Pictures: pictures_<set>.png; pixel ROC curves: roc_<set>.png." if with_figures else ""),
        "",
        "## Closed-set segmentation (Table 5): mmseg's mIoU, void excluded",
        "",
        markdown_table(
            ["mIoU", "aAcc", "test images", "labelled pixels"],
            [[percent(closed["miou"]), percent(closed["aacc"]), str(closed["num_images"]), str(closed["num_pixels"])]],
        ),
        "",
        markdown_table(["class"] + list(names), [["IoU"] + [show(v) for v in closed["iou"]]]),
    ]
    for set_name, by_score in results["open_set"].items():
        rows = [
            [score] + [percent(values[key]) for key, _ in PIXEL_METRIC_COLUMNS]
            for score, values in by_score.items()
            if isinstance(values, dict)
        ]
        first = next(v for v in by_score.values() if isinstance(v, dict))
        parts += [
            "",
            f"## Open-set segmentation: {set_name} ({by_score['num_images']} images, {first['num_anomaly']} anomaly "
            f"and {first['num_known']} known pixels; Table 6, anomaly positive)",
            "",
            markdown_table(["score"] + [title for _, title in PIXEL_METRIC_COLUMNS], rows),
        ]
    parts += [
        "",
        "## Rejection thresholds (keep 95% of held-out known pixels)",
        "",
        markdown_table(["score", "tau"], [[k, f"{v:.4g}"] for k, v in results["thresholds"].items()]),
    ]
    return "\n".join(parts) + "\n"


def summary_line(results: dict) -> str:
    """One line: mIoU, aAcc and the pixel AUROC / AP / FPR95 of each score on each unknown set."""
    parts = [f"mIoU {percent(results['closed_set']['miou'])}% aAcc {percent(results['closed_set']['aacc'])}%"]
    for set_name, by_score in results["open_set"].items():
        values = ", ".join(
            f"{score} {percent(v['auroc'])}/{percent(v['ap'])}/{percent(v['fpr95'])}"
            for score, v in by_score.items() if isinstance(v, dict)
        )
        parts.append(f"AUROC/AP/FPR95 on {set_name}: {values}")
    return "; ".join(parts)
