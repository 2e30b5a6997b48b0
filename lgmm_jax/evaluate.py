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

import sys

from absl import flags

from lgmm_jax.runtime import cli
from lgmm_jax.training.evaluation import evaluate_export, evaluate_workdir


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
