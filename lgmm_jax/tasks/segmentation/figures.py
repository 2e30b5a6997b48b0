"""Figure 3 of the paper for a segmentation run: pictures a person would rather look at than read.

For each unknown set, written by every segmentation evaluation into its output folder (the PNGs only where
`eval.figures` is on):

- `pictures_<set>.png`: one row per test image: the image, the ground-truth anomaly map (white anomaly,
  black known, grey void), the predicted segmentation (one colour per class) and the per-pixel anomaly
  map of each score of the run's head (-score, ranked within the image, bright = flagged as unknown);
- `roc_<set>.png`: the pixel-level ROC curves of every score (`AnomalyAccumulator.roc_points`);
- `pictures_<set>.npz`: the arrays of the pictures, so that two runs can be drawn side by side: `compare`
  (command line: `python -m lgmm_jax.segmentation_figures --workdirs=LGMM_RUN,SOFTMAX_RUN --output=DIR`)
  draws, per set, the image, the anomaly map, L-GMM's prediction and likelihood, and the softmax model's
  MSP (the paper's Figure 3), or every score of the runs given.
"""

from __future__ import annotations

import io
import os

import numpy as np
from etils import epath

from lgmm_jax import heads
from lgmm_jax.tasks import report

ANOMALY_COLOURS = {0: (0, 0, 0), 1: (255, 255, 255), 255: (128, 128, 128)}


def class_palette(num_classes: int) -> np.ndarray:
    """uint8 [num_classes + 1, 3]: a distinct colour per class (matplotlib's tab10/tab20), grey for void."""
    import matplotlib

    colours = matplotlib.colormaps["tab20" if num_classes > 10 else "tab10"].resampled(max(num_classes, 1))
    palette = (np.array([colours(i)[:3] for i in range(num_classes)]) * 255).astype(np.uint8)
    return np.concatenate([palette, [[128, 128, 128]]]).astype(np.uint8)


def colour_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """uint8 [H, W, 3] picture of a class map (values >= num_classes drawn grey)."""
    return class_palette(num_classes)[np.minimum(labels, num_classes)]


def colour_anomaly(anomaly: np.ndarray) -> np.ndarray:
    picture = np.zeros((*anomaly.shape, 3), np.uint8)
    for value, colour in ANOMALY_COLOURS.items():
        picture[anomaly == value] = colour
    return picture


def anomaly_intensity(score: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1]: each pixel's rank of -score within the image (1 = the least known pixel), so that
    scores of any scale draw alike."""
    order = np.argsort(np.argsort(-score.ravel(), kind="stable"), kind="stable")
    return (order / max(order.size - 1, 1)).reshape(score.shape)


def picture_columns(pictures: list[dict], columns: list[tuple[str, str]], num_classes: int):
    """(titles, rows of images) for the grid; a column is (title, key) with key 'image', 'anomaly',
    'prediction' or a score's name (`key` may be 'RUN/name' for side-by-side pictures)."""
    rows = []
    for picture in pictures:
        row = []
        for _, key in columns:
            value = picture[key]
            if key == "image":
                row.append(value)
            elif key == "anomaly":
                row.append(colour_anomaly(value))
            elif key.endswith("prediction"):
                row.append(colour_labels(value, num_classes))
            else:
                row.append(anomaly_intensity(value))
        rows.append(row)
    return [title for title, _ in columns], rows


