"""bench/input.py at a tiny size: a rate for every path and worker count, the library's batches in each
preset's shape, its segmentation crops as the segmentation task's own stream gives them, and (where torch
is installed) the torchvision side beside them."""
import contextlib
import inspect
import io
import json
import types

import numpy as np
import pytest

from lgmm_jax.data import pipeline
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


def pipeline_has_workers() -> bool:
    return all("workers" in inspect.signature(f).parameters for f in (pipeline.train_iterator, pipeline.eval_batches))


def test_every_path_and_worker_count_has_a_rate(input_bench, tiny_run):
    results = tiny_run["results"]
    assert list(results) == list(input_bench.DEFAULT_PATHS)
    assert tiny_run["torchvision_skipped"] == "--no-torch"
    for name, sides in results.items():
        assert list(sides) == ["lgmm_jax"], name
        ours = sides["lgmm_jax"]
        assert ours["one_thread"]["median"] > 0 and ours["one_thread"]["ms_per_example"][0] > 0, name
        assert list(ours["workers"]) == ["0", "1"], name
        assert ours["workers"]["0"]["median"] > 0, name
        if pipeline_has_workers():
            assert ours["workers"]["1"]["median"] > 0, name
        else:  # until the pipeline takes workers=: said, not measured
            assert ours["workers"]["1"]["median"] is None and "workers=" in ours["workers"]["1"]["skipped"], name
    cores = {row["path"] for row in tiny_run["accelerator_cores"]}
    assert cores == {"imagenet", "imagenet_swin"}


def test_the_library_batches_have_each_presets_shape(input_bench, tiny_run):
    shapes = {name: sides["lgmm_jax"]["output"]["shape"] for name, sides in tiny_run["results"].items()}
    assert shapes["imagenet"] == [BATCH, 224, 224, 3]
    assert shapes["imagenet_swin"] == shapes["eval_imagenet"] == [BATCH, 224, 224, 3]
    assert shapes["cifar"] == [BATCH, 32, 32, 3]
    assert shapes["ade20k_512"] == [BATCH, 512, 512, 3]
    assert shapes["cityscapes_769"] == [BATCH, 769, 769, 3]
    for name, shape in shapes.items():
        assert tuple(shape[1:]) == input_bench.PATHS[name].shape


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
    ours = next(input_bench.library_batches(path, source, types.SimpleNamespace(batch_size=2, threads=0), 0))
    task = next(TASK.train_stream(config, None, source, "none"))
    assert ours["image"].shape == (2, 512, 512, 3)
    for key in ("image", "label"):
        np.testing.assert_array_equal(ours[key], task[key])


def test_torchvision_beside_it_where_torch_is_installed(input_bench, tmp_path):
    pytest.importorskip("torchvision")
    result = run_main(input_bench, TINY + ["--workers=0", "--paths=cifar,eval_imagenet", f"--workdir={tmp_path}"])
    assert result["torchvision_skipped"] is None
    for name in ("cifar", "eval_imagenet"):
        theirs = result["results"][name]["torchvision"]
        assert theirs["workers"]["0"]["median"] > 0 and theirs["one_thread"]["median"] > 0
        assert result["results"][name]["ours_over_torchvision"]["0"]["of_medians"] > 0
    assert result["results"]["eval_imagenet"]["torchvision"]["output"]["shape"] == [BATCH, 3, 224, 224]
