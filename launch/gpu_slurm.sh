#!/usr/bin/env bash
# Train lgmm_jax on several GPU nodes of a SLURM cluster: one JAX process per node, driving all of
# that node's GPUs, joined by jax.distributed (JAX reads SLURM's variables inside `srun`).
#
#   launch/gpu_slurm.sh --nodes=4 --gpus-per-node=8 --partition=gpu --time=24:00:00 \
#       --workdir=/shared/runs/in1k --data-dir=/shared/tensorflow_datasets \
#       -- --config=configs/imagenet_resnet50.py
#
# Writes an sbatch script and submits it (`sbatch`). The workdir and data dir must be on a file system
# every node sees. SLURM sends SIGTERM two minutes before the time limit (and on preemption): the run
# checkpoints and exits; the job is requeued on preemption, and submitting the same command again
# resumes after a time limit. Everything after `--` is passed to lgmm_jax.main unchanged.
# With --dry-run the sbatch script and the submit command are printed instead.
set -euo pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  cat <<'USAGE'
options:
  --nodes=N            number of nodes (default 1)
  --gpus-per-node=G    GPUs on each node (default 8)
  --workdir=DIR        checkpoints, metrics, results, on a shared file system (required)
  --data-dir=DIR       TFDS data_dir holding the prepared datasets (--config.data_dir)
  --partition=NAME     SLURM partition
  --account=NAME       SLURM account
  --time=HH:MM:SS      time limit (default 24:00:00)
  --cpus-per-node=C    CPUs for each node's process (data loading; default 32)
  --python=PATH        Python with lgmm_jax and jax[cuda12] installed (default: python3 on PATH)
  --job-name=NAME      (default lgmm_jax)
  --dry-run            print the sbatch script and the command instead of submitting
USAGE
}

die() { echo "error: $*" >&2; exit 2; }

DRY_RUN=0 NODES=1 GPUS_PER_NODE=8 CPUS_PER_NODE=32 TIME_LIMIT="24:00:00" JOB_NAME="lgmm_jax"
WORKDIR="" DATA_DIR="" PARTITION="" ACCOUNT="" PYTHON="python3"
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --nodes=*) NODES="${1#*=}" ;;
    --gpus-per-node=*) GPUS_PER_NODE="${1#*=}" ;;
    --cpus-per-node=*) CPUS_PER_NODE="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --data-dir=*) DATA_DIR="${1#*=}" ;;
    --partition=*) PARTITION="${1#*=}" ;;
    --account=*) ACCOUNT="${1#*=}" ;;
    --time=*) TIME_LIMIT="${1#*=}" ;;
    --python=*) PYTHON="${1#*=}" ;;
    --job-name=*) JOB_NAME="${1#*=}" ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1: options of lgmm_jax.main go after '--' (see --help)" ;;
  esac
  shift
done
MAIN_ARGS=("$@")

[[ -n $WORKDIR ]] || die "--workdir is required: a folder on a file system every node sees"
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$NODES'"
[[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer, got '$GPUS_PER_NODE'"
for arg in "${MAIN_ARGS[@]}"; do
  case "$arg" in
    --workdir=* | --config.data_dir=*) die "pass $arg as this script's --workdir / --data-dir" ;;
  esac
done

# shellcheck source=launch/quoting.sh
source "$(dirname "${BASH_SOURCE[0]}")/quoting.sh"

TRAIN=("$PYTHON" -m lgmm_jax.main --distributed --workdir="$WORKDIR")
[[ -n $DATA_DIR ]] && TRAIN+=(--config.data_dir="$DATA_DIR")
TRAIN+=("${MAIN_ARGS[@]}")
SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

batch_script() {
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=1"
  echo "#SBATCH --gpus-per-node=$GPUS_PER_NODE"
  echo "#SBATCH --cpus-per-task=$CPUS_PER_NODE"
  echo "#SBATCH --time=$TIME_LIMIT"
  echo "#SBATCH --signal=TERM@120"
  echo "#SBATCH --requeue"
  echo "#SBATCH --output=$WORKDIR/slurm-%j.out"
  [[ -n $PARTITION ]] && echo "#SBATCH --partition=$PARTITION"
  [[ -n $ACCOUNT ]] && echo "#SBATCH --account=$ACCOUNT"
  echo "set -euo pipefail"
  echo "cd $(quote "$SOURCE_DIR")"
  echo "# srun starts one task per node; JAX finds SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS,"
  echo "# SLURM_PROCID and SLURM_LOCALID there and picks process 0's node as the coordinator."
  echo "srun --kill-on-bad-exit=1 $(show "${TRAIN[@]}")"
}

if ((DRY_RUN)); then
  echo "# sbatch script"
  batch_script
  echo "# submit"
  show mkdir -p "$WORKDIR"
  show sbatch "$WORKDIR/lgmm_jax.sbatch"
else
  mkdir -p "$WORKDIR"
  batch_script > "$WORKDIR/lgmm_jax.sbatch"
  sbatch "$WORKDIR/lgmm_jax.sbatch"
fi
