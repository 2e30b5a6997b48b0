"""Bad input to `python -m lgmm_jax.main`: one line that names the cause and the fix, a non-zero exit,
no traceback, quickly, and nothing in an existing workdir changed.

Also the helpers that run the command line in a subprocess for test_faults.py and test_distributed.py
(a subprocess: the fake device count must be set before JAX starts, and a fault must hit a real process).
"""
from __future__ import annotations

import hashlib
import json
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.shared_runs import shared_folder, tiny_default_run
from tests.subprocesses import REPO

BAD_INPUT_SECONDS = 60  # generous for a loaded 2-core CI machine; each case takes a few seconds


def compilation_cache(tmp_path_factory=None) -> Path:
    """The session's persistent XLA compilation cache (tests/conftest.py), for subprocesses."""
    return Path(os.environ["LGMM_TEST_COMPILATION_CACHE"])


def cli_env(devices: int = 1, cache: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a CPU run with `devices` fake devices (and a shared compilation cache)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if devices > 1:
        flag = f"--xla_force_host_platform_device_count={devices}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    if cache is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        )
    env.update(extra)
    return env


def main_command(workdir, *args: str, module: str = "lgmm_jax.main") -> list[str]:
    workdir_flag = [f"--workdir={workdir}"] if workdir is not None else []
    return [sys.executable, "-m", module, *workdir_flag, *args]


def run_main(workdir, *args: str, timeout: float = 600, module: str = "lgmm_jax.main", **env_options):
    """`python -m lgmm_jax.main --workdir=... args` to completion; a CompletedProcess with text output."""
    return subprocess.run(
        main_command(workdir, *args, module=module), cwd=REPO, env=cli_env(**env_options),
        capture_output=True, text=True, timeout=timeout,
    )


def start_main(workdir, *args: str, log: Path, **env_options) -> subprocess.Popen:
    """The same command started in the background; stdout and stderr go to `log`.out / `log`.err."""
    return subprocess.Popen(
        main_command(workdir, *args), cwd=REPO, env=cli_env(**env_options),
        stdout=open(f"{log}.out", "w"), stderr=open(f"{log}.err", "w"), text=True,
    )


def wait_for(condition, timeout: float = 300, poll: float = 0.05, what: str = "condition"):
    """Poll `condition()` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# metrics.jsonl's wall-clock numbers: the only ones two runs of the same command may differ in.
TIMING_METRICS = ("images_per_second", "input_wait")


def metrics_without_timing(workdir) -> list[dict]:
    """metrics.jsonl's records without `TIMING_METRICS`."""
    records = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k not in TIMING_METRICS} for record in records]


