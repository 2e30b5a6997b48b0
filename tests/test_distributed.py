"""Scale-out on one CPU machine: results do not depend on the device count or the process count, the
memory bank is split by class exactly when the class count allows, and jax.distributed starts only on
a multi-process launch.

Device and process counts need their own JAX processes (the fake CPU device count is fixed when JAX
starts): each configuration runs `python -m lgmm_jax.main` in a subprocess on the same config -- the
digits 6/4 protocol (6 known classes: split over 2 devices, replicated over 4), 40 steps with the k-means
re-seed after epoch 1 (`tests.test_cli.reference_run`) -- and the runs are compared with one device in
one process. These runs are marked slow (minutes of subprocess runs on 2 cores): `pytest --slow`,
README's test command and CI run them; the quick tier leaves them out.

The optimiser is SGD with momentum: a sharded batch sums its gradient in another order, so runs differ
by float rounding, and SGD keeps such differences at rounding size. (Adam's first update is
lr * g / (|g| + eps): for a parameter whose gradient is zero up to rounding, a rounding-level difference
becomes a difference of up to 2 lr.)

The tolerances were checked on other float paths than this machine's: XLA's CPU backend takes
`XLA_FLAGS=--xla_cpu_max_isa=...`, and each configuration was run under the default (AVX-512 here),
AVX2 and SSE4_2. AVX2 gave this model the default's numbers bit for bit. SSE4_2 changes the convolutions'
rounding and is what another CPU does: its one-device run ends with the posterior's threshold at 0.32572
against 0.32862 (the 95% order statistic moved to the neighbouring validation example, as on the CPU
where the earlier value comparison failed), the likelihood's 0.033 nats away (1.7e-4), FPR95 two
examples away (0.0046), AUROC 4e-5 to 6e-5 and AUPR-out 2.4e-4 away, mean effective components 1.1e-3.
Every comparison below passes between the two paths' one-device runs, and within each path the 2- and
4-device and two-process runs differ from one device by at most 4.6e-5 nats in a threshold. The
segmentation run (two processes against one device): default path, the threshold 0.0040 of 56.4 nats
(7e-5 relative; allowed 5e-4) and every rate within 3.4e-4 (allowed 1e-3); SSE4_2, 1.8e-4 nats and
1.6e-5; SSE4_2's one-device run against the default's, 3.4e-4 nats and 2.8e-6. The suite now compiles at
XLA's optimisation level 1 (tests/conftest.py), one more float path: every cross-run module (this one,
test_faults, test_evaluate, test_export, test_initial_weights, test_train) passes under it on the default
ISA and under SSE4_2.

This module was run again whole under `--xla_cpu_max_isa=SSE4_2` and `=AVX2` after the segmentation
tolerances below were derived (PIXEL_FLIPS, TIED_PIXELS): 14 passed under each. Measured spread of the
segmentation run, two processes against one device: SSE4_2, thresholds 1.1e-6 relative (allowed 5e-4),
no pixel flipped in any per-class rate (allowed 82), the other rates 2.9e-6 (allowed 1e-3), logged
losses 7.6e-7 relative and L_one 2.1e-6 (allowed 2.3e-3); AVX2, thresholds 1.6e-5, two pixels, 2.9e-5,
4.4e-6 and 8.6e-6. Classification under SSE4_2 again moved the posterior's threshold to the neighbouring
validation example (0.32862 against 0.32573), which the acceptance-rate comparison takes as it should.
"""
from __future__ import annotations

import json
import subprocess
from unittest import mock

import jax
import numpy as np
import portpicker
import pytest

from lgmm_jax.runtime import cli
from lgmm_jax.data import pipeline
from lgmm_jax.data.sources import load_digits_source
from tests.test_cli import (
    REFERENCE_ARGS,
    REFERENCE_BATCH_SIZE,
    REFERENCE_STEPS,
    REPO,
    SEGMENTATION_ARGS,
    cli_env,
    committed_steps,
    compilation_cache,
    main_command,
    metrics_without_timing,
    reference_run,
    run_main,
    segmentation_reference_run,
)

LOSS_RTOL = LOSS_ATOL = 1e-4  # every logged loss term
EXAMPLES_ATOL = 2  # rates over examples (accuracy, top-1, FPR95, ...): this many examples may flip
RANKING_ATOL = 5e-4  # AUROC / AUPR: a few of the ~70k known-unknown pairs may swap
USAGE_ATOL = 0.05  # test-set component usage per class (~50 examples a class): a couple may move
# L_one of an example near a tie between two components sits on the steep part of a softmax over
# log-densities of ~260 nats, refit to the memory bank every step: a reduction in another order (Gloo
# across processes) moves it. One such example's responsibilities may move by up to 0.1 (seen: 1.6e-4
# on the batch mean at step 30 with two processes; every other term and results.json agree to 1e-4).
ONE_HOT_ATOL = 0.1 / REFERENCE_BATCH_SIZE
# A rejection threshold is an order statistic of the validation scores (the one that keeps 95%), so its
# value jumps to a neighbouring example's score when two scores near it swap: compare what it decides. On
# the reference run's validation scores (its scores.npz) the run's threshold must accept the share the
# reference's threshold accepts, within EXAMPLES_ATOL examples. (A value comparison failed on another
# CPU: the posterior's threshold, a log-odds of 0.33, moved by 8.5e-3 relative to its neighbour.)
# Segmentation thresholds are order statistics of ~80k validation pixels, whose scores are not written:
# there the value moves by at most the largest change of one pixel's score, which THRESHOLD_RTOL bounds.
THRESHOLD_RTOL = 5e-4


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return compilation_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    return reference_run(tmp_path_factory)


def train_on(workdir, devices: int, cache) -> str:
    result = run_main(workdir, *REFERENCE_ARGS, devices=devices, cache=cache)
    assert result.returncode == 0, result.stderr
    return result.stdout


def metrics(workdir) -> list[dict]:
    return metrics_without_timing(workdir)


def flat_numbers(tree, prefix="") -> dict[str, float]:
    """results.json's numbers by dotted path."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in flat_numbers(value, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in flat_numbers(value, f"{prefix}{i}.").items()}
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix.rstrip("."): float(tree)}
    return {}


def assert_same_training(workdir, reference, up_to_step: int = REFERENCE_STEPS) -> None:
    runs, references = metrics(workdir), metrics(reference)
    assert [r["step"] for r in runs] == [r["step"] for r in references] == list(range(5, REFERENCE_STEPS + 1, 5))
    runs, references = runs[: up_to_step // 5], references[: up_to_step // 5]
    for run, expected in zip(runs, references):
        for name, value in expected.items():
            where = f"step {run['step']} {name}"
            if name == "accuracy":
                assert abs(run[name] - value) <= EXAMPLES_ATOL / REFERENCE_BATCH_SIZE, where
            elif name == "effective_components":  # from hard (argmax) assignments of the batch
                np.testing.assert_allclose(run[name], value, rtol=1e-2, err_msg=where)
            elif name == "one_hot":
                np.testing.assert_allclose(run[name], value, rtol=0, atol=ONE_HOT_ATOL, err_msg=where)
            else:
                np.testing.assert_allclose(run[name], value, rtol=LOSS_RTOL, atol=LOSS_ATOL, err_msg=where)


def assert_same_decisions(threshold: float, reference_threshold: float, reference_scores, what: str) -> None:
    """`threshold` accepts the share of `reference_scores` that `reference_threshold` accepts, within
    EXAMPLES_ATOL examples."""
    scores = np.asarray(reference_scores)
    accepted, expected = np.mean(scores >= threshold), np.mean(scores >= reference_threshold)
    assert abs(accepted - expected) <= EXAMPLES_ATOL / len(scores) + 1e-12, (what, threshold, reference_threshold,
                                                                              accepted, expected)


def known_test_class_sizes(workdir) -> np.ndarray:
    """Examples of each known class (in model order) in the run's known test split."""
    from lgmm_jax.runtime import checkpointing
    from lgmm_jax.training import experiment

    config = checkpointing.read_config(str(workdir))
    protocol = experiment.resolve_protocol(config)
    labels = experiment.data_source(protocol.dataset, protocol.test_split, config=config).labels
    return np.array([np.sum(labels == c) for c in protocol.known_classes])


def assert_same_results(workdir, reference, auroc_atol: float = RANKING_ATOL, aupr_atol: float = RANKING_ATOL
                        ) -> None:
    """results.json of `workdir` against `reference`'s within what each quantity can move by; `auroc_atol`,
    `aupr_atol`: the ranking metrics' allowances (sets smaller than the reference run's need more)."""
    results = json.loads((workdir / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    with np.load(reference / "scores.npz") as reference_scores:
        validation = {key.split("/", 1)[1]: reference_scores[key] for key in reference_scores.files
                      if key.startswith("validation/")}
    got, want = flat_numbers(results), flat_numbers(expected)
    assert got.keys() == want.keys()
    known = expected["closed_set"]["num_examples"]
    unknown = min(s["num_examples"] for s in expected["open_set"].values())
    for name, value in want.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_examples" or name.startswith("unreadable_files."):  # counts of examples or files
            assert got[name] == value, name
        elif leaf in ("auroc", "aupr_in", "aupr_out"):
            allowed = auroc_atol if leaf == "auroc" else aupr_atol
            assert abs(got[name] - value) <= allowed, (name, got[name], value)
        elif leaf in ("top1", "top5", "fpr95_ood_positive"):
            assert abs(got[name] - value) <= EXAMPLES_ATOL / known + 1e-12, (name, got[name], value)
        elif leaf in ("fpr95", "detection_error"):
            assert abs(got[name] - value) <= EXAMPLES_ATOL / min(known, unknown) + 1e-12, (name, got[name], value)
        elif name.startswith("thresholds."):
            assert_same_decisions(got[name], value, validation[name.split(".", 1)[1]], name)
        elif name.startswith("components."):
            assert abs(got[name] - value) <= USAGE_ATOL, (name, got[name], value)
        elif name == "conformal.alpha":
            assert got[name] == value
        elif name.startswith("conformal.") and leaf == "threshold":  # an order statistic, as the thresholds
            assert_same_decisions(got[name], value, validation[name.split(".")[2]], name)
        elif name.startswith("conformal.") and leaf == "rejected":  # a share of the known test examples
            assert abs(got[name] - value) <= EXAMPLES_ATOL / known + 1e-12, (name, got[name], value)
        elif name.startswith("conformal.") and ".rejected_per_class." in name:  # a share of one class's
            size = known_test_class_sizes(reference)[int(leaf)]
            assert abs(got[name] - value) <= EXAMPLES_ATOL / size + 1e-12, (name, got[name], value)
        else:
            raise AssertionError(f"results.json has a number this test does not know how to compare: {name}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "devices, placement",
    [
        (2, "memory bank split by class over 2 devices"),
        (4, "memory bank replicated (6 classes do not split evenly over 4 devices)"),
    ],
    ids=["2_devices_memory_split_by_class", "4_devices_memory_replicated"],
)
def test_device_count_does_not_change_the_numbers(devices, placement, one_device, tmp_path, cache):
    stdout = train_on(tmp_path, devices, cache)
    assert f"on {devices} device(s) in 1 process(es), {placement}" in stdout
    assert_same_training(tmp_path, one_device)
    assert_same_results(tmp_path, one_device)


def process_slices_are_contiguous() -> bool:
    """Whether process p of P reads rows [p*b, (p+1)*b) of each global batch (b = batch // P)."""
    source = load_digits_source("train")
    options = dict(source=source, batch_size=8, seed=0, preprocess="none")
    whole = next(pipeline.train_iterator(**options))["label"]
    parts = [next(pipeline.train_iterator(**options, process_index=p, process_count=2))["label"] for p in (0, 1)]
    return bool(np.array_equal(np.concatenate(parts), whole))


def test_process_slices_are_contiguous_blocks_of_the_global_batch():
    assert process_slices_are_contiguous()


def start_process(workdir, index: int, port: int, log, cache) -> subprocess.Popen:
    env = cli_env(
        devices=2, cache=cache, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(index),
    )
    return subprocess.Popen(
        main_command(workdir, *REFERENCE_ARGS), cwd=REPO, env=env,
        stdout=open(f"{log}_{index}.out", "w"), stderr=open(f"{log}_{index}.err", "w"),
    )


@pytest.mark.slow
def test_two_processes_of_two_devices_give_the_numbers_of_one_process(one_device, tmp_path, cache):
    """Two processes joined by jax.distributed on localhost (explicit coordinator), one shared workdir."""
    workdir, port = tmp_path / "two_processes", portpicker.pick_unused_port()
    processes = [start_process(workdir, i, port, tmp_path / "process", cache) for i in (0, 1)]
    try:
        statuses = [p.wait(timeout=600) for p in processes]
    finally:
        for p in processes:
            p.kill()
    errors = [(tmp_path / f"process_{i}.err").read_text() for i in (0, 1)]
    assert statuses == [0, 0], errors
    assert "on 4 device(s) in 2 process(es)" in (tmp_path / "process_0.out").read_text()
    # Only process 0 reports (Gloo's own connection chatter, which may wrap mid-line, is not ours).
    ours = ("training ", "step ", "top-1", "results:")
    reports = [line for line in (tmp_path / "process_1.out").read_text().splitlines() if line.startswith(ours)]
    assert reports == []
    assert committed_steps(workdir) == [30, 35, 40]  # both processes' shards, one checkpoint per step
    assert_same_training(workdir, one_device)
    assert_same_results(workdir, one_device)


# --------------------------------------------------------------------------------------------------
# When jax.distributed.initialize() runs (it is only recorded here, never started).
# --------------------------------------------------------------------------------------------------

CLUSTER_VARIABLES = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID", "SLURM_STEP_NODELIST",
    "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID", "MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES",
    "TPU_SKIP_MDS_QUERY",
)


@pytest.fixture
def one_machine(monkeypatch):
    """No cluster variables; jax.distributed.initialize replaced by a recorder."""
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    initialize = mock.Mock()
    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    return initialize


def test_one_machine_is_a_no_op(one_machine):
    assert cli.detected_cluster() is None
    cli.maybe_initialize_distributed(None)
    one_machine.assert_not_called()


def test_explicit_coordinator(one_machine, monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    cli.maybe_initialize_distributed(None)
    one_machine.assert_called_once_with(coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3)


def test_explicit_coordinator_without_process_count_fails_in_one_line(one_machine, monkeypatch, capsys):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:1234")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    with pytest.raises(SystemExit) as stop:
        cli.maybe_initialize_distributed(None)
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES is not")
    one_machine.assert_not_called()


def slurm(monkeypatch, tasks: int) -> None:
    for name, value in {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[001-004]", "SLURM_NTASKS": str(tasks),
                        "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}.items():
        monkeypatch.setenv(name, value)


def test_slurm_step_with_several_tasks(one_machine, monkeypatch):
    slurm(monkeypatch, tasks=4)
    assert cli.detected_cluster() == "slurm"
    cli.maybe_initialize_distributed(None)
    one_machine.assert_called_once_with()  # JAX reads SLURM's variables itself


def test_slurm_job_with_one_task_is_one_machine(one_machine, monkeypatch):
    slurm(monkeypatch, tasks=1)
    cli.maybe_initialize_distributed(None)
    one_machine.assert_not_called()


def test_cloud_tpu_pod_slice(one_machine, monkeypatch):
    """A TPU VM of a v4-32 slice: JAX's GCE TPU detection (metadata server) reports 4 workers."""
    from jax._src.clusters import cloud_tpu_cluster

    monkeypatch.setattr(cloud_tpu_cluster.GceTpuCluster, "is_env_present", classmethod(lambda cls: True))
    monkeypatch.setattr(cloud_tpu_cluster.GceTpuCluster, "get_process_count", classmethod(lambda cls: 4))
    assert cli.detected_cluster() == "gcetpu"
    cli.maybe_initialize_distributed(None)
    one_machine.assert_called_once_with()


def test_single_host_tpu_vm_is_one_machine(one_machine, monkeypatch):
    from jax._src.clusters import cloud_tpu_cluster

    monkeypatch.setattr(cloud_tpu_cluster.GceTpuCluster, "is_env_present", classmethod(lambda cls: True))
    monkeypatch.setattr(cloud_tpu_cluster.GceTpuCluster, "get_process_count", classmethod(lambda cls: 1))
    assert cli.detected_cluster() is None


def test_gke_tpu_slice(one_machine, monkeypatch):
    from jax._src import cloud_tpu_init

    monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", True)
    monkeypatch.setattr("jax._src.clusters.cloud_tpu_cluster.running_in_cloud_tpu_vm", True)
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")  # not a GCE TPU VM: no metadata server to ask
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "tpu-0,tpu-1,tpu-2,tpu-3")
    monkeypatch.setenv("TPU_WORKER_ID", "2")
    monkeypatch.setenv("MEGASCALE_NUM_SLICES", "1")
    assert cli.detected_cluster() == "gketpu"


def test_flag_forces_or_prevents_it(one_machine, monkeypatch):
    cli.maybe_initialize_distributed(True)
    one_machine.assert_called_once_with()
    one_machine.reset_mock()
    slurm(monkeypatch, tasks=4)
    cli.maybe_initialize_distributed(False)
    one_machine.assert_not_called()


# --------------------------------------------------------------------------------------------------
# Segmentation (configs/scenes.py): 2 processes of 2 devices against 1 device, SGD as above.
# --------------------------------------------------------------------------------------------------

PIXEL_ATOL = 1e-3  # rates over ~80k pixels: a few dozen pixels near a tie may flip
# The same few dozen flipped pixels (1e-3 of the 20 test images' 81,920) move a per-class rate by
# flips / the class's pixels (accuracy), and an IoU = I / U by at most 2 flips / U <= 2 flips / the class's
# pixels: the scenes test split's smallest class has 535 labelled pixels there, so 1e-3 is one pixel of it.
PIXEL_FLIPS = 82
# L_one averages over the pixels L_G samples (at most pixels_per_class 64 x 8 classes = 512 a step); as
# for ONE_HOT_ATOL, a pixel near a tie between components may move by up to 0.1. The parameters drift
# apart by rounding over the 10 steps, so more pixels sit near a tie by the last logs: up to
# TIED_PIXELS (seen, two processes against one: 2.9e-4 at one step, 1.7e-3 at a later one).
TIED_PIXELS = 12
PIXEL_ONE_HOT_ATOL = TIED_PIXELS * 0.1 / (64 * 8)
# L_avg: the total variation of each class's hard component usage from uniform, averaged over the classes;
# one of those pixels changing component moves it by at most 1 / (its class's samples x classes).
PIXEL_USAGE_ATOL = TIED_PIXELS / (64 * 8)
SEGMENTATION_LOSS_RTOL = 1e-3


def class_pixel_counts(num_images: int) -> np.ndarray:
    """Labelled pixels of each class in the first `num_images` images of the testbed's test split."""
    from lgmm_jax.data import scenes

    labels = scenes.load("test")["label"][:num_images]
    return np.bincount(labels[labels != 255].ravel(), minlength=scenes.NUM_CLASSES)


def pixel_rate_tolerance(name: str, counts: np.ndarray) -> float:
    """How far a rate of results.json may move when PIXEL_FLIPS pixels flip (see above)."""
    parts = name.split(".")
    if parts[0] == "closed_set" and parts[1] in ("acc", "iou") and parts[-1].isdigit():
        return (1 if parts[1] == "acc" else 2) * PIXEL_FLIPS / max(int(counts[int(parts[-1])]), 1)
    return PIXEL_ATOL


def assert_close_numbers(workdir, reference) -> None:
    """Every number of results.json and every logged metric within rounding of the reference run."""
    got = flat_numbers(json.loads((workdir / "results.json").read_text()))
    want = flat_numbers(json.loads((reference / "results.json").read_text()))
    assert got.keys() == want.keys()
    counts = class_pixel_counts(int(want["closed_set.num_images"]))
    for name, value in want.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("num_"):
            assert got[name] == value, name
        elif name.startswith(("thresholds.", "sml.")):
            np.testing.assert_allclose(got[name], value, rtol=THRESHOLD_RTOL, atol=1e-4, err_msg=name)
        else:
            assert abs(got[name] - value) <= pixel_rate_tolerance(name, counts), (name, got[name], value)
    for run, expected in zip(metrics(workdir), metrics(reference), strict=True):
        for name, value in expected.items():
            atol = {"accuracy": PIXEL_ATOL, "one_hot": PIXEL_ONE_HOT_ATOL, "average_usage": PIXEL_USAGE_ATOL}.get(name, LOSS_ATOL)
            # From hard (argmax) assignments, as in classification's assert_same_training.
            rtol = 1e-2 if name == "effective_components" else SEGMENTATION_LOSS_RTOL
            np.testing.assert_allclose(run[name], value, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.slow
def test_a_segmentation_run_on_two_processes_of_two_devices_gives_the_numbers_of_one_device(
    tmp_path, tmp_path_factory, cache
):
    """L-GMM (its memory bank and mixture are what a sharded step could get wrong; the softmax segmenter
    passed the same comparison when it was written, and costs another three minutes on 2 cores)."""
    args = (*SEGMENTATION_ARGS, "--config.eval.figures=false")  # only numbers are compared
    reference = segmentation_reference_run(tmp_path_factory)
    workdir, port = tmp_path / "two_processes", portpicker.pick_unused_port()
    processes = []
    for index in (0, 1):
        env = cli_env(devices=2, cache=cache, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                      JAX_PROCESS_ID=str(index))
        processes.append(subprocess.Popen(
            main_command(workdir, *args), cwd=REPO, env=env,
            stdout=open(tmp_path / f"process_{index}.out", "w"), stderr=open(tmp_path / f"process_{index}.err", "w"),
        ))
    try:
        statuses = [p.wait(timeout=600) for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert statuses == [0, 0], [(tmp_path / f"process_{i}.err").read_text()[-2000:] for i in (0, 1)]
    assert "on 4 device(s) in 2 process(es)" in (tmp_path / "process_0.out").read_text()
    assert_close_numbers(workdir, reference)
