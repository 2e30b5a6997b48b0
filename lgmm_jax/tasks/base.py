"""The interface every task implements (`lgmm_jax.tasks`).

A task is an object with the methods of `Task`; its folder's `task` module exposes it as `TASK`. The heads'
train steps take a task's `heads.base.StepLosses` and so never branch on the task: the L-GMM step runs the
encoder and hands its latents to `lgmm_objective`, the softmax step runs the classifier and hands its logits
to `softmax_loss`. Evaluation, export and the report likewise ask the task (`evaluate`, `write_outputs`,
`summary_line`, `export_contents`); an export loads through the task's `exported` module.
"""

from __future__ import annotations

import abc
from typing import Any

import ml_collections

from lgmm_jax.data import protocols
from lgmm_jax.data.protocols import DataRef, OpenSetProtocol
from lgmm_jax.heads.base import StepLosses


class Task(abc.ABC):
    """What a task decides (see `lgmm_jax.tasks`)."""

    name: str
    # The training methods (`config.method`, `experiment.METHODS`) the task has.
    methods: tuple[str, ...] = ("library", "paper")

    @abc.abstractmethod
    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Raise ValueError naming the key when the config does not fit this task (its encoder, its keys)."""

    @abc.abstractmethod
    def data_source(self, config: ml_collections.ConfigDict, ref_or_name, split: str | None = None):
        """The source of a `DataRef`, or of a dataset name and split, read as the config says (its data_dir,
        the options of sources that have some)."""

    @abc.abstractmethod
    def train_stream(self, config: ml_collections.ConfigDict, protocol, source, preset: str):
        """This process's part of each global training batch, resumable through get_state / set_state."""

    @abc.abstractmethod
    def model_input_shape(self, config: ml_collections.ConfigDict, train_source, preset: str) -> tuple:
        """(H, W, C) of the images the network takes in training."""

    @abc.abstractmethod
    def step_losses(self, config: ml_collections.ConfigDict, num_classes: int) -> StepLosses:
        """The losses the train steps apply to this task's batches."""

    @abc.abstractmethod
    def own_split_name(self, ref: DataRef) -> str:
        """The results.json key of an unknown set that is a split of the training dataset itself."""

    def unknown_set_names(self, protocol: OpenSetProtocol) -> list[str]:
        """The results.json key of each of the protocol's unknown sets (`protocols.unknown_set_names`)."""
        return protocols.unknown_set_names(protocol, self.own_split_name)

    @abc.abstractmethod
    def evaluate(self, config: ml_collections.ConfigDict, model, variables: dict, protocol: OpenSetProtocol,
                 mesh) -> tuple[dict, Any]:
        """(results.json's dict, what `write_outputs` draws from) for a model's variables."""

    @abc.abstractmethod
    def write_outputs(self, folder: str, results: dict, plots, with_figures: bool) -> None:
        """report.md, the task's arrays and, `with_figures`, its PNG figures into `folder` (results.json is
        written by the caller). Without figures matplotlib is not imported and report.md names no PNG."""

    @abc.abstractmethod
    def summary_line(self, results: dict) -> str:
        """One line of the headline numbers, printed after an evaluation."""

    @abc.abstractmethod
    def export_contents(self, trained, origin: dict, score_name: str | None, mesh, alpha: float,
                        calibration: str):
        """`exporting.ExportContents` of a `restore.TrainedModel`: model.json's description, calibrated on
        the validation split at `alpha`, and the files beside it (loaded again by the task's `exported`)."""
