"""Figure 3 of the paper from segmentation runs that were evaluated: their pictures side by side.

    python -m lgmm_jax.segmentation_figures --workdirs=LGMM_RUN,SOFTMAX_RUN --output=DIR

For each unknown set, compare_<set>.png: the image, the ground-truth anomaly map, then each run's
prediction and anomaly map (likelihood for L-GMM runs, MSP for softmax runs), drawn from the
pictures_<set>.npz every segmentation evaluation writes (`lgmm_jax.tasks.segmentation.figures`).
"""

from __future__ import annotations

import sys

from absl import flags

from lgmm_jax.runtime import cli
from lgmm_jax.tasks.segmentation import figures

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("workdirs", None, "segmentation runs' folders (their evaluation output), comma-separated")
    flags.DEFINE_string("output", None, "where compare_<set>.png go")


def main(argv) -> int:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}: pass options as --flag=value")
    if not FLAGS.workdirs or not FLAGS.output:
        cli.fail("pass --workdirs=RUN_A,RUN_B (segmentation runs' folders) and --output=DIR")
    return cli.run_guarded(lambda: print("\n".join(figures.compare(FLAGS.workdirs, FLAGS.output)), flush=True))


if __name__ == "__main__":
    cli.define_flags_or_fail(define_flags, sys.argv)
    sys.exit(cli.run_app(main))
