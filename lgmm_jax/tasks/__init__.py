"""The tasks a run can be, each one folder behind `base.Task`, picked by `config.task`.

A task says what an example is and everything that follows from it that the method does not: which
sources hold the data, how training batches are made, what shape the network takes, how a batch becomes
each head's loss (`heads.base.StepLosses`), how a trained model is evaluated, reported and exported, and how an
export loads again. The method itself (the objective, the memory bank, the mixture), the models, the
train loop, checkpoints and sharding are shared and never ask which task runs.

    tasks/<name>/task.py       TASK, the `base.Task` (imports the task's heavy parts: data, evaluator)
    tasks/<name>/exported.py   load(description, path, batch_size): the exported model class (light)

The table maps a name to its folder and imports a module only when asked, so that a light caller (an
exported model's loader) imports only the part of the task it needs.
"""

from __future__ import annotations

import importlib

import ml_collections

TASK_PACKAGES = {
    "classification": "lgmm_jax.tasks.classification",
    "segmentation": "lgmm_jax.tasks.segmentation",
}
DEFAULT_TASK = "classification"  # a config or an export written before tasks existed


def checked_name(name: str) -> str:
    if name not in TASK_PACKAGES:
        raise ValueError(f"task={name!r} is not one of {tuple(TASK_PACKAGES)}")
    return name


def task_name(config: ml_collections.ConfigDict) -> str:
    """`config.task`, checked against the table ('classification' when the config has none)."""
    return checked_name(config.get("task", DEFAULT_TASK))


def get(config_or_name):
    """The `base.Task` of a config (its `task`) or of a task name."""
    name = checked_name(config_or_name) if isinstance(config_or_name, str) else task_name(config_or_name)
    return importlib.import_module(f"{TASK_PACKAGES[name]}.task").TASK


def exported(description: dict):
    """The module that loads an export whose model.json is `description` (its "task")."""
    name = checked_name(description.get("task", DEFAULT_TASK))
    return importlib.import_module(f"{TASK_PACKAGES[name]}.exported")
