"""The launch scripts' --dry-run output: the gcloud / sbatch commands they would run, parsed back with
shlex (as a shell would) and checked flag by flag."""
from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from tests.test_cli import REPO

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the launch scripts are bash")

# An override whose quotes and parentheses must reach lgmm_jax.main intact through two shells.
TRICKY = "--config.ood_datasets=('svhn_cropped:test', 'folder=/data/LSUN resize')"


def dry_run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "launch" / script), "--dry-run", *args],
                          capture_output=True, text=True, timeout=60)


def commands(output: str) -> list[list[str]]:
    """The printed commands (comment lines skipped), each split into its argv."""
    return [shlex.split(line) for line in output.splitlines() if line.strip() and not line.startswith("#")]


def remote_argv(command: list[str]) -> list[str]:
    """The argv of `python3 -m lgmm_jax.main ...` inside a `gcloud ... ssh --command=...`."""
    remote = next(arg for arg in command if arg.startswith("--command="))[len("--command="):]
    words = shlex.split(remote)
    return words[words.index("python3"):]


TPU_ARGS = ("--name=lgmm-pod", "--zone=us-central2-b", "--accelerator-type=v4-32", "--project=my-project",
            "--workdir=gs://bucket/runs/c100", "--data-dir=gs://bucket/tfds", "--",
            "--config=configs/cifar100.py", "--config.batch_size=1024", TRICKY)


def test_tpu_pod_creates_installs_and_trains_on_all_workers():
    result = dry_run("tpu_pod.sh", *TPU_ARGS)
    assert result.returncode == 0, result.stderr
    describe, create, archive, copy, install, train = commands(result.stdout)
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    where = ["--zone=us-central2-b", "--project=my-project"]
    assert describe == [*tpu, "describe", "lgmm-pod", *where]
    assert create == [*tpu, "create", "lgmm-pod", *where, "--accelerator-type=v4-32",
                      "--version=tpu-ubuntu2204-base"]
    assert archive[:2] == ["tar", "-czf"] and {"pyproject.toml", "lgmm_jax", "configs"} <= set(archive)
    assert copy[:5] == [*tpu, "scp"] and "--worker=all" in copy and copy[-len(where) - 1:-1] == where
    for command in (install, train):
        assert command[:6] == [*tpu, "ssh", "lgmm-pod"] and "--worker=all" in command
        assert all(flag in command for flag in where)
    assert "'jax[tpu]'" in next(a for a in install if a.startswith("--command=")) and "gcsfs" in install[-1]
    assert remote_argv(train) == [
        "python3", "-m", "lgmm_jax.main", "--distributed", "--workdir=gs://bucket/runs/c100",
        "--config.data_dir=gs://bucket/tfds", "--config=configs/cifar100.py", "--config.batch_size=1024", TRICKY,
    ]


def test_tpu_pod_spot_and_detach():
    result = dry_run("tpu_pod.sh", "--spot", "--detach", *TPU_ARGS[:5])
    assert result.returncode == 0, result.stderr
    create, train = commands(result.stdout)[1], commands(result.stdout)[-1]
    assert create[-1] == "--spot"
    remote = next(arg for arg in train if arg.startswith("--command="))
    assert "nohup python3 -m lgmm_jax.main --distributed --workdir=gs://bucket/runs/c100" in remote
    assert remote.endswith("> ~/lgmm_jax.log 2>&1 < /dev/null &")


@pytest.mark.parametrize(
    "args, message",
    [
        (("--name=p", "--zone=z", "--workdir=/local/run"), "--workdir must be a gs:// path"),
        (("--zone=z", "--workdir=gs://b/r"), "--name is required"),
        (("--name=p", "--zone=z", "--workdir=gs://b/r", "--data-dir=/local"), "--data-dir must be a gs:// path"),
        (("--name=p", "--zone=z", "--workdir=gs://b/r", "--", "--workdir=gs://b/other"), "this script's --workdir"),
        (("--name=p", "--zone=z", "--workdir=gs://b/r", "--config.batch_size=8"), "unknown option"),
    ],
)
def test_tpu_pod_refuses_bad_arguments(args, message):
    result = dry_run("tpu_pod.sh", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr


SLURM_ARGS = ("--nodes=4", "--gpus-per-node=8", "--partition=gpu", "--account=lab", "--time=12:00:00",
              "--workdir=/shared/runs/in1k", "--data-dir=/shared/tfds", "--python=/opt/venv/bin/python", "--",
              "--config=configs/imagenet_resnet50.py", TRICKY)


def test_gpu_slurm_batch_script():
    result = dry_run("gpu_slurm.sh", *SLURM_ARGS)
    assert result.returncode == 0, result.stderr
    script, submit = result.stdout.split("# submit\n")
    script = script.split("# sbatch script\n", 1)[1]
    directives = [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "--job-name=lgmm_jax", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=32",
        "--time=12:00:00", "--signal=TERM@120", "--requeue", "--output=/shared/runs/in1k/slurm-%j.out",
        "--partition=gpu", "--account=lab",
    ]
    srun = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    assert srun[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert srun[2:] == [
        "/opt/venv/bin/python", "-m", "lgmm_jax.main", "--distributed", "--workdir=/shared/runs/in1k",
        "--config.data_dir=/shared/tfds", "--config=configs/imagenet_resnet50.py", TRICKY,
    ]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0  # valid shell
    assert commands(submit) == [["mkdir", "-p", "/shared/runs/in1k"], ["sbatch", "/shared/runs/in1k/lgmm_jax.sbatch"]]


@pytest.mark.parametrize(
    "args, message",
    [
        (("--nodes=2",), "--workdir is required"),
        (("--nodes=two", "--workdir=/w"), "--nodes must be a positive integer"),
        (("--workdir=/w", "--", "--config.data_dir=/d"), "this script's --workdir / --data-dir"),
    ],
)
def test_gpu_slurm_refuses_bad_arguments(args, message):
    result = dry_run("gpu_slurm.sh", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr
