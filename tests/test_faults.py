"""Faults: a run killed (SIGKILL) or preempted (SIGTERM) and started again with the same command ends with
exactly the numbers of a run that never stopped; a half-written checkpoint is never loaded.

The end-to-end test runs `python -m lgmm_jax.main` in subprocesses on the CPU (where a run is
deterministic, so "the same numbers" means equal floats) and compares with an uninterrupted run of the
same command (`tests.test_cli.reference_run`). Its schedule exercises what must come back: a cosine
learning rate over the run, SGD's momentum, the k-means re-seed of the means after epoch 1 (step 9), the
memory bank, the RNG key and the data iterator (40 steps: several epochs of 9 steps).
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from lgmm_jax import checkpointing, experiment, train
from tests.test_cli import (
    REFERENCE_ARGS,
    REFERENCE_BATCH_SIZE,
    REFERENCE_STEPS,
    committed_steps,
    compilation_cache,
    reference_run,
    run_main,
    start_main,
    wait_for,
)

SIGTERM_TO_EXIT_SECONDS = 10


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return compilation_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return reference_run(tmp_path_factory)


def metrics_without_timing(workdir) -> list[dict]:
    """metrics.jsonl without images_per_second (wall-clock, the one number allowed to differ)."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k != "images_per_second"} for record in records]


def assert_same_numbers(workdir, reference) -> None:
    assert json.loads((workdir / "results.json").read_text()) == json.loads((reference / "results.json").read_text())
    resumed, straight = metrics_without_timing(workdir), metrics_without_timing(reference)
    assert [r["step"] for r in straight] == list(range(5, REFERENCE_STEPS + 1, 5))
    assert resumed == straight  # every logged step, each loss term and the learning rate, equal floats


def saved_iterator_state(workdir, step: int) -> dict:
    """The data iterator's state saved with checkpoint `step` (the checkpoint's `data` item)."""
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(workdir / "checkpoints", options=options, item_names=("state", "data")) as manager:
        return manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data


@pytest.fixture(scope="module")
def reference_stream():
    """A fresh input stream of the reference run (`REFERENCE_ARGS`) and its first batches."""
    config = default.get_config()
    config.batch_size = REFERENCE_BATCH_SIZE
    protocol = experiment.resolve_protocol(config)
    source = experiment.data_source(protocol.dataset, protocol.train_split, config=config)
    new_stream = lambda: experiment.train_stream(config, protocol, source)  # noqa: E731
    stream = new_stream()
    return new_stream, [next(stream) for _ in range(REFERENCE_STEPS + 1)]


def assert_resumes_after(workdir, step: int, reference_stream) -> None:
    """The iterator restored from checkpoint `step` gives the batch of step + 1 next (it was saved
    after the step: past exactly the batches of steps 1..step)."""
    new_stream, batches = reference_stream
    stream = new_stream()
    stream.set_state(saved_iterator_state(workdir, step))
    resumed, expected = next(stream), batches[step]  # batches[i] is the batch of step i + 1
    np.testing.assert_array_equal(resumed["label"], expected["label"])
    np.testing.assert_array_equal(resumed["image"], expected["image"])  # augmentation included


def resumed_from(stdout: str) -> int:
    return int(re.search(r" from step (\d+) ", stdout).group(1))


def test_preempted_then_killed_then_rerun_gives_the_uninterrupted_numbers(
    uninterrupted, reference_stream, tmp_path, cache
):
    """SIGTERM after the first checkpoint; the same command again, SIGKILL after its next checkpoint;
    the same command again to the end: results.json and every logged metric equal the uninterrupted run's."""
    workdir = tmp_path / "workdir"

    # 1. SIGTERM (a preemption notice): a checkpoint at the step reached, exit status 0, in seconds.
    process = start_main(workdir, *REFERENCE_ARGS, log=tmp_path / "preempted", cache=cache)
    try:
        wait_for(lambda: committed_steps(workdir), what="the first checkpoint")
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        process.kill()
    stderr = (tmp_path / "preempted.err").read_text()
    assert status == 0, stderr
    assert seconds < SIGTERM_TO_EXIT_SECONDS, f"{seconds:.1f}s from SIGTERM to exit"
    assert "Traceback" not in stderr
    stopped = re.search(r"preempted at step (\d+): checkpoint saved", stderr)
    assert stopped, stderr
    preempted_step = int(stopped.group(1))
    assert preempted_step < REFERENCE_STEPS and not (workdir / "results.json").exists()
    assert max(committed_steps(workdir)) == preempted_step
    assert_resumes_after(workdir, preempted_step, reference_stream)

    # 2. The same command resumes there; SIGKILL once it has written another checkpoint.
    process = start_main(workdir, *REFERENCE_ARGS, log=tmp_path / "killed", cache=cache)
    try:
        wait_for(lambda: max(committed_steps(workdir)) > preempted_step, what="a checkpoint after the restart")
    finally:
        process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL  # killed while training, not finished
    assert resumed_from((tmp_path / "killed.out").read_text()) == preempted_step
    killed_step = max(committed_steps(workdir))
    assert killed_step < REFERENCE_STEPS and not (workdir / "results.json").exists()

    # 3. The same command once more, to the end.
    rerun = run_main(workdir, *REFERENCE_ARGS, cache=cache)
    assert rerun.returncode == 0, rerun.stderr
    assert resumed_from(rerun.stdout) == killed_step
    assert_same_numbers(workdir, uninterrupted)


