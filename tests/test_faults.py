"""Faults: a run killed (SIGKILL) or preempted (SIGTERM) and started again with the same command ends with
exactly the numbers of a run that never stopped; a second run on a busy workdir is refused; a half-written
checkpoint is never loaded; a damaged one is set aside (training) or skipped (evaluation, export) for the
one before it; a full disk stops the run with one line, and the rerun resumes.

The end-to-end tests run `python -m lgmm_jax.main` in subprocesses on the CPU (where a run is deterministic,
so "the same numbers" means equal floats; one damaged-checkpoint case trains in this process, as that
command does) and compare with an uninterrupted run of the same command (`tests.test_cli.reference_run`).
Its schedule exercises what must come back: a cosine learning rate over the run, SGD's momentum, the k-means
re-seed of the means after epoch 1 (step 9), the memory bank, the RNG key and the data iterator (40 steps:
several epochs of 9 steps). Those end-to-end tests are marked slow (minutes of subprocess runs on 2 cores):
`pytest --slow`, README's test command and CI run them; the quick tier leaves them out.

The segmentation test comes first on purpose: under pytest-xdist this module and test_distributed.py
start side by side on the two workers, and test_distributed.py starts with `reference_run`; this module
makes `segmentation_reference_run` meanwhile instead of waiting for that run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from ml_collections import config_flags

from configs import default

from lgmm_jax.runtime import checkpointing, cli, workdir_claim
from lgmm_jax.training import evaluation, experiment, train
from tests.subprocesses import finish, one_line_error, start
from tests.test_cli import (
    BAD_INPUT_SECONDS,
    REFERENCE_ARGS,
    REFERENCE_BATCH_SIZE,
    REFERENCE_STEPS,
    SEGMENTATION_ARGS,
    SEGMENTATION_STEPS,
    cli_env,
    committed_steps,
    compilation_cache,
    metrics_without_timing,
    reference_run,
    run_main,
    segmentation_reference_run,
    start_main,
    timed_run,
    tree_digest,
    wait_for,
)

SIGTERM_TO_EXIT_SECONDS = 10


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return compilation_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return reference_run(tmp_path_factory)


@pytest.fixture(scope="module")
def uninterrupted_segmentation(tmp_path_factory):
    return segmentation_reference_run(tmp_path_factory)


def resumed_from(stdout: str) -> int:
    return int(re.search(r" from step (\d+) ", stdout).group(1))


def claim_owner(workdir) -> workdir_claim.Owner:
    return workdir_claim.parse_owner((workdir / workdir_claim.OWNER_FILE).read_text())


# --------------------------------------------------------------------------------------------------
# Segmentation (configs/scenes.py): the same loop, checkpoints and signals, a pixel as the example.
# First in the module (see the module's docstring).
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_segmentation_run_preempted_then_killed_then_rerun_gives_the_uninterrupted_numbers(
    uninterrupted_segmentation, tmp_path, cache
):
    """SIGTERM after the first checkpoint; the same command again, SIGKILL after its next checkpoint; the
    same command again to the end: results.json and every logged metric equal the uninterrupted run's.
    (Figures off: only numbers are compared.)"""
    workdir = tmp_path / "workdir"
    args = (*SEGMENTATION_ARGS, "--config.eval.figures=false")
    process = start_main(workdir, *args, log=tmp_path / "preempted", cache=cache)
    try:
        wait_for(lambda: committed_steps(workdir), what="the first checkpoint")
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
    finally:
        process.kill()
    stderr = (tmp_path / "preempted.err").read_text()
    assert status == 0 and "Traceback" not in stderr, stderr
    preempted_step = int(re.search(r"preempted at step (\d+): checkpoint saved", stderr).group(1))
    assert preempted_step < SEGMENTATION_STEPS and not (workdir / "results.json").exists()

    process = start_main(workdir, *args, log=tmp_path / "killed", cache=cache)
    try:
        wait_for(lambda: max(committed_steps(workdir)) > preempted_step, what="a checkpoint after the restart")
    finally:
        process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    killed_step = max(committed_steps(workdir))
    assert killed_step < SEGMENTATION_STEPS and not (workdir / "results.json").exists()

    rerun = run_main(workdir, *args, cache=cache)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert resumed_from(rerun.stdout) == killed_step
    reference = uninterrupted_segmentation
    assert json.loads((workdir / "results.json").read_text()) == json.loads((reference / "results.json").read_text())
    assert metrics_without_timing(workdir) == metrics_without_timing(reference)
    assert [r["step"] for r in metrics_without_timing(reference)] == list(range(2, SEGMENTATION_STEPS + 1, 2))


# --------------------------------------------------------------------------------------------------
# Classification (the reference run): a busy workdir, preempted, killed, rerun.
# --------------------------------------------------------------------------------------------------


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


def assert_a_second_run_is_refused_at_once(first, workdir, cache) -> None:
    """Once `first` has claimed `workdir`, the same command again is refused at once: one line naming
    the owner, exit status WORKDIR_BUSY. `first` is held still (SIGSTOP) meanwhile, so that the second
    run surely meets it mid-run, and goes on afterwards (SIGCONT)."""
    owner = wait_for(
        lambda: (workdir / workdir_claim.OWNER_FILE).exists() and claim_owner(workdir), what="the first run's claim"
    )
    first.send_signal(signal.SIGSTOP)
    try:
        second, seconds = timed_run(workdir, *REFERENCE_ARGS, cache=cache)
    finally:
        first.send_signal(signal.SIGCONT)
    error = one_line_error(second)
    assert second.returncode == cli.WORKDIR_BUSY
    assert f"workdir {workdir} is in use by pid {first.pid} on {socket.gethostname()} since {owner.since}" in error
    assert seconds < BAD_INPUT_SECONDS, f"refused after {seconds:.1f}s"


@pytest.mark.slow
def test_second_run_on_a_busy_workdir_is_refused_and_preempted_killed_rerun_gives_the_uninterrupted_numbers(
    uninterrupted, reference_stream, tmp_path, cache
):
    """A second run on the first one's workdir is refused at once; the first, SIGTERM after its first
    checkpoint; the same command again, SIGKILL after its next checkpoint; the same command again to the
    end: results.json and every logged metric equal the uninterrupted run's (so the refused run did not
    disturb the first either)."""
    workdir = tmp_path / "workdir"

    # 1. While it runs, a second run on its workdir is refused. Then SIGTERM (a preemption notice): a
    #    checkpoint at the step reached, exit status 0, in seconds.
    process = start_main(workdir, *REFERENCE_ARGS, log=tmp_path / "preempted", cache=cache)
    try:
        assert_a_second_run_is_refused_at_once(process, workdir, cache)
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
    assert claim_owner(workdir).pid == process.pid  # the claim the killed run left behind: no lock holds it
    assert resumed_from((tmp_path / "killed.out").read_text()) == preempted_step
    killed_step = max(committed_steps(workdir))
    assert killed_step < REFERENCE_STEPS and not (workdir / "results.json").exists()

    # 3. The same command once more, to the end: the killed run's claim does not block it.
    rerun = run_main(workdir, *REFERENCE_ARGS, cache=cache)
    assert rerun.returncode == 0, rerun.stderr
    assert resumed_from(rerun.stdout) == killed_step
    assert_same_numbers(workdir, uninterrupted)
    assert not (workdir / workdir_claim.OWNER_FILE).exists()  # released at the end


@pytest.mark.slow  # needs the reference run (a 40-step CLI run): ~40 s
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


def test_a_workdir_of_another_encoder_width_is_refused_and_one_from_before_the_key_is_not(tmp_path):
    """config.json written before `model.encoder_widths` existed means the default widths."""
    from configs import default

    config = default.get_config()
    saved = json.loads(config.to_json())
    del saved["model"]["encoder_widths"]
    (tmp_path / checkpointing.CONFIG_FILE).write_text(json.dumps(saved))
    checkpointing.check_compatible(str(tmp_path), config)
    config.model.encoder_widths = (64, 128, 256)
    refusal = r"model.encoder_widths=\(\).*model.encoder_widths=\(64, 128, 256\).*new --workdir"
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match=refusal):
        checkpointing.check_compatible(str(tmp_path), config)


def test_metrics_after_the_restored_step_are_dropped_and_a_torn_line_ignored():
    text = "".join(json.dumps({"step": s, "loss": -s}) + "\n" for s in (5, 10, 15)) + '{"step": 20, "lo'
    assert train.read_metrics(text, up_to_step=10) == [{"step": 5, "loss": -5}, {"step": 10, "loss": -10}]
    assert [r["step"] for r in train.read_metrics(text, up_to_step=99)] == [5, 10, 15]


# --------------------------------------------------------------------------------------------------
# A damaged committed checkpoint (bit-rot, a bad copy between buckets): truncated or missing array data.
# --------------------------------------------------------------------------------------------------


def damage(step_folder, how: str) -> None:
    """Truncate (to 100 bytes) or delete the largest array data file of a committed step."""
    largest = max((p for p in (step_folder / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    if how == "truncated":
        largest.write_bytes(largest.read_bytes()[:100])
    else:
        largest.unlink()


def damaged_copy(uninterrupted, tmp_path, how: str):
    """A copy of the finished reference workdir whose latest checkpoint (step 40) is damaged."""
    workdir = tmp_path / "workdir"
    shutil.copytree(uninterrupted, workdir)
    damage(workdir / "checkpoints" / str(REFERENCE_STEPS), how)
    return workdir


def stderr_lines(stderr: str) -> list[str]:
    """stderr's lines, less absl's own warnings (`W1130 12:00:00 ...`), which are not ours."""
    return [line for line in stderr.splitlines() if line.strip() and not re.match(r"[IWE]\d{4} ", line)]


def the_one_warning(stderr: str) -> str:
    lines = stderr_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("warning: "), stderr
    return lines[0]


def reference_config() -> ml_collections.ConfigDict:
    """The config `python -m lgmm_jax.main` makes of REFERENCE_ARGS, parsed as its flags are."""
    argv = ["lgmm_jax.main", *REFERENCE_ARGS]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", cli.DEFAULT_CONFIG, flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def assert_set_aside_and_resumed_from_the_one_before(workdir, damaged_files, warning, stdout, uninterrupted):
    """The rerun's warning names the damaged step, where it was set aside (every file as it was) and
    the step resumed from, the one before; the run saved the step again and ended with the uninterrupted
    numbers."""
    previous = REFERENCE_STEPS - 5
    assert f"checkpoint {REFERENCE_STEPS} in {workdir / 'checkpoints'} is damaged" in warning
    assert f"set aside as {REFERENCE_STEPS}{checkpointing.DAMAGED_SUFFIX}" in warning
    assert f"resuming from checkpoint {previous}" in warning
    assert resumed_from(stdout) == previous
    set_aside = workdir / "checkpoints" / f"{REFERENCE_STEPS}{checkpointing.DAMAGED_SUFFIX}"
    assert tree_digest(set_aside) == damaged_files  # renamed, every file as it was
    assert REFERENCE_STEPS in committed_steps(workdir)  # saved again, whole this time
    assert_same_numbers(workdir, uninterrupted)


@pytest.mark.slow
def test_a_truncated_latest_checkpoint_is_set_aside_and_the_rerun_resumes_from_the_one_before(
    uninterrupted, tmp_path, cache
):
    """The same command again: exit status 0, one `warning:` line on stderr."""
    workdir = damaged_copy(uninterrupted, tmp_path, "truncated")
    damaged_files = tree_digest(workdir / "checkpoints" / str(REFERENCE_STEPS))

    rerun = run_main(workdir, *REFERENCE_ARGS, cache=cache)

    assert rerun.returncode == 0, rerun.stderr
    warning = the_one_warning(rerun.stderr)
    assert_set_aside_and_resumed_from_the_one_before(workdir, damaged_files, warning, rerun.stdout, uninterrupted)


@pytest.mark.slow
def test_a_latest_checkpoint_missing_its_largest_file_is_set_aside_and_the_rerun_resumes_from_the_one_before(
    uninterrupted, tmp_path, capfd
):
    """The same, trained in this process as the command line trains (`cli.run_guarded`; the command line
    itself is the truncated case's)."""
    workdir = damaged_copy(uninterrupted, tmp_path, "missing")
    damaged_files = tree_digest(workdir / "checkpoints" / str(REFERENCE_STEPS))

    status = cli.run_guarded(lambda: train.train_and_evaluate(reference_config(), str(workdir)))

    stdout, stderr = capfd.readouterr()
    assert status == 0, stderr
    warning = the_one_warning(stderr)
    assert_set_aside_and_resumed_from_the_one_before(workdir, damaged_files, warning, stdout, uninterrupted)


@pytest.mark.slow
def test_evaluate_and_export_skip_a_damaged_checkpoint_say_so_and_change_nothing(uninterrupted, tmp_path, cache):
    """Read-only: the damaged step stays where it is; the checkpoint before it is evaluated and exported
    (the two commands side by side), with the numbers an evaluation of that checkpoint gives (made here,
    in this process)."""
    workdir = damaged_copy(uninterrupted, tmp_path, "truncated")
    before = tree_digest(workdir)
    previous = REFERENCE_STEPS - 5
    evaluating = start("-m", "lgmm_jax.evaluate", f"--workdir={workdir}", f"--output={tmp_path / 'evaluated'}",
                       env=cli_env(cache=cache))
    exporting = start("-m", "lgmm_jax.export", f"--workdir={workdir}", f"--output={tmp_path / 'exported'}",
                      env=cli_env(cache=cache))

    expected = tmp_path / "up_to_previous"  # the same run without its last checkpoint
    shutil.copytree(uninterrupted, expected)
    shutil.rmtree(expected / "checkpoints" / str(REFERENCE_STEPS))
    evaluation.evaluate_workdir(str(expected), str(tmp_path / "reference"))
    evaluated, exported = finish(evaluating, timeout=600), finish(exporting, timeout=600)

    for completed in (evaluated, exported):
        assert completed.returncode == 0, completed.stderr
        warning = the_one_warning(completed.stderr)
        assert f"checkpoint {REFERENCE_STEPS} in {workdir / 'checkpoints'} is damaged" in warning
        assert f"left as it is (read-only); using checkpoint {previous} instead" in warning
    assert json.loads((tmp_path / "evaluated" / "results.json").read_text()) == json.loads(
        (tmp_path / "reference" / "results.json").read_text()
    )
    assert json.loads((tmp_path / "exported" / "model.json").read_text())["checkpoint"]["step"] == previous
    assert tree_digest(workdir) == before


def test_damage_is_told_from_a_storage_outage():
    """Only errors that say the files are bad set a checkpoint aside; an outage changes nothing."""
    truncated = ValueError('OUT_OF_RANGE: Error reading "params.head.means/0.0.0" in OCDBT database at local '
                           'file "/w/checkpoints/40/state/": Requested byte range [0, 9) is not valid for value '
                           'of size 1 [tensorstore_spec=\'{"driver": "zarr"}\']')
    wrapped = Exception("Encountered error while reading array index")
    wrapped.__cause__ = truncated
    assert checkpointing.damage_in(wrapped) == (
        "OUT_OF_RANGE reading params.head.means/0.0.0: Requested byte range [0, 9) is not valid for value of size 1"
    )
    assert checkpointing.damage_in(FileNotFoundError("File /w/checkpoints/40/data/metadata not found."))
    assert checkpointing.damage_in(ValueError('UNAVAILABLE: Error reading "x" in gs://bucket: 503')) is None
    assert checkpointing.damage_in(PermissionError(13, "Permission denied")) is None


def test_full_disk_is_told_from_memory_and_rate_limits():
    assert checkpointing.is_disk_full(OSError(28, "No space left on device"))
    assert checkpointing.is_disk_full(ValueError(
        'RESOURCE_EXHAUSTED: Error writing "step/0" in OCDBT database at local file "/w/checkpoints/20": Failed'))
    assert not checkpointing.is_disk_full(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 4 GiB"))
    assert not checkpointing.is_disk_full(ValueError('RESOURCE_EXHAUSTED: Error writing "x" in gs://bucket: 429'))


# --------------------------------------------------------------------------------------------------
# Claims on a workdir. (The command line's refusal of a second run on a busy workdir is tested with
# the preempted run above.)
# --------------------------------------------------------------------------------------------------


def test_claim_is_exclusive_and_dies_with_its_process(tmp_path):
    """With file locks: a second claim is refused while the first is held; a claim left by a process
    killed with SIGKILL (its owner.json still there) is taken at once."""
    release = workdir_claim.claim(str(tmp_path))
    with pytest.raises(workdir_claim.WorkdirBusyError, match=f"in use by pid {os.getpid()} on "):
        workdir_claim.claim(str(tmp_path))
    release()
    assert not (tmp_path / workdir_claim.OWNER_FILE).exists()

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lgmm_jax.runtime import workdir_claim; "
         "workdir_claim.claim(sys.argv[1]); print('claimed', flush=True); time.sleep(600)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "claimed"
    finally:
        holder.kill()
        holder.wait()
    assert claim_owner(tmp_path).pid == holder.pid  # stale: the lock died with the process
    workdir_claim.claim(str(tmp_path))()


def write_claim(workdir, host: str, pid: int, heartbeat_age: float) -> None:
    owner = workdir_claim.Owner(host, pid, "2025-01-01 00:00:00 UTC", time.time() - heartbeat_age)
    (workdir / workdir_claim.OWNER_FILE).write_text(owner.to_json())


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_claim_without_locks_tells_stale_claims_by_pid_on_this_host_and_by_heartbeat_elsewhere(tmp_path):
    """The protocol for gs:// (no locks): what is refused and what is taken over."""
    here, stale_age = socket.gethostname(), workdir_claim.STALE_AFTER_SECONDS + 1
    me = workdir_claim.Owner.this_process()
    live = [(here, os.getppid(), stale_age), ("other-host", 1234, 10)]
    stale = [(here, dead_pid(), 0), ("other-host", 1234, stale_age)]
    for host, pid, age in live:
        write_claim(tmp_path, host, pid, age)
        with pytest.raises(workdir_claim.WorkdirBusyError, match=f"in use by pid {pid} on {host} since 2025"):
            workdir_claim.claim_with_heartbeat(str(tmp_path), me)
        assert claim_owner(tmp_path).pid == pid  # a refused run leaves the claim alone
    for host, pid, age in stale:
        write_claim(tmp_path, host, pid, age)
        release = workdir_claim.claim_with_heartbeat(str(tmp_path), me)
        assert claim_owner(tmp_path) == me
        release()
        assert not (tmp_path / workdir_claim.OWNER_FILE).exists()


# --------------------------------------------------------------------------------------------------
# A full disk during a save.
# --------------------------------------------------------------------------------------------------


def disk_usage(folder) -> int:
    """Bytes `folder` takes on a tmpfs (whole 4 KiB pages per file and folder)."""
    paths = [folder, *folder.rglob("*")]
    return sum(4096 * max(1, -(-p.stat().st_size // 4096)) if p.is_file() else 4096 for p in paths)


@pytest.fixture
def small_disk(tmp_path, uninterrupted):
    """A tmpfs with room for two of the reference run's checkpoints and a half (unmounted afterwards)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    checkpoint = disk_usage(uninterrupted / "checkpoints" / str(REFERENCE_STEPS))
    size_kib = (5 * checkpoint // 2 + 512 * 1024) // 1024
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount_point)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {mount.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
def test_full_disk_stops_with_one_line_and_the_rerun_after_freeing_space_resumes(uninterrupted, small_disk, cache):
    workdir = small_disk / "workdir"

    full = run_main(workdir, *REFERENCE_ARGS, cache=cache)

    error = one_line_error(full)
    assert full.returncode == cli.DISK_FULL
    intact = committed_steps(workdir)
    assert intact and max(intact) < REFERENCE_STEPS
    assert f"the disk of {workdir} is full: checkpoints {', '.join(map(str, intact))} are intact" in error
    assert f"rerun the same command to resume from step {max(intact)}" in error

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    rerun = run_main(workdir, *REFERENCE_ARGS, cache=cache)

    assert rerun.returncode == 0, rerun.stderr
    assert resumed_from(rerun.stdout) == max(intact)
    assert_same_numbers(workdir, uninterrupted)
