"""bench/feed.py at a tiny size on the CPU: a classification and a segmentation paper config's train step, fed
by the library's stream and by a batch on the device, with XLA's FLOP count. The references: the step
counts and batch sizes asked for, the wait a stream read in the main process cannot hide (workers=0: every
batch is read between steps), the paper dataset's class count and the tiny crop."""
import contextlib
import io
import json

import jax
import pytest

from tests import bench_scripts


@pytest.fixture(scope="module")
def feed_bench():
    return bench_scripts.load("feed")


def test_tiny_paper_configs_fed_and_resident(feed_bench, tmp_path):
    printed = io.StringIO()
    argv = ["--tiny", "--steps=2", "--configs=cifar100,ade20k_segformer_b5", "--num_images=8", "--batch_size=4",
            "--workers=0", f"--workdir={tmp_path}"]
    with contextlib.redirect_stdout(printed):
        summary = feed_bench.main(argv)
    assert json.loads(printed.getvalue().strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    assert summary["platform"] == "cpu" and summary["devices"] == jax.device_count()
    assert list(summary["results"]) == ["cifar100", "ade20k_segformer_b5"]
    for name, row in summary["results"].items():
        assert row["steps"] == 2 and row["batch_size"] == 4 and row["workers"] == 0, name
        assert row["resident_images_per_s"] > 0 and row["fed_images_per_s"] > 0, name
        assert 0 < row["input_wait"] < 1, name  # read in the main process: some of every step waits
        assert row["gflop_per_step"] > 0, name
        assert row["resident_flops_utilisation"] is None, name  # no peak for a CPU
    assert summary["results"]["cifar100"]["num_classes"] == 100  # the paper dataset's, not the written data's
    assert summary["results"]["ade20k_segformer_b5"]["image_shape"] == [64, 64, 3]
