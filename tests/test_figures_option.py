"""`eval.figures`: an evaluation's PNG figures, on by default, off for runs whose figures nobody looks at.

End to end: the session's shared default run (`tests.shared_runs.default_config`, figures off, made once
per session) wrote no PNG and its report.md names none. Then each task's outputs written with and without
figures from the same numbers, with no model run: the shared run's results.json and scores.npz for classification, a few
made-up pixels for segmentation. Without figures matplotlib is never imported (importing it fails there).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from lgmm_jax.training import evaluation

from lgmm_jax.tasks.classification.evaluation import ScoreSets
from lgmm_jax.tasks.segmentation.evaluation import SegmentationPlots
from tests.shared_runs import shared_default_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pngs(folder: Path) -> list[str]:
    """The names of the PNG files below `folder`, after checking that each is a whole PNG."""
    paths = sorted(folder.rglob("*.png"))
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC, path
        with Image.open(path) as image:
            image.verify()
    return [path.name for path in paths]


def with_figures(config: ml_collections.ConfigDict, figures: bool) -> ml_collections.ConfigDict:
    """A copy of `config` with `eval.figures` set."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.eval.figures = figures
    return config


def score_sets(path: Path) -> ScoreSets:
    """The `ScoreSets` a scores.npz was written from (`ScoreSets.arrays` read back)."""
    tables: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as stored:
        for key in stored.files:
            set_name, score = key.rsplit("/", 1)
            tables.setdefault(set_name, {})[score] = stored[key]
    validation, known = tables.pop("validation"), tables.pop("test")
    known_for_set = {name.removeprefix("test_vs_"): tables.pop(name)
                     for name in list(tables) if name.startswith("test_vs_")}
    return ScoreSets(validation, known, tables, known_for_set)


def classification_case(request):
    """(config, results, plots, the PNGs figures add) of the shared default run."""
    run = shared_default_run(request.getfixturevalue("tmp_path_factory"))
    config = ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))
    results = json.loads((run / "results.json").read_text())
    expected = [f"{kind}_{name}.png" for name in results["open_set"] for kind in ("hist", "roc")]
    return config, results, score_sets(run / "scores.npz"), expected


def segmentation_case(request):
    """(config, results, plots, the PNGs figures add) of a made-up segmentation evaluation: one unknown
    set, one score, one 4x4 picture."""
    import configs.scenes

    rng = np.random.default_rng(0)
    results = {
        "task": "segmentation", "protocol": "scenes", "dataset": "scenes", "head": "lgmm",
        "encoder": "segformer_b0", "inference": "whole", "label_names": ["background", "shirt"],
        "closed_set": {"miou": 0.5, "aacc": 0.75, "iou": [0.5, 0.5], "num_images": 1, "num_pixels": 16},
        "thresholds": {"likelihood": -1.0},
        "open_set": {"near": {"num_images": 1, "likelihood": {"auroc": 0.9, "ap": 0.8, "fpr95": 0.3,
                                                              "num_anomaly": 4, "num_known": 12}}},
    }
    picture = {"image": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
               "anomaly": rng.integers(0, 2, (4, 4), dtype=np.uint8),
               "prediction": rng.integers(0, 2, (4, 4), dtype=np.int32),
               "likelihood": rng.normal(size=(4, 4)).astype(np.float32)}
    plots = SegmentationPlots(roc={"near": {"likelihood": (np.linspace(0, 1, 5), np.linspace(0, 1, 5) ** 0.5)}},
                              pictures={"near": [picture]}, label_names=("background", "shirt"), head="lgmm")
    return configs.scenes.get_config(), results, plots, ["pictures_near.png", "roc_near.png"]


CASES = {"classification": classification_case, "segmentation": segmentation_case}
ARRAYS = {"classification": "scores.npz", "segmentation": "pictures_near.npz"}  # written either way


def test_a_run_without_figures_writes_no_png_and_its_report_names_none(tmp_path_factory):
    run = shared_default_run(tmp_path_factory)
    assert json.loads((run / "config.json").read_text())["eval"]["figures"] is False
    assert pngs(run) == []
    report = (run / "report.md").read_text()
    assert "top-1" in report and ".png" not in report
    assert (run / "scores.npz").exists()


def test_figures_are_on_by_default_and_for_a_config_saved_before_the_option():
    import configs.default

    assert configs.default.get_config().eval.figures is True
    assert evaluation.draws_figures(ml_collections.ConfigDict({"eval": {"scores": ()}}))


@pytest.mark.parametrize("figures", [True, False], ids=["figures", "no_figures"])
@pytest.mark.parametrize("task", sorted(CASES))
def test_the_outputs_hold_the_figures_only_when_asked_and_the_report_names_only_those(
        task, figures, request, tmp_path, monkeypatch):
    config, results, plots, expected = CASES[task](request)
    if not figures:
        for name in ("matplotlib", "matplotlib.pyplot"):  # any import of matplotlib now fails
            monkeypatch.setitem(sys.modules, name, None)
    evaluation.write_results(with_figures(config, figures), str(tmp_path), results, plots)
    assert pngs(tmp_path) == (sorted(expected) if figures else [])
    assert (tmp_path / ARRAYS[task]).exists()
    assert json.loads((tmp_path / "results.json").read_text()) == results
    # Segmentation's report says where its figures are; classification's names no file.
    assert (".png" in (tmp_path / "report.md").read_text()) == (figures and task == "segmentation")
