"""What every task's export is made of: the score it deploys, its conformal calibration, and the
folder, written whole or not at all (`lgmm_jax.export` is the command line; each task describes its own
model in `lgmm_jax.tasks.<task>.export`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from lgmm_jax.deploy import inference
from lgmm_jax.ood import conformal


def check_output_is_free(output: str) -> None:
    """Raise FileExistsError when `output` exists and is not an empty folder."""
    if os.path.exists(output) and not (os.path.isdir(output) and not os.listdir(output)):
        raise FileExistsError(
            f"--output {output} already exists and is not empty: pass a new --output or delete it"
        )


def choose_score(head: str, score_name: str | None, default: str, deployable: tuple[str, ...], kind: str) -> str:
    """The requested score, or the head's `default`; one of the head's `deployable` scores. `head`, `kind`:
    its name and what is deployed, for the message ('model', 'segmenter')."""
    score_name = score_name or default
    if score_name not in deployable:
        raise ValueError(
            f"--score={score_name} is not a score of a deployed {head} {kind}: use one of {', '.join(deployable)}"
        )
    return score_name


class ExportContents(NamedTuple):
    """What a task writes into an export folder besides the variables: model.json's content, arrays
    (name -> array, saved as .npy) and binary files (name -> bytes)."""

    description: dict[str, Any]
    files: dict[str, np.ndarray]
    binaries: dict[str, bytes]


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Held-out known-class scores (and the class predicted for each) that the threshold is set on."""

    scores: np.ndarray
    classes: np.ndarray
    kind: str
    alpha: float

    def description(self, num_classes: int) -> dict[str, Any]:
        """model.json's threshold and calibration entries (`conformal`)."""
        entries = {"threshold": conformal.threshold(self.scores, self.alpha), "alpha": self.alpha,
                   "calibration": self.kind, "threshold_tpr": 1.0 - self.alpha,
                   "calibration_files": list(inference.CALIBRATION_FILES)}
        if self.kind == "class_conditional":
            entries["class_thresholds"] = conformal.class_thresholds(
                self.scores, self.classes, num_classes, self.alpha).tolist()
        return entries

    def files(self) -> dict[str, np.ndarray]:
        order = np.argsort(self.scores, kind="stable")
        scores_file, classes_file = inference.CALIBRATION_FILES
        return {scores_file: self.scores[order], classes_file: self.classes[order].astype(np.int32)}


def calibration_of(scores, classes, kind: str, alpha: float) -> Calibration:
    if kind not in conformal.CALIBRATIONS:
        raise ValueError(f"--calibration={kind} is not one of {', '.join(conformal.CALIBRATIONS)}")
    return Calibration(np.asarray(scores, np.float64), np.asarray(classes, np.int64), kind,
                       conformal.check_alpha(alpha))


def write_export(output: str, variables: dict, description: dict, files: dict[str, np.ndarray] | None = None,
                 binaries: dict[str, bytes] | None = None) -> None:
    """Write variables/, model.json, `files` (name -> array, .npy) and `binaries` (name -> bytes) into a
    temporary sibling of `output`, then rename it to `output`."""
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.partial-", dir=parent)
    try:
        arrays = {name: jax.device_get(tree) for name, tree in variables.items() if jax.tree.leaves(tree)}
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(staging, inference.VARIABLES_DIR), arrays)
        with open(os.path.join(staging, inference.MODEL_FILE), "w") as f:
            json.dump(description, f, indent=2)
        for name, array in (files or {}).items():
            np.save(os.path.join(staging, name), array)
        for name, data in (binaries or {}).items():
            with open(os.path.join(staging, name), "wb") as f:
                f.write(data)
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        if os.path.isdir(output):
            os.rmdir(output)  # empty (checked): rename replaces only an absent or empty folder
        os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