def test_every_checkpoint_resumes_the_data_where_its_step_left_off(uninterrupted, reference_stream):
    steps = committed_steps(uninterrupted)
    assert steps == [REFERENCE_STEPS - 10, REFERENCE_STEPS - 5, REFERENCE_STEPS]  # keep_checkpoints=3
    for step in steps:
        assert_resumes_after(uninterrupted, step, reference_stream)


# --------------------------------------------------------------------------------------------------
# Half-written checkpoints, on a small state (the checkpoint logic does not depend on the model).
# --------------------------------------------------------------------------------------------------

MANAGER_CONFIG = ml_collections.ConfigDict({"keep_checkpoints": 5})


class CountingIterator:
    """A stand-in for the grain iterator: its state is the number of elements it has given."""

    def __init__(self, position: int = 0):
        self.position = position

    def get_state(self) -> dict:
        return {"next_index": self.position}

    def set_state(self, state: dict) -> None:
        self.position = state["next_index"]


def small_state(value: float) -> dict:
    return {"weights": jnp.full((3, 4), value, jnp.float32), "step": jnp.asarray(int(value), jnp.int32)}


def write_checkpoints(workdir, steps) -> None:
    manager = checkpointing.open_manager(str(workdir), MANAGER_CONFIG)
    for step in steps:
        checkpointing.save(manager, step, small_state(step), CountingIterator(10 * step))
    manager.wait_until_finished()
    manager.close()


def restore(workdir) -> tuple[int, int]:
    """(step held by the restored state, iterator position restored with it)."""
    manager = checkpointing.open_manager(str(workdir), MANAGER_CONFIG)
    target = small_state(0)
    shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), target)
    iterator = CountingIterator()
    state = checkpointing.restore_latest(manager, target, shardings, iterator)
    manager.close()
    assert float(state["weights"][0, 0]) == int(state["step"])
    return int(state["step"]), iterator.position


def test_unfinished_write_of_a_newer_step_is_ignored(tmp_path):
    """What a process killed while orbax was writing leaves: `<step>.orbax-checkpoint-tmp...`."""
    write_checkpoints(tmp_path, [1, 2])
    unfinished = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1234567890"
    shutil.copytree(tmp_path / "checkpoints" / "2", unfinished)
    (unfinished / "commit_success.txt").unlink()
    assert restore(tmp_path) == (2, 20)


def test_step_folder_without_commit_marker_is_set_aside_and_the_previous_step_restored(tmp_path):
    """A step folder that never got orbax's commit marker (a GCS write cut short, a truncated copy)."""
    write_checkpoints(tmp_path, [1, 2, 3])
    folder = tmp_path / "checkpoints" / "3"
    (folder / "commit_success.txt").unlink()
    for path in (folder / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # and half its bytes
    assert restore(tmp_path) == (2, 20)
    assert not folder.exists()  # renamed, not deleted: orbax now sees an unfinished write
    assert (tmp_path / "checkpoints" / f"3{checkpointing.INCOMPLETE_SUFFIX}").is_dir()
    write_checkpoints(tmp_path, [3])  # the run saves step 3 again, for real this time
    assert restore(tmp_path) == (3, 30)


def test_no_complete_checkpoint_starts_fresh(tmp_path):
    write_checkpoints(tmp_path, [1])
    (tmp_path / "checkpoints" / "1" / "commit_success.txt").unlink()
    manager = checkpointing.open_manager(str(tmp_path), MANAGER_CONFIG)
    assert checkpointing.latest_committed_step(manager) is None
    manager.close()


def test_metrics_after_the_restored_step_are_dropped_and_a_torn_line_ignored():
    text = "".join(json.dumps({"step": s, "loss": -s}) + "\n" for s in (5, 10, 15)) + '{"step": 20, "lo'
    assert train.read_metrics(text, up_to_step=10) == [{"step": 5, "loss": -5}, {"step": 10, "loss": -10}]
    assert [r["step"] for r in train.read_metrics(text, up_to_step=99)] == [5, 10, 15]
