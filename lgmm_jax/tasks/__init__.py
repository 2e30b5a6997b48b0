"""The tasks a run can be, each one module behind `base.Task`, picked by `config.task`.

A task says what an example is and everything that follows from it that the method does not: which
sources hold the data, how training batches are made, what shape the network takes, and how a batch
becomes each head's loss (`base.StepLosses`). The method itself (the objective, the memory bank, the
mixture), the models, the train loop, checkpoints and sharding are shared and never ask which task runs.

The table maps a name to its module and imports it only when asked, so that a light caller (an exported
model's loader) imports only the task it needs.
"""

from __future__ import annotations

import importlib

import ml_collections

TASK_MODULES = {
    "classification": "lgmm_jax.tasks.classification",
    "segmentation": "lgmm_jax.tasks.segmentation",
}
DEFAULT_TASK = "classification"  # a config written before tasks existed


def task_name(config: ml_collections.ConfigDict) -> str:
    """`config.task`, checked against the table ('classification' when the config has none)."""
    name = config.get("task", DEFAULT_TASK)
    if name not in TASK_MODULES:
        raise ValueError(f"task={name!r} is not one of {tuple(TASK_MODULES)}")
    return name


def get(config_or_name):
    """The `base.Task` of a config (its `task`) or of a task name."""
    name = config_or_name if isinstance(config_or_name, str) else task_name(config_or_name)
    if name not in TASK_MODULES:
        raise ValueError(f"task={name!r} is not one of {tuple(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name]).TASK
