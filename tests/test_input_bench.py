"""bench/input.py at a tiny size: a rate for every path and worker count, the library's batches in each
preset's shape and dtype, its training streams as the classification and segmentation tasks' own streams
give them, the transform before issue 41 beside the library's, the one-core measurement, issue 41's
ratios, and (where torch is installed) the torchvision side beside them."""
import contextlib
import io
import json
import types

import ml_collections
import numpy as np
import pytest

from tests import bench_scripts

BATCH = 4
TINY = [f"--batch_size={BATCH}", "--num_images=8", "--repeats=1", "--seconds=0.01",
        "--cityscapes_size=256x512"]


@pytest.fixture(scope="module")
def input_bench():
    return bench_scripts.load("input")


def run_main(script, argv: list[str]) -> dict:
    """The script's main in this process; the JSON object of its last printed line."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        returned = script.main(argv)
    last = json.loads(printed.getvalue().strip().splitlines()[-1])
    assert last == json.loads(json.dumps(returned))
    return last


@pytest.fixture(scope="module")
def tiny_run(input_bench, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("input_bench")
    return run_main(input_bench, TINY + ["--workers=0,1", "--no-torch", f"--workdir={workdir}"])


def test_every_path_and_worker_count_has_a_rate(input_bench, tiny_run):
    results = tiny_run["results"]
    assert list(results) == list(input_bench.DEFAULT_PATHS)
    assert tiny_run["torchvision_skipped"] == "--no-torch"
    for name, sides in results.items():
        assert list(sides) == ["lgmm_jax"], name
        ours = sides["lgmm_jax"]
        assert ours["one_thread"]["median"] > 0 and ours["one_thread"]["ms_per_example"][0] > 0, name
        assert list(ours["workers"]) == ["0", "1"], name
        assert ours["workers"]["0"]["median"] > 0 and ours["workers"]["1"]["median"] > 0, name
    cores = {row["path"] for row in tiny_run["accelerator_cores"]}
    assert cores == {"imagenet", "imagenet_swin"}


def test_the_transform_before_issue_41_beside_the_librarys(tiny_run):
    results = tiny_run["results"]
    for name, sides in results.items():
        ours = sides["lgmm_jax"]
        if name in ("imagenet", "imagenet_swin"):
            assert ours["one_thread_before"]["median"] > 0, name
            assert ours["now_over_before"]["of_medians"] > 0 and len(ours["now_over_before"]["per_repeat"]) == 1
        else:
            assert "one_thread_before" not in ours, name


def test_the_one_core_measurement_runs_the_librarys_defaults_on_one_cpu(tiny_run):
    results = tiny_run["results"]
    train, evaluation = results["imagenet"]["lgmm_jax"]["one_core"], results["eval_imagenet"]["lgmm_jax"]["one_core"]
    assert train["median"] > 0 and evaluation["median"] > 0
    assert train["workers"] == 1 and evaluation["workers"] == 0  # settings.workers_for on one core; eval_workers
    assert len(train["cpus"]) == len(evaluation["cpus"]) == 1 and train["threads"] == 4
    assert "one_core" not in results["cifar"]["lgmm_jax"]
    assert results["imagenet"]["lgmm_jax"]["default_workers"] == min(len(tiny_run["cpus"]), 32)
    assert results["eval_imagenet"]["lgmm_jax"]["default_workers"] == 0


def test_issue_41s_ratios(input_bench, tiny_run):
    ratios = tiny_run["issue_ratios"]
    assert list(ratios) == [key for key, _, _ in input_bench.ISSUE_GOALS]
    for key in ("one_example_imagenet", "one_example_imagenet_swin", "eval_cores_over_one_core"):
        assert ratios[key]["of_medians"] > 0, key
    assert ratios["one_example_imagenet"]["met"] in (True, False) and "met" not in ratios["one_example_imagenet_swin"]
    for key in ("train_over_torchvision", "swin_over_torchvision"):  # --no-torch
        assert ratios[key].get("of_medians") is None and ratios[key]["missing"], key
    if tiny_run["results"]["imagenet"]["lgmm_jax"]["default_workers"] > 1:  # not in --workers=0,1
        assert "--workers" in ratios["train_cores_over_one_core"]["missing"]
        assert ratios["train_cores_over_one_core"].get("of_medians") is None
    else:
        assert ratios["train_cores_over_one_core"]["of_medians"] > 0
    summary = {"imagenet": {"lgmm_jax": {"default_workers": 2, "workers": {"2": {"images_per_s": [300.0, 320.0],
                                                                              "median": 310.0}},
                                         "one_core": {"images_per_s": [160.0, 200.0], "median": 180.0,
                                                      "workers": 1, "threads": 4, "cpus": [0]}},
                            "torchvision": {"workers": {"2": {"images_per_s": [250.0, 240.0], "median": 245.0}}}}}
    made = input_bench.issue_ratios(summary, 4)
    assert made["train_cores_over_one_core"]["of_medians"] == round(310 / 180, 3)
    assert made["train_cores_over_one_core"]["per_repeat"] == [1.875, 1.6] and made["train_cores_over_one_core"]["met"]
    assert made["train_over_torchvision"]["of_medians"] == round(310 / 245, 3)
    assert made["train_over_torchvision"]["met"] is False
    assert "imagenet_swin" in made["swin_over_torchvision"]["missing"]


def test_a_measured_stream_is_closed(input_bench):
    closed = []

    class Stream:
        def __init__(self):
            self.batches = iter([{"image": np.zeros((2, 4, 4, 3), np.uint8)}] * 3)

        def __next__(self):
            return next(self.batches)

        def close(self):
            closed.append(True)

    side = input_bench.Side("fake", lambda path, workers: Stream(), lambda path: None)
    args = types.SimpleNamespace(seconds=1.0, batches=1)
    result = input_bench.measure_stream(side, input_bench.PATHS["imagenet"], 0, args)
    assert result["images_per_s"] > 0 and result["dtype"] == "uint8" and closed == [True]


def test_the_library_batches_have_each_presets_shape(input_bench, tiny_run):
    shapes = {name: sides["lgmm_jax"]["output"]["shape"] for name, sides in tiny_run["results"].items()}
    assert shapes["imagenet"] == [BATCH, 224, 224, 3]
    assert shapes["imagenet_swin"] == shapes["eval_imagenet"] == [BATCH, 224, 224, 3]
    assert shapes["cifar"] == [BATCH, 32, 32, 3]
    assert shapes["ade20k_512"] == [BATCH, 512, 512, 3]
    assert shapes["cityscapes_769"] == [BATCH, 769, 769, 3]
    for name, shape in shapes.items():
        assert tuple(shape[1:]) == input_bench.PATHS[name].shape
    dtypes = {name: sides["lgmm_jax"]["output"]["dtype"] for name, sides in tiny_run["results"].items()}
    assert dtypes == {"cifar": "uint8", "imagenet": "uint8", "imagenet_swin": "float32", "eval_imagenet": "float32",
                      "ade20k_512": "float32", "cityscapes_769": "float32"}  # as the tasks' streams give them


def test_the_header_states_the_data(tiny_run):
    data = tiny_run["data"]
    assert data["imagenet"]["files"] == 8 and data["imagenet"]["encoding"].startswith("JPEG")
    assert 300 <= data["imagenet"]["height"][0] <= data["imagenet"]["height"][1] <= 375
    assert 400 <= data["imagenet"]["width"][0] <= data["imagenet"]["width"][1] <= 500
    assert data["cifar"]["height"] == data["cifar"]["width"] == [32, 32]
    assert data["ade20k"]["height"] == [512, 512] and data["ade20k"]["width"] == [683, 683]
    assert data["cityscapes"]["height"] == [256, 256] and "stand-in" in data["cityscapes"]["stand_in"]


def test_the_segmentation_crops_are_the_segmentation_tasks_stream(input_bench, tmp_path):
    from lgmm_jax.tasks.segmentation.task import TASK

    input_bench.write_ade20k(tmp_path, 4, (96, 128), input_bench.photographs(), np.random.default_rng(0))
    path = input_bench.PATHS["ade20k_512"]
    source = input_bench.get_segmentation_source("ade20k", "train", str(tmp_path))
    config = input_bench.segmentation_config(path, 2)
    config.data.workers = 0
    streams = (input_bench.library_batches(path, source, types.SimpleNamespace(batch_size=2, threads=0), 0),
               TASK.train_stream(config, None, source, "none"))
    try:
        ours, task = (next(stream) for stream in streams)
    finally:
        for stream in streams:
            stream.close()
    assert ours["image"].shape == (2, 512, 512, 3)
    for key in ("image", "label"):
        np.testing.assert_array_equal(ours[key], task[key])


@pytest.mark.parametrize("name", ["imagenet", "imagenet_swin"])
def test_the_training_streams_are_the_classification_tasks_stream(input_bench, tmp_path, name):
    from lgmm_jax.tasks.classification.task import TASK

    input_bench.write_classification(tmp_path / "imagenet", 4, input_bench.photographs(), input_bench.imagenet_size,
                                     ".JPEG", input_bench.save_jpeg, np.random.default_rng(0))
    path = input_bench.PATHS[name]
    source = input_bench.library_source(path, tmp_path, None)
    config = ml_collections.ConfigDict({"batch_size": 2, "seed": input_bench.SEED, "data": {"workers": 0}})
    protocol = types.SimpleNamespace(known_classes=None, dataset=path.normalization)
    ours = input_bench.library_batches(path, source, types.SimpleNamespace(batch_size=2, threads=0), 0)
    task = TASK.train_stream(config, protocol, source, path.preset)
    try:
        ours_batch, task_batch = next(ours), next(task)
    finally:
        ours.close()
        task.close()
    for key in ("image", "label"):
        assert ours_batch[key].dtype == task_batch[key].dtype
        np.testing.assert_array_equal(ours_batch[key], task_batch[key])


def test_torchvision_beside_it_where_torch_is_installed(input_bench, tmp_path):
    pytest.importorskip("torchvision")
    result = run_main(input_bench, TINY + ["--workers=0", "--paths=cifar,eval_imagenet", f"--workdir={tmp_path}"])
    assert result["torchvision_skipped"] is None
    for name in ("cifar", "eval_imagenet"):
        theirs = result["results"][name]["torchvision"]
        assert theirs["workers"]["0"]["median"] > 0 and theirs["one_thread"]["median"] > 0
        assert result["results"][name]["ours_over_torchvision"]["0"]["of_medians"] > 0
    assert result["results"]["eval_imagenet"]["torchvision"]["output"]["shape"] == [BATCH, 3, 224, 224]
