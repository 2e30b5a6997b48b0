"""Closed-set and open-set evaluation of a trained model (library and CLI).

    python -m lgmm_jax.evaluate --workdir=DIR                      # the latest checkpoint of a training run
    python -m lgmm_jax.evaluate --model=EXPORTED --output=DIR      # an exported model (lgmm_jax.export)
    python -m lgmm_jax.evaluate --workdir=DIR --ood_datasets=folder=/data/LSUN_resize --output=DIR2
    python -m lgmm_jax.evaluate --workdir=DIR --config.eval_batch_size=64   # any key of the run's config
    python -m lgmm_jax.evaluate --workdir=DIR --config.eval.figures=true    # PNGs for a run trained without

The run's task evaluates (`lgmm_jax.tasks.<task>.evaluation`): a classifier gets top-1/top-5 on the known
test split and, per unknown set, AUROC / FPR95 / AUPR of every score of its head, with every fitted
statistic fitted on known training or validation data only; a segmenter gets mIoU / aAcc / per-class IoU
and pixel AUROC / AP / FPR95 per anomaly set. Both write results.json, report.md and their figures into
the output folder (a classifier also scores.npz: every example's score on the validation split, the known
test split and each unknown set, `"<set>/<score>"`). The figures are PNGs drawn with matplotlib, left out
where the config says `eval.figures=False`. The evaluation of a workdir or an export follows the run's own
config there as everywhere, so a run trained without figures is evaluated without them until
`--config.eval.figures=true` asks for them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
from absl import flags
from etils import epath

from lgmm_jax import checkpointing, cli, experiment, forward, inference, restore, tasks
from lgmm_jax.sharding import make_mesh

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


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "a training run's folder: evaluate its latest checkpoint")
    flags.DEFINE_string("model", None, "an exported model's folder (python -m lgmm_jax.export)")
    flags.DEFINE_string("output", None, "where results.json, report.md and plots go (default: --workdir)")
    flags.DEFINE_multi_string(
        "ood_datasets", [], "extra unknown set, 'dataset:split' or 'folder=PATH'; repeat for several"
    )
    flags.DEFINE_string("data_dir", None, "read the data from here instead of the config's data_dir")
    flags.DEFINE_bool(
        "distributed", None, "jax.distributed.initialize() (default: when a cluster is detected)"
    )
    cli.define_config_overrides("only --config.KEY=VALUE overrides of the run's config.json")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}: pass options as --flag=value")
    if bool(FLAGS.workdir) == bool(FLAGS.model):
        cli.fail("pass exactly one of --workdir=DIR (a training run) or --model=DIR (an exported model)")
    if FLAGS.model and not FLAGS.output:
        cli.fail("--model needs --output=DIR: the exported model's folder is left as it is")
    cli.quiet_libraries()
    cli.maybe_initialize_distributed(FLAGS.distributed)
    overrides = {
        "ood_datasets": tuple(FLAGS.ood_datasets),
        "data_dir": FLAGS.data_dir,
        "config_overrides": cli.config_overrides(),
    }
    if FLAGS.workdir:
        return cli.run_guarded(lambda: evaluate_workdir(FLAGS.workdir, FLAGS.output, **overrides))
    return cli.run_guarded(lambda: evaluate_export(FLAGS.model, FLAGS.output, **overrides))


if __name__ == "__main__":
    cli.define_flags_or_fail(define_flags, sys.argv)
    sys.exit(cli.run_app(main))
