"""configs/folder_resnet50.py: fine-tuning on a folder of one's own labelled images from ImageNet weights.

The folder is written here from scikit-image's photographs: one class per photograph, each image a crop
of it at one of several sizes, saved as PNG or JPEG (`photo_folder`). Two runs of the config:

- as written, from a torchvision-layout ResNet-50 file with random weights (torchvision's entry names
  and shapes from tests/fixtures/pretrained/torchvision_resnet50.npz, values from the fixture generator):
  its step-0 checkpoint holds every array of the file, converted here from PyTorch's layout;
- with a small encoder (small_cnn on 32x32 inputs, from scratch) for a few steps: the run ends with a
  results.json that has the closed-set top-1 and the open-set AUROC against the class left unknown.
"""
from __future__ import annotations

import contextlib
import json
import re

import jax
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image
from skimage import data as skimage_data

import configs.folder_resnet50
from lgmm_jax.runtime import checkpointing
from lgmm_jax.training import restore, train
from lgmm_jax.runtime.sharding import make_mesh
from lgmm_jax.training.state import create_optimizer, create_train_state, state_shardings
from tests.test_pretrained import published, write

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # the class names: one photograph each
KNOWN = ("astronaut", "chelsea", "coffee")  # rocket is the unknown class
IMAGES_PER_CLASS = 28
CROP_SIZES = ((40, 56), (64, 48), (50, 50), (72, 60), (36, 44), (58, 70))  # (height, width)


def crop(photo: np.ndarray, index: int) -> np.ndarray:
    """The `index`-th crop of a photograph: its size cycles through CROP_SIZES, its corner moves."""
    height, width = CROP_SIZES[index % len(CROP_SIZES)]
    top = 17 * index % (photo.shape[0] - height)
    left = 29 * index % (photo.shape[1] - width)
    return photo[top:top + height, left:left + width]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """An ImageFolder: a subfolder per photograph with IMAGES_PER_CLASS crops of it, PNG and JPEG alternating."""
    root = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        photo = getattr(skimage_data, name)()
        (root / name).mkdir()
        for index in range(IMAGES_PER_CLASS):
            suffix = "png" if index % 2 else "jpg"
            Image.fromarray(crop(photo, index)).save(root / name / f"{index:02d}.{suffix}")
    return root


def folder_config(folder, **overrides):
    """configs/folder_resnet50.py on `folder`, logged every step, without figures; `overrides` are
    flattened keys."""
    config = configs.folder_resnet50.get_config()
    config.dataset = f"imagefolder={folder}"
    config.log_every_steps = 1
    config.eval.figures = False
    config.update_from_flattened_dict(overrides)
    return config


# ------------------------------------------------------------------------------------------------------
# From torchvision's ResNet-50 file
# ------------------------------------------------------------------------------------------------------


def our_module(torch_module: str) -> str:
    """Our ResNet's module for a torchvision ResNet module name (e.g. layer2.0.downsample.1 ->
    stage2_block1/proj_bn)."""
    if torch_module in ("conv1", "bn1"):
        return {"conv1": "stem_conv", "bn1": "stem_bn"}[torch_module]
    stage, block, rest = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", torch_module).groups()
    layer = {"downsample.0": "proj_conv", "downsample.1": "proj_bn"}.get(rest)
    if layer is None:
        kind, number = re.fullmatch(r"(conv|bn)(\d)", rest).groups()
        layer = f"{'Conv' if kind == 'conv' else 'BatchNorm'}_{int(number) - 1}"
    return f"stage{stage}_block{int(block) + 1}/{layer}"


