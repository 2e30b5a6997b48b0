"""Your own images, end to end: a labelled folder of Fashion-MNIST garments written as image files of mixed
sizes and modes (with scikit-image photographs as a further class, one corrupt JPEG, one zero-byte file,
one hidden file and an EXIF-rotated JPEG) trained with three known classes by the command the README gives,
killed and resumed, and on two devices.

The runs use SGD (a sharded batch sums its gradient in another order; SGD keeps such differences at
rounding size, see tests/test_distributed.py, whose tolerances and comparison this module reuses).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from lgmm_jax.data.sources import FASHION_MNIST_DIR, load_fashion_mnist_source
from tests.test_cli import (
    committed_steps,
    compilation_cache,
    metrics_without_timing,
    run_main,
    start_main,
    wait_for,
)
from tests.test_distributed import assert_same_results

pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist")

GARMENTS = {"tshirt": 0, "trouser": 1, "pullover": 2, "dress": 3, "sandal": 5}
KNOWN = ("tshirt", "trouser", "pullover")
PER_CLASS = 60
STEPS = 30
ARGS_WITHOUT_DATA = (
    "--config.protocol=",
    f"--config.known_classes={KNOWN!r}",
    "--config.preprocess=none",
    f"--config.num_train_steps={STEPS}",
    "--config.batch_size=32",
    "--config.log_every_steps=5",
    "--config.checkpoint_every_steps=10",
    "--config.optimizer.name=sgd",
    "--config.optimizer.learning_rate=0.005",
    "--config.optimizer.gmm_learning_rate=0.005",
    "--config.eval.figures=false",
    # The head's density scores: the post-hoc read-outs fit covariances of 128-d features on ~100 training
    # images here, ill-conditioned enough that 2 devices' rounding swaps a dozen pairs, and after 30 steps the
    # posterior is nearly flat (AUROC ~0.59), so rounding swaps pairs of its near-tied scores (seen: 6).
    "--config.eval.scores=('likelihood', 'marginal')",
)


def garment_file(path: str, image: np.ndarray, index: int) -> None:
    """One garment as users have files: sizes 28, 32 or 36 pixels, and PNG in L / RGB / palette or JPEG."""
    size = (28, 32, 36)[index % 3]
    picture = Image.fromarray(image[..., 0]).resize((size, size), Image.Resampling.BILINEAR)
    kind = index % 4
    if kind == 1:
        picture = picture.convert("RGB")
    elif kind == 2:
        picture = picture.convert("P")
    if kind == 3:
        picture.convert("RGB").save(path.replace(".png", ".jpg"), quality=92)
    else:
        picture.save(path)


def write_folder(root) -> None:
    """root/<garment>/*.png|jpg (the first file of every class 28x28: the network's input size), a
    'photo' class of scikit-image photograph crops, and the files a real folder has."""
    garments = load_fashion_mnist_source("train")
    for name, label in GARMENTS.items():
        os.makedirs(root / name)
        picks = np.flatnonzero(garments.labels == label)[:PER_CLASS]
        for i, index in enumerate(picks):
            garment_file(str(root / name / f"{i:03d}.png"), garments[int(index)]["image"], i)
    os.makedirs(root / "photo")
    astronaut = skimage_data.astronaut()
    for i in range(20):
        crop = astronaut[20 * i:20 * i + 40, 15 * i:15 * i + 40]
        Image.fromarray(crop).save(root / "photo" / f"{i:03d}.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(skimage_data.coffee()[:40, :32]).save(root / "photo" / "phone.jpg", exif=exif.tobytes())
    (root / "tshirt" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "trouser" / "empty.png").write_bytes(b"")
    (root / "trouser" / ".hidden.png").write_bytes(b"junk")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_images") / "garments"
    write_folder(root)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return compilation_cache(tmp_path_factory)


def args(folder) -> tuple[str, ...]:
    return (f"--config.dataset=imagefolder={folder}", *ARGS_WITHOUT_DATA)


@pytest.fixture(scope="module")
def uninterrupted(folder, cache, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("own_images_run") / "run"
    result = run_main(workdir, *args(folder), cache=cache)
    assert result.returncode == 0, result.stderr
    return workdir, result


def test_a_run_on_a_folder_with_three_known_classes(uninterrupted, folder):
    workdir, result = uninterrupted
    results = json.loads((workdir / "results.json").read_text())
    assert 0.5 < results["closed_set"]["top1"] <= 1.0  # three garment classes after 30 steps
    unknown = results["open_set"]["unknown_classes"]
    assert 0.5 < unknown["likelihood"]["auroc"] <= 1.0
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["image_size"] == [28, 28]  # the first training image's size
    assert [c["name"] for c in config["data"]["classes"]] == sorted([*GARMENTS, "photo"])
    assert config["data"]["classes"][0]["path"] == os.path.join(str(folder), "dress")
    # The unknown set: every test file of dress, sandal and photo; the known test: tshirt, trouser, pullover.
    listing = [line.split() for line in (workdir / "splits" / "test.txt").read_text().splitlines()]
    names = sorted([*GARMENTS, "photo"])
    unknown_files = [path for path, label in listing if names[int(label)] not in KNOWN]
    excluded = results["unreadable_files"]
    assert unknown["num_examples"] == len(unknown_files) - excluded["unknown_classes"]["count"]
    assert results["closed_set"]["num_examples"] == len(listing) - len(unknown_files) - excluded["test"]["count"]
    # The two bad files (of known classes) are listed by training or counted by evaluation, wherever the
    # carve put them.
    bad = {str(folder / "tshirt" / "corrupt.jpg"), str(folder / "trouser" / "empty.png")}
    in_training = set(line.split("\t")[0] for line in (workdir / "unreadable_files.txt").read_text().splitlines()) \
        if (workdir / "unreadable_files.txt").exists() else set()
    in_evaluation = {path for entry in excluded.values() for path in entry["files"]}
    train_list = (workdir / "splits" / "train.txt").read_text()
    for path in bad:
        relative = os.path.relpath(path, folder)
        assert path in (in_training if f"{relative} " in train_list else in_evaluation), path
    assert ".hidden" not in "".join((workdir / "splits" / f"{s}.txt").read_text() for s in ("train", "test"))


@pytest.mark.slow  # three CLI runs of 30 steps
def test_killed_and_rerun_ends_as_the_uninterrupted_run(uninterrupted, folder, cache, tmp_path):
    reference, _ = uninterrupted
    workdir = tmp_path / "run"
    process = start_main(workdir, *args(folder), log=tmp_path / "killed", cache=cache)
    try:
        wait_for(lambda: committed_steps(workdir), what="the first checkpoint")
    finally:
        process.kill()
    process.wait(timeout=60)
    assert not (workdir / "results.json").exists()
    rerun = run_main(workdir, *args(folder), cache=cache)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((workdir / "results.json").read_text()) == json.loads((reference / "results.json").read_text())
    assert metrics_without_timing(workdir) == metrics_without_timing(reference)


@pytest.mark.slow  # a CLI run of 30 steps on 2 devices
def test_two_devices_give_the_numbers_of_one(uninterrupted, folder, cache, tmp_path):
    reference, _ = uninterrupted
    result = run_main(tmp_path / "run", *args(folder), devices=2, cache=cache)
    assert result.returncode == 0, result.stderr
    assert "on 2 device(s)" in result.stdout
    results = json.loads((reference / "results.json").read_text())
    known, unknown = results["closed_set"]["num_examples"], results["open_set"]["unknown_classes"]["num_examples"]
    # Two known-unknown pairs may swap (test_distributed's allowance is for its ~70k pairs): AUROC moves by
    # 1 / pairs per swap; average precision by at most 1 / (its positives) per swap.
    assert_same_results(tmp_path / "run", reference, auroc_atol=2 / (known * unknown),
                        aupr_atol=2 / min(known, unknown))
