"""Evaluating a trained model's variables and writing what the evaluation found (`lgmm_jax.evaluate` is its
command line; training calls `evaluate_and_write` at its end).

The run's task evaluates (`lgmm_jax.tasks.<task>.evaluation`); this module restores what it evaluates (a
workdir's latest checkpoint or an export) and writes results.json, report.md, scores and figures.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from etils import epath

from lgmm_jax import tasks
from lgmm_jax.deploy import forward, inference
from lgmm_jax.runtime import checkpointing
from lgmm_jax.runtime.sharding import make_mesh
from lgmm_jax.training import experiment, restore


RESULTS_FILE = "results.json"


def evaluate(config, model, variables, protocol, mesh) -> tuple[dict[str, Any], Any]:
    """Every number of results.json for a model's variables, by the config's task, and what its figures
    are drawn from (`tasks.base.Task.evaluate`)."""
    return tasks.get(config).evaluate(config, model, variables, protocol, mesh)


def draws_figures(config) -> bool:
    """`eval.figures`: whether evaluation draws its PNG figures (True where a config.json saved before the
    key existed lacks it)."""
    return bool(config.eval.get("figures", True))


def write_results(config, folder: str, results: dict, plots) -> None:
    """results.json, and the task's report.md, figures (`eval.figures`) and arrays (chief process only)."""
    if jax.process_index() != 0:
        return
    epath.Path(folder).mkdir(parents=True, exist_ok=True)  # local or gs://
    (epath.Path(folder) / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    tasks.get(config).write_outputs(folder, results, plots, with_figures=draws_figures(config))


def evaluate_variables_and_write(config, folder, model, variables, protocol, mesh) -> dict[str, Any]:
    """evaluate, write_results into `folder`, and print the summary line; returns results.json's dict."""
    results, plots = evaluate(config, model, variables, protocol, mesh)
    write_results(config, folder, results, plots)
    if jax.process_index() == 0:
        print(tasks.get(config).summary_line(results), flush=True)
        print(f"results: {os.path.join(folder, RESULTS_FILE)}", flush=True)
    return results


def evaluate_and_write(config, workdir, model, state, protocol, mesh) -> dict[str, Any]:
    """What training runs at its end: evaluate the final TrainState and write into the workdir."""
    return evaluate_variables_and_write(config, workdir, model, forward.model_variables(state), protocol, mesh)


def evaluate_workdir(workdir: str, output: str | None = None, *, ood_datasets=(), data_dir=None,
                     config_overrides=None) -> dict:
    """Evaluate the latest checkpoint of a training run; write results.json, report.md, plots to `output`
    (default: the workdir)."""
    mesh = make_mesh()
    config = restore.with_overrides(checkpointing.read_config(workdir), ood_datasets, data_dir, config_overrides)
    trained = restore.restore_workdir(workdir, mesh, config)
    return evaluate_variables_and_write(
        config, output or workdir, trained.model, trained.variables, trained.protocol, mesh
    )


def evaluate_export(path: str, output: str, *, ood_datasets=(), data_dir=None, config_overrides=None) -> dict:
    """Evaluate an exported model (`lgmm_jax.export`) on the data its config names; same numbers as
    `evaluate_workdir` on the checkpoint it was exported from."""
    exported = inference.load(path)
    mesh = make_mesh()
    config = restore.with_overrides(exported.config, ood_datasets, data_dir, config_overrides)
    protocol = experiment.resolve_protocol(config)
    return evaluate_variables_and_write(config, output, exported.module, exported.variables, protocol, mesh)
