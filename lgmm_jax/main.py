"""Train and evaluate L-GMM or its softmax counterpart.

    python -m lgmm_jax.main --config=configs/cifar100.py --workdir=/tmp/run --config.batch_size=64

Without --config the default (scikit-learn digits, bundled) runs. A rerun of the same command resumes
from the latest checkpoint in the workdir, with the numbers of a run that never stopped. SIGTERM (a
preemption notice) checkpoints and exits with status 0. On a pod or cluster (Cloud TPU, SLURM `srun`,
`mpirun`, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) every process runs this same
command and `jax.distributed` joins them; `--distributed` / `--nodistributed` overrides the detection.
Mistakes in the input end with one `error: ...` line on stderr and a non-zero status.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from lgmm_jax.runtime import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", cli.DEFAULT_CONFIG, "ml_collections config file", lock_config=True)
    flags.DEFINE_string("workdir", "workdir", "where checkpoints, metrics and results go")
    flags.DEFINE_bool(
        "distributed", None,
        "jax.distributed.initialize() (default: when a multi-process launch is detected; see lgmm_jax.runtime.cli)",
    )


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}: pass options as --flag=value")
    cli.quiet_libraries()
    cli.maybe_initialize_distributed(FLAGS.distributed)
    from lgmm_jax.training import train

    return cli.run_guarded(lambda: train.train_and_evaluate(FLAGS.config, FLAGS.workdir))


if __name__ == "__main__":
    cli.define_flags_or_fail(define_flags, sys.argv)
    sys.exit(cli.run_app(main))
