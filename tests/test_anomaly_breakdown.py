"""bench/anomaly_breakdown.py's split pixel metrics against a hand computation, and its whole-set AUROC /
AP against the run's own evaluation (`ood.segmentation_metrics`, a second computation)."""
import json

import numpy as np
import pytest

from tests import bench_scripts
from tests.test_cli import segmentation_reference_run

LABEL_NAMES = ("background", "shirt")


@pytest.fixture(scope="module")
def breakdown_script():
    return bench_scripts.load("anomaly_breakdown")


def test_the_split_metrics_are_the_hand_computed_ones(breakdown_script):
    # 3 anomaly pixels, 3 known shirt pixels interleaved with them, 4 known background pixels above all,
    # and one void pixel whose lowest score would lead every ranking if it were not dropped
    anomaly = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 255])
    label = np.array([255, 255, 255, 1, 1, 1, 0, 0, 0, 0, 255])
    score = np.array([0.1, 0.2, 0.3, 0.15, 0.25, 0.9, 1.0, 1.1, 1.2, 1.3, -5.0])
    prediction = np.array([0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    result = breakdown_script.breakdown(anomaly, label, prediction, score, LABEL_NAMES)

    # anomaly pixels scored below a known pixel, out of all pairs: vs shirt 3 + 2 + 1 of 9, vs background all 12
    assert result["vs_shirt"] == pytest.approx(6 / 9)
    assert result["vs_background"] == pytest.approx(1.0)
    assert result["auroc"] == pytest.approx(18 / 21)
    # ranked from the lowest score: A(0.1) s A(0.2) s A(0.3): precision 1/1, 2/3, 3/5 at the anomalies
    assert result["ap"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # the 3 lowest scores: two anomaly pixels and one shirt pixel
    assert result["top_anomaly"] == pytest.approx(2 / 3)
    assert result["top_shirt"] == pytest.approx(1 / 3) and result["top_background"] == 0.0
    assert result["predicted_background"] == pytest.approx(1 / 3)
    assert result["predicted_shirt"] == pytest.approx(2 / 3)


@pytest.mark.slow  # the testbed's reference run, which the slow tier trains anyway
def test_its_whole_set_metrics_are_the_runs_evaluation(breakdown_script, tmp_path_factory):
    run = segmentation_reference_run(tmp_path_factory)
    evaluated = json.loads((run / "results.json").read_text())["open_set"]["far"]
    report = breakdown_script.diagnose(str(run), "far")
    assert report["label_names"][0] == "background" and len(report["label_names"]) == 8
    for name, split in report["scores"].items():
        assert split["auroc"] == pytest.approx(evaluated[name]["auroc"], abs=1e-9)
        assert split["ap"] == pytest.approx(evaluated[name]["ap"], abs=1e-9)
        top = [value for key, value in split.items() if key.startswith("top_")]
        assert sum(top) == pytest.approx(1.0)
    with pytest.raises(SystemExit, match="--set=nowhere.*near"):
        breakdown_script.diagnose(str(run), "nowhere")
