"""Peak host memory and time of the segmentation metrics at Fishyscapes Lost & Found's size.

Fishyscapes L&F val is 100 images of 1024 x 2048 = 210M pixels. This script feeds that many pixels, image
by image, to `lgmm_jax.ood.segmentation_metrics.AnomalyAccumulator` (one score, float32, the anomaly the
positive class) and to a 19-class `ConfusionAccumulator` (mIoU), then takes both results. The worst case
for memory: no pixel is void (every pixel's score is kept). Synthetic data: 1% of the pixels are
anomalies, scores are float32 normals shifted by 1.5 for known pixels; predictions are right 80% of the time.

    python bench/segmentation_metrics.py                    # 210M pixels, ~2-3 min on 2 CPU cores
    python bench/segmentation_metrics.py --images 10        # a tenth, with the numbers scaled to 100 images

Prints one JSON line: pixel counts, seconds spent generating the data (not the metrics' cost), in
`update` and in `result` (open set: pooling, two in-place sorts and the searchsorted sweeps), the peak
resident memory of the process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the resident memory
after the imports, and, when fewer than 100 images ran, a linear extrapolation of time and memory to 100.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from lgmm_jax.ood import segmentation_metrics as seg

FISHYSCAPES_IMAGES = 100
NUM_CLASSES = 19


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic_image(rng: np.random.Generator, height: int, width: int, anomaly_share: float):
    """float32 scores, uint8 anomaly map (no void), int32 predictions and uint8 labels of one image."""
    anomaly = (rng.random((height, width), dtype=np.float32) < anomaly_share).astype(np.uint8)
    scores = rng.standard_normal((height, width), dtype=np.float32)
    scores += np.float32(1.5) * (anomaly == 0)
    label = rng.integers(0, NUM_CLASSES, (height, width), dtype=np.uint8)
    wrong = rng.random((height, width), dtype=np.float32) < 0.2
    prediction = np.where(wrong, (label + 1) % NUM_CLASSES, label).astype(np.int32)
    return scores, anomaly, prediction, label


def run(images: int, height: int, width: int, anomaly_share: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    baseline = peak_rss_gib()
    anomaly_metrics, closed_set = seg.AnomalyAccumulator(), seg.ConfusionAccumulator(NUM_CLASSES)
    generate_s = update_s = 0.0
    for _ in range(images):
        start = time.perf_counter()
        scores, anomaly, prediction, label = synthetic_image(rng, height, width, anomaly_share)
        middle = time.perf_counter()
        anomaly_metrics.update(scores, anomaly)
        closed_set.update(prediction, label)
        update_s += time.perf_counter() - middle
        generate_s += middle - start
    del scores, anomaly, prediction, label
    start = time.perf_counter()
    open_set = anomaly_metrics.result()
    open_set_result_s = time.perf_counter() - start
    start = time.perf_counter()
    miou = closed_set.result()["miou"]
    closed_set_result_s = time.perf_counter() - start
    peak = peak_rss_gib()
    report = {
        "images": images, "height": height, "width": width, "pixels": images * height * width,
        "anomaly_share": anomaly_share,
        "num_known": open_set["num_known"], "num_anomaly": open_set["num_anomaly"],
        "auroc": round(open_set["auroc"], 6), "ap": round(open_set["ap"], 6),
        "fpr95": round(open_set["fpr95"], 6), "miou": round(miou, 6),
        "generate_s": round(generate_s, 2), "update_s": round(update_s, 2),
        "open_set_result_s": round(open_set_result_s, 2), "closed_set_result_s": round(closed_set_result_s, 4),
        "baseline_rss_gib": round(baseline, 3), "peak_rss_gib": round(peak, 3),
    }
    if images < FISHYSCAPES_IMAGES:
        scale = FISHYSCAPES_IMAGES / images
        report["extrapolated_to_100_images"] = {
            # update is linear in the pixels; the sorts are n log n, so scaling them linearly is optimistic
            # by log(100 n) / log(n) (about 1.1x at these sizes).
            "metrics_s": round((update_s + open_set_result_s) * scale * 1.1, 1),
            "peak_rss_gib": round(baseline + (peak - baseline) * scale, 2),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=FISHYSCAPES_IMAGES)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--anomaly-share", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.images, args.height, args.width, args.anomaly_share, args.seed)))


if __name__ == "__main__":
    main()