def draw_grid(titles: list[str], rows: list[list[np.ndarray]], suptitle: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(rows), len(titles), figsize=(1.9 * len(titles), 1.9 * len(rows) + 0.4),
                                squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            axis = axes[r][c]
            axis.imshow(image, cmap="inferno" if image.ndim == 2 else None, vmin=0, vmax=1 if image.ndim == 2 else None,
                        interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(titles[c], fontsize=9)
    figure.suptitle(suptitle, fontsize=10)
    figure.tight_layout()
    return figure


def draw_roc(roc: dict[str, tuple[np.ndarray, np.ndarray]], set_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    for score, (fpr, tpr) in roc.items():
        axis.plot(fpr, tpr, label=score)
    axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    axis.set(xlabel="false positive rate (known pixels flagged)", ylabel="true positive rate (anomaly pixels caught)",
             title=f"pixel ROC: {set_name} (anomaly positive)")
    axis.legend()
    return figure


def save_arrays(folder: str, name: str, arrays: dict[str, np.ndarray]) -> str:
    """`arrays` as folder/name (.npz, compressed) through etils.epath; returns the path."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = epath.Path(folder) / name
    path.write_bytes(buffer.getvalue())
    return str(path)


def load_arrays(folder: str, name: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO((epath.Path(folder) / name).read_bytes())) as data:
        return {key: data[key] for key in data.files}


def stack_pictures(pictures: list[dict]) -> dict[str, np.ndarray]:
    return {key: np.stack([p[key] for p in pictures]) for key in pictures[0]} if pictures else {}


def write_picture_arrays(folder: str, plots) -> list[str]:
    """pictures_<set>.npz for every unknown set of `plots` (`evaluation.SegmentationPlots`) that has
    pictures: what `compare` draws, written with or without the PNGs."""
    written = []
    for set_name, pictures in plots.pictures.items():
        if pictures:
            written.append(save_arrays(folder, f"pictures_{set_name}.npz", stack_pictures(pictures)))
    return written


def write_figures(folder: str, plots) -> list[str]:
    """pictures_<set>.png and roc_<set>.png for every unknown set of `plots` (`evaluation.SegmentationPlots`)."""
    import matplotlib.pyplot as plt

    written = []
    num_classes = len(plots.label_names)
    for set_name, pictures in plots.pictures.items():
        scores = list(plots.roc[set_name])
        if pictures:
            columns = [("image", "image"), ("anomaly (GT)", "anomaly"), ("prediction", "prediction")]
            columns += [(f"{score} (-score)", score) for score in scores]
            figure = draw_grid(*picture_columns(pictures, columns, num_classes),
                               f"{plots.head}: {set_name} (bright = flagged as unknown)")
            written.append(report.save_figure(figure, folder, f"pictures_{set_name}.png"))
            plt.close(figure)
        figure = draw_roc(plots.roc[set_name], set_name)
        written.append(report.save_figure(figure, folder, f"roc_{set_name}.png"))
        plt.close(figure)
    return written


def compare(workdirs: list[str], output: str, scores_per_run: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """Side-by-side pictures of several segmentation runs on the same images (Figure 3): for each set the
    first run's image and anomaly map, then each run's prediction and scores (default: likelihood for
    L-GMM runs, MSP for softmax runs). Writes compare_<set>.png into `output`; returns the paths."""
    import json

    import matplotlib.pyplot as plt

    runs = []
    for workdir in workdirs:
        results = json.loads((epath.Path(workdir) / "results.json").read_text())
        if results.get("task") != "segmentation":
            raise ValueError(f"{workdir} is not a segmentation run's folder (its results.json has no task)")
        runs.append((workdir, results))
    os.makedirs(output, exist_ok=True)
    written = []
    for set_name in runs[0][1]["open_set"]:
        pictures, columns = None, []
        for index, (workdir, results) in enumerate(runs):
            arrays = load_arrays(workdir, f"pictures_{set_name}.npz")
            if pictures is None:
                pictures = [{"image": arrays["image"][i], "anomaly": arrays["anomaly"][i]} for i in range(len(arrays["image"]))]
                columns = [("image", "image"), ("anomaly (GT)", "anomaly")]
            head = results["head"]
            default = (heads.named(head).default_pixel_score,)
            chosen = (scores_per_run or {}).get(workdir, default)
            tag = f"{index}:{head}"
            for i, picture in enumerate(pictures):
                picture[f"{tag}/prediction"] = arrays["prediction"][i]
                for score in chosen:
                    picture[f"{tag}/{score}"] = arrays[score][i]
            columns.append((f"{head} prediction", f"{tag}/prediction"))
            columns += [(f"{head} {score}", f"{tag}/{score}") for score in chosen]
        num_classes = len(runs[0][1]["closed_set"]["iou"])
        figure = draw_grid(*picture_columns(pictures, columns, num_classes),
                           f"{set_name}: bright = flagged as unknown")
        written.append(report.save_figure(figure, output, f"compare_{set_name}.png"))
        plt.close(figure)
    return written