def expected_backbone(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{'params/backbone/...' or 'batch_stats/backbone/...': array} that a torchvision ResNet-50 state dict
    becomes: conv weights [O, I, kh, kw] -> kernels [kh, kw, I, O]; BatchNorm weight, bias -> scale, bias;
    running_mean, running_var -> the batch statistics. The classifier `fc` and `num_batches_tracked` are
    not part of the backbone."""
    expected = {}
    for name, value in state_dict.items():
        module, leaf = name.rsplit(".", 1)
        if module == "fc" or leaf == "num_batches_tracked":
            continue
        where = f"backbone/{our_module(module)}"
        if leaf == "weight" and value.ndim == 4:
            expected[f"params/{where}/kernel"] = value.transpose(2, 3, 1, 0)
        else:
            collection, ours = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                                "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}[leaf]
            expected[f"{collection}/{where}/{ours}"] = value
    return expected


def restored_step(workdir, step: int) -> dict[str, np.ndarray]:
    """{'params/...', 'batch_stats/...': array} of checkpoint `step` of a workdir, restored as evaluation
    restores a run (its config.json, the train state's structure, `checkpointing.restore_step`)."""
    config = checkpointing.read_config(str(workdir))
    _, _, num_classes, input_shape, model = restore.configured_model(config)
    optimizer, _ = create_optimizer(config, steps_per_epoch=1, total_steps=1)
    abstract = jax.eval_shape(lambda: create_train_state(config, model, optimizer, input_shape, num_classes))
    shardings = state_shardings(abstract, make_mesh(), num_classes)
    with contextlib.closing(checkpointing.open_manager(str(workdir), config, read_only=True)) as manager:
        state = checkpointing.restore_step(manager, step, abstract, shardings).state
    tree = {"params": state.params, "batch_stats": state.batch_stats}
    return {"/".join(key): np.asarray(value) for key, value in traverse_util.flatten_dict(tree).items()}


@pytest.mark.slow  # ResNet-50 at 224x224 on the CPU: a 100 MB weights file, one train step and its compilation
def test_the_fine_tuning_run_starts_from_every_array_of_the_torchvision_file(photo_folder, tmp_path):
    weights = write("torchvision_resnet50", tmp_path)
    workdir = tmp_path / "run"
    config = folder_config(photo_folder, **{"init.weights": weights, "batch_size": 2, "eval_batch_size": 8,
                                            "num_train_steps": 1, "eval.scores": ("likelihood",)})
    train.train_and_evaluate(config, str(workdir))

    step0 = restored_step(workdir, 0)
    expected = expected_backbone(published("torchvision_resnet50"))
    assert {name for name in step0 if name.split("/")[1] == "backbone"} == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(step0[name], value, err_msg=name)
    report = json.loads((workdir / "init_weights.json").read_text())
    assert report["layout"] == "torchvision ResNet" and {"fc.weight", "fc.bias"} <= set(report["ignored"])
    assert set(report["loaded"]) == set(expected)


def test_a_small_encoder_runs_the_config_end_to_end_on_a_folder(photo_folder, tmp_path):
    """small_cnn on 32x32 images (every image resized), 6 steps from scratch; the unknown class is the
    photograph left out of `known_classes`. Of each class's 28 images the carve holds out round(28 * 0.2) =
    6 for test and round(28 * 0.1) = 3 for validation, leaving 19 to train on: 57 known training images,
    at least the 50 neighbours the KNN scores need."""
    workdir = tmp_path / "run"
    config = folder_config(photo_folder, **{
        "known_classes": KNOWN, "model.encoder": "small_cnn", "preprocess": "none", "data.image_size": (32, 32),
        "batch_size": 8, "eval_batch_size": 16, "num_train_steps": 6})
    train.train_and_evaluate(config, str(workdir))

    results = json.loads((workdir / "results.json").read_text())
    test_per_class = round(IMAGES_PER_CLASS * 0.2)
    assert results["closed_set"]["num_examples"] == len(KNOWN) * test_per_class
    assert 0.0 <= results["closed_set"]["top1"] <= 1.0
    unknown = results["open_set"]["unknown_classes"]
    assert unknown["num_examples"] == (len(PHOTOS) - len(KNOWN)) * test_per_class
    assert 0.0 <= unknown["likelihood"]["auroc"] <= 1.0
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["data"]["normalization"] == "imagenet2012" and saved["model"]["encoder"] == "small_cnn"
    assert [entry["name"] for entry in saved["data"]["classes"]] == sorted(PHOTOS)