def committed_steps(workdir) -> list[int]:
    """Steps of the complete checkpoints in a workdir (orbax writes commit_success.txt last)."""
    folder = Path(workdir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


def tree_digest(folder) -> dict[str, str]:
    """Relative path -> sha256 of every file below `folder`."""
    folder = Path(folder)
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


def assert_one_line_error(result, *fragments: str, seconds: float = BAD_INPUT_SECONDS, elapsed: float = 0.0):
    """Non-zero exit; stderr's last line is `error: ...` with `fragments`; no traceback."""
    assert result.returncode not in (0, None), (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert last.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    assert elapsed < seconds, f"took {elapsed:.1f}s"


def timed_run(*args, **kwargs):
    started = time.monotonic()
    result = run_main(*args, **kwargs)
    return result, time.monotonic() - started


# The run that test_faults.py and test_distributed.py compare with (and whose checkpoints this file
# feeds wrong configs): the default config (digits 6/4, small CNN, cosine schedule, k-means re-seed
# after epoch 1 = step 9) for 40 steps of SGD with momentum (see test_distributed.py for why SGD). No
# figures: no test looks at its PNGs, and drawing them (matplotlib) takes seconds per evaluation.
REFERENCE_STEPS = 40
REFERENCE_BATCH_SIZE = 64
REFERENCE_ARGS = (
    f"--config.num_train_steps={REFERENCE_STEPS}",
    f"--config.batch_size={REFERENCE_BATCH_SIZE}",
    "--config.log_every_steps=5",
    "--config.checkpoint_every_steps=5",
    "--config.optimizer.name=sgd",
    "--config.optimizer.learning_rate=0.005",
    "--config.optimizer.gmm_learning_rate=0.005",
    "--config.eval.figures=false",
)


def reference_run(tmp_path_factory) -> Path:
    """The reference configuration run once on one device, uninterrupted; made once per test session."""

    def make(workdir):
        result = run_main(workdir, *REFERENCE_ARGS, cache=compilation_cache())
        assert result.returncode == 0, result.stderr
        assert "on 1 device(s) in 1 process(es), memory bank on 1 device" in result.stdout

    return shared_folder(tmp_path_factory, "reference_run", make)


# The segmentation run that test_faults.py and test_distributed.py compare with: the testbed
# (configs/scenes.py, L-GMM) for 10 steps of SGD, a checkpoint every 2 steps and the k-means re-seed at
# step 5, between two checkpoints (0.04 of an epoch).
SEGMENTATION_STEPS = 10
SEGMENTATION_ARGS = (
    "--config=configs/scenes.py",
    f"--config.num_train_steps={SEGMENTATION_STEPS}",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=2",
    "--config.segmentation.eval_images=20",
    "--config.segmentation.fit_images=20",
    "--config.eval_batch_size=20",
    "--config.loss.reseed_epochs=(0.04,)",
    "--config.optimizer.name=sgd",
    "--config.optimizer.learning_rate=0.01",
    "--config.optimizer.warmup_epochs=0",
)


def segmentation_reference_run(tmp_path_factory) -> Path:
    """The segmentation reference run once on one device, uninterrupted; made once per test session."""

    def make(workdir):
        result = run_main(workdir, *SEGMENTATION_ARGS, cache=compilation_cache())
        assert result.returncode == 0, result.stderr[-3000:]
        Path(f"{workdir}.stdout").write_text(result.stdout)  # beside the workdir: what the run printed

    return shared_folder(tmp_path_factory, "segmentation_reference_run", make)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A copy of a finished run's workdir (checkpoints, config.json, metrics, results): the session's
    shared default run, made in-process."""
    workdir = tiny_default_run(tmp_path_factory, "trained")
    assert committed_steps(workdir)
    return workdir


def test_unknown_config_key(tmp_path):
    result, elapsed = timed_run(tmp_path / "w", "--config.model.no_such_key=1")
    assert_one_line_error(result, "unknown config key", "no_such_key", "configs/default.py", elapsed=elapsed)
    assert result.returncode == 2
    assert not (tmp_path / "w").exists()


def test_unknown_flag(tmp_path):
    result, elapsed = timed_run(tmp_path / "w", "--no_such_flag=1")
    assert_one_line_error(result, "unknown flag --no_such_flag", elapsed=elapsed)


def test_config_file_that_does_not_exist(tmp_path):
    missing = tmp_path / "configs" / "nope.py"
    result, elapsed = timed_run(tmp_path / "w", f"--config={missing}")
    assert_one_line_error(result, str(missing), elapsed=elapsed)
    assert not (tmp_path / "w").exists()


def test_tfds_dataset_not_prepared(tmp_path):
    empty_data_dir = tmp_path / "tfds"
    empty_data_dir.mkdir()
    result, elapsed = timed_run(
        tmp_path / "w", "--config.dataset=cifar10", "--config.protocol=", f"--config.data_dir={empty_data_dir}"
    )
    assert_one_line_error(result, "'cifar10' is not prepared", str(empty_data_dir), "tfds build cifar10",
                          elapsed=elapsed)
    assert not (tmp_path / "w").exists()


def test_batch_size_the_devices_do_not_divide(tmp_path):
    result, elapsed = timed_run(tmp_path / "w", "--config.batch_size=62", devices=4)
    assert_one_line_error(result, "batch_size=62", "4 devices", "multiple of 4", elapsed=elapsed)
    assert not (tmp_path / "w").exists()


def test_distributed_without_a_cluster(tmp_path):
    result, elapsed = timed_run(tmp_path / "w", "--distributed")
    assert_one_line_error(result, "jax.distributed", "JAX_COORDINATOR_ADDRESS", elapsed=elapsed)


def test_half_set_coordinator_environment(tmp_path):
    result, elapsed = timed_run(tmp_path / "w", JAX_COORDINATOR_ADDRESS="localhost:1234")
    assert_one_line_error(result, "JAX_NUM_PROCESSES and JAX_PROCESS_ID are not", elapsed=elapsed)


def test_workdir_that_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result, elapsed = timed_run(blocker / "w", "--config.num_train_steps=1")
    assert_one_line_error(result, "Not a directory", "--workdir", elapsed=elapsed)
    assert blocker.read_text() == "not a folder"


def test_workdir_of_another_model_shape_is_refused_and_untouched(trained_workdir):
    before = tree_digest(trained_workdir)
    result, elapsed = timed_run(trained_workdir, *REFERENCE_ARGS, "--config.model.latent_dim=64")
    assert_one_line_error(result, "model.latent_dim=128", "model.latent_dim=64", "new --workdir", elapsed=elapsed)
    assert tree_digest(trained_workdir) == before


def test_checkpoint_of_another_shape_without_config_json_is_refused_and_untouched(trained_workdir, tmp_path):
    """Without config.json to compare with, the restore itself finds the mismatch; nothing is written."""
    workdir = tmp_path / "copy"
    shutil.copytree(trained_workdir, workdir)
    (workdir / "config.json").unlink()
    before = tree_digest(workdir)
    result, elapsed = timed_run(workdir, *REFERENCE_ARGS, "--config.model.num_components=2")
    assert_one_line_error(result, "does not fit this config", "new --workdir", elapsed=elapsed)
    assert tree_digest(workdir) == before


def test_out_of_distribution_folder_without_images(tmp_path):
    from lgmm_jax.data import sources

    if not hasattr(sources, "FOLDER_PREFIX"):
        pytest.skip("image-folder sources (folder=PATH) are not in lgmm_jax.data.sources yet")
    empty = tmp_path / "empty"
    empty.mkdir()
    result, elapsed = timed_run(tmp_path / "w", f"--config.ood_datasets=('folder={empty}',)")
    assert_one_line_error(result, "no image files", str(empty), elapsed=elapsed)
    assert not (tmp_path / "w").exists()  # refused before training, not after


def test_incomplete_exported_model(tmp_path):
    if importlib.util.find_spec("lgmm_jax.export") is None:
        pytest.skip("lgmm_jax.export is not there yet")
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "model.json").write_text("{}")  # no variables/, an empty description
    result, elapsed = timed_run(
        None, f"--model={exported}", f"--output={tmp_path / 'out'}", module="lgmm_jax.evaluate"
    )
    assert_one_line_error(result, str(exported), elapsed=elapsed)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
