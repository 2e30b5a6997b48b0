#!/usr/bin/env bash
# Train lgmm_jax on a Cloud TPU VM slice (a pod: several TPU VMs, one JAX process on each).
#
#   launch/tpu_pod.sh --name=lgmm-v4-32 --zone=us-central2-b --accelerator-type=v4-32 \
#       --workdir=gs://my-bucket/runs/c100 --data-dir=gs://my-bucket/tensorflow_datasets \
#       -- --config=configs/cifar100.py --config.batch_size=1024
#
# 1. creates the slice (gcloud compute tpus tpu-vm create) unless `describe` finds it;
# 2. copies this checkout to every worker and installs it there with jax[tpu] and gcsfs;
# 3. runs `python3 -m lgmm_jax.main --distributed --workdir=gs://...` on all workers at once
#    (`--worker=all`); everything after `--` is passed to lgmm_jax.main unchanged.
# Every worker writes its part of each checkpoint to the bucket; rerunning this script resumes.
# With --dry-run the commands are printed (one per line, shell-quoted) instead of run.
set -euo pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  cat <<'USAGE'
options:
  --name=NAME                 TPU VM name (required)
  --zone=ZONE                 e.g. us-central2-b (required)
  --workdir=gs://BUCKET/PATH  checkpoints, metrics and results (required; every worker writes there)
  --data-dir=gs://BUCKET/PATH TFDS data_dir holding the prepared datasets (--config.data_dir)
  --project=PROJECT           gcloud project (default: gcloud's)
  --accelerator-type=TYPE     slice type when creating it (default v4-32)
  --version=VERSION           TPU VM software version when creating it (default tpu-ubuntu2204-base)
  --spot                      create the slice as Spot VMs (preemptible: rerun the script to resume)
  --detach                    start the run in the background on every worker (log: ~/lgmm_jax.log)
  --dry-run                   print the commands instead of running them
USAGE
}

die() { echo "error: $*" >&2; exit 2; }

DRY_RUN=0 SPOT=0 DETACH=0
NAME="" ZONE="" PROJECT="" WORKDIR="" DATA_DIR=""
ACCELERATOR_TYPE="v4-32" VERSION="tpu-ubuntu2204-base"
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --detach) DETACH=1 ;;
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --data-dir=*) DATA_DIR="${1#*=}" ;;
    --accelerator-type=*) ACCELERATOR_TYPE="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1: options of lgmm_jax.main go after '--' (see --help)" ;;
  esac
  shift
done
MAIN_ARGS=("$@")

[[ -n $NAME ]] || die "--name is required: the TPU VM to create or reuse"
[[ -n $ZONE ]] || die "--zone is required, e.g. --zone=us-central2-b"
[[ $WORKDIR == gs://?* ]] || die "--workdir must be a gs:// path (got '${WORKDIR}'): every worker writes checkpoints there"
[[ -z $DATA_DIR || $DATA_DIR == gs://?* ]] || die "--data-dir must be a gs:// path: every worker reads the data there"
for arg in "${MAIN_ARGS[@]}"; do
  case "$arg" in
    --workdir=* | --config.data_dir=*) die "pass $arg as this script's --workdir / --data-dir" ;;
  esac
done

SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCHIVE="${TMPDIR:-/tmp}/lgmm_jax_source.tar.gz"
TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n $PROJECT ]] && WHERE+=(--project="$PROJECT")

# shellcheck source=launch/quoting.sh
source "$(dirname "${BASH_SOURCE[0]}")/quoting.sh"
run() { if ((DRY_RUN)); then show "$@"; else "$@"; fi; }

# 1. The slice.
CREATE=("${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION")
((SPOT)) && CREATE+=(--spot)
if ((DRY_RUN)); then
  echo "# create the slice unless it exists"
  show "${TPU[@]}" describe "$NAME" "${WHERE[@]}"
  show "${CREATE[@]}"
elif ! "${TPU[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
  "${CREATE[@]}"
fi

# 2. This checkout on every worker, installed with the TPU build of jax and GCS file access.
INSTALL="rm -rf ~/lgmm_jax && mkdir -p ~/lgmm_jax && tar -xzf ~/lgmm_jax_source.tar.gz -C ~/lgmm_jax"
INSTALL+=" && python3 -m pip install -q -U pip 'jax[tpu]'"
INSTALL+=" && python3 -m pip install -q -e ~/lgmm_jax gcsfs google-cloud-storage"
((DRY_RUN)) && echo "# install on every worker"
run tar -czf "$ARCHIVE" --exclude=__pycache__ -C "$SOURCE_DIR" pyproject.toml README.md lgmm_jax configs
run "${TPU[@]}" scp "$ARCHIVE" "$NAME:lgmm_jax_source.tar.gz" "${WHERE[@]}" --worker=all
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$INSTALL"

# 3. The run: one process per worker, joined by jax.distributed (Cloud TPU is detected; --distributed
# makes it explicit).
TRAIN=(python3 -m lgmm_jax.main --distributed --workdir="$WORKDIR")
[[ -n $DATA_DIR ]] && TRAIN+=(--config.data_dir="$DATA_DIR")
TRAIN+=("${MAIN_ARGS[@]}")
COMMAND="cd ~/lgmm_jax && $(show "${TRAIN[@]}")"
if ((DETACH)); then
  COMMAND="cd ~/lgmm_jax && nohup $(show "${TRAIN[@]}") > ~/lgmm_jax.log 2>&1 < /dev/null &"
fi
((DRY_RUN)) && echo "# train on all workers"
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$COMMAND"
