"""Every config in configs/ passes the run's up-front checks on 1, 2, 4 and 8 devices with its own batch
sizes, and its train state builds abstractly (jax.eval_shape) with the shardings a run would give it.

Paper-scale configs otherwise fail only where their data is (CIFAR, ImageNet: not here) or, worse, after
hours of training (an evaluation batch that does not split over 8 devices). The devices are 8 CPU
devices forced in a subprocess (XLA_FLAGS must be set before jax starts).
"""

import glob
import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.splitext(os.path.basename(path))[0]
    for path in glob.glob(os.path.join(REPO, "configs", "*.py"))
    if not path.endswith("__init__.py")
)

# The segmentation configs with `method=gmmseg` (`name@gmmseg`): GMMSeg's head on the same models.
GMMSEG_RUNS = [f"{name}@gmmseg" for name in ("scenes", "ade20k_deeplabv3plus_r101", "ade20k_segformer_b5",
                                             "cityscapes_deeplabv3plus_r101", "cityscapes_segformer_b5")]


# What each dataset is, from its publication (not from our code): classes and stored image shape.
DATASETS = {
    "digits": (10, (8, 8, 1)),
    "fashion_mnist": (10, (28, 28, 1)),
    "cifar10": (10, (32, 32, 3)),
    "cifar100": (100, (32, 32, 3)),
    "tiny_imagenet": (200, (64, 64, 3)),
    "imagenet2012": (1000, (None, None, 3)),
    # configs/folder_resnet50.py's placeholder: a user's folder of photographs, any class count (10 here).
    "imagefolder=": (10, (None, None, 3)),
    # Segmentation: classes without void (ADE20K's 150 after reduce_zero_label, Cityscapes' 19 train ids,
    # the testbed's background and 7 garments); a segmenter's input is its training crop.
    "scenes": (8, (64, 64, 3)),
    "scenes_garments": (10, (64, 64, 3)),  # the testbed's garments one per image: Fashion-MNIST's classes
    "ade20k": (150, (None, None, 3)),
    "cityscapes": (19, (1024, 2048, 3)),
}

CHECK_EVERY_CONFIG = textwrap.dedent("""
    import importlib, json, sys
    import jax
    from lgmm_jax.training import experiment
    from lgmm_jax.heads import create_model
    from lgmm_jax.data import settings
    from lgmm_jax.runtime.sharding import eval_batch_size, make_mesh
    from lgmm_jax.training.state import create_optimizer, create_train_state, state_shardings

    datasets = json.loads(sys.argv[1])
    report = {}
    for name in sys.argv[2:]:
        module, _, method = name.partition("@")
        config = importlib.import_module(f"configs.{module}").get_config()
        config.method = method or config.method
        protocol = experiment.resolve_protocol(config)
        num_classes, stored_shape = datasets[protocol.dataset]
        if protocol.known_classes is not None:
            num_classes = len(protocol.known_classes)
        preset = settings.preprocess_preset(config, protocol)
        image_shape = (224, 224, 3) if preset.startswith("imagenet") else tuple(stored_shape)
        if config.get("task") == "segmentation":
            image_shape = (*config.segmentation.crop_size, 3)
        rows, abstract_states = [], {}
        for num_devices in (1, 2, 4, 8):
            mesh = make_mesh(num_devices)
            checked = experiment.check_config(config, num_devices)
            # The train state is a function of the checked config (not of the devices): traced once per
            # distinct checked config, sharded for each device count.
            key = checked.to_json()
            if key not in abstract_states:
                model = create_model(checked.model, num_classes)
                optimizer, _ = create_optimizer(checked, steps_per_epoch=100, total_steps=1000)
                abstract_states[key] = jax.eval_shape(
                    lambda: create_train_state(checked, model, optimizer, image_shape, num_classes))
            abstract = abstract_states[key]
            shardings = state_shardings(abstract, mesh, num_classes)
            leaves = jax.tree.leaves(abstract.params)
            rows.append({
                "devices": num_devices,
                "eval_batch_size": eval_batch_size(checked, num_devices),
                "parameters": int(sum(x.size for x in leaves)),
                "memory": None if abstract.memory is None else list(abstract.memory.latents.shape),
                "memory_split": None if abstract.memory is None else str(shardings.memory.latents.spec),
            })
        report[name] = {"batch_size": config.batch_size, "eval_batch_size": config.eval_batch_size,
                        "num_classes": num_classes, "rows": rows, "head": config.model.head,
                        "latent_dim": checked.model.latent_dim, "num_components": config.model.num_components}
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def report():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    completed = subprocess.run(
        [sys.executable, "-c", CHECK_EVERY_CONFIG, json.dumps(DATASETS), *CONFIGS, *GMMSEG_RUNS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_every_config_is_checked(report):
    assert set(report) == set(CONFIGS) | set(GMMSEG_RUNS) and len(CONFIGS) >= 13


@pytest.mark.parametrize("name", CONFIGS + GMMSEG_RUNS)
def test_config_passes_the_up_front_checks_on_1_to_8_devices(report, name):
    entry = report[name]
    # GMMSeg's queues are one per class and component, 32,000 latents each (the testbed's 2,000); the bank
    # one per class.
    module, _, method = name.partition("@")
    rows_per_class, slots = (entry["num_components"], 2_000 if module == "scenes" else 32_000) if method else (1, None)
    for row in entry["rows"]:
        devices = row["devices"]
        assert entry["batch_size"] % devices == 0
        # The evaluation batch is the config's, rounded up to the device count (padding is masked).
        assert row["eval_batch_size"] % devices == 0
        assert entry["eval_batch_size"] <= row["eval_batch_size"] < entry["eval_batch_size"] + devices
        assert row["parameters"] == entry["rows"][0]["parameters"]
        if row["memory"] is not None:
            assert row["memory"][0] == entry["num_classes"] * rows_per_class
            assert slots is None or row["memory"][1:] == [slots, 64]
            splits = row["memory"][0] % devices == 0
            assert ("data" in row["memory_split"]) == splits, row


def test_the_paper_configs_hold_the_published_encoders(report):
    """Parameter counts of the encoders with their heads against torchvision's published counts: the
    ImageNet ResNet-50 softmax model has 25,557,032 parameters; L-GMM swaps the 2048x1000 classifier
    (2,049,000) for a 2048->128 projection (262,272) and a GMM of C*K*D means plus C*D shared scales."""
    resnet50 = report["imagenet_resnet50"]["rows"][0]["parameters"]
    gmm = 1000 * 3 * 128 + 1000 * 128
    assert resnet50 == 25_557_032 - 2_049_000 + 262_272 + gmm


# Published totals with the softmax head (HF transformers' SegFormer, mmseg's
# DeepLabv3+ with its auxiliary head) and the decoder width the head reads.
SEGMENTERS = {
    "ade20k_deeplabv3plus_r101": (62_682_876, 512),
    "cityscapes_deeplabv3plus_r101": (62_582_006, 512),
    "ade20k_segformer_b5": (84_708_694, 768),
    "cityscapes_segformer_b5": (84_607_955, 768),
}
# The paper's SegFormers build GMMSeg's (mainline mmseg's) decode head: each of the 4 stage projections is
# a bias-free 1x1 conv and a BatchNorm (scale and offset) instead of HF's Linear with a bias, +768 each.
MMSEG_SEGFORMER_HEAD = {"ade20k_segformer_b5": 4 * 768, "cityscapes_segformer_b5": 4 * 768}


@pytest.mark.parametrize("name", sorted(SEGMENTERS))
def test_the_paper_segmentation_configs_hold_the_published_models(report, name):
    """L-GMM swaps the 1x1 classifier (E*C + C) for a projection to D dims (E*D + D) and a GMM of C*K*D
    means and C*D shared scales."""
    entry = report[name]
    published, width = SEGMENTERS[name]
    classes, dim, components = entry["num_classes"], entry["latent_dim"], entry["num_components"]
    assert entry["head"] == "lgmm"
    published += MMSEG_SEGFORMER_HEAD.get(name, 0)
    expected = published - (width * classes + classes) + (width * dim + dim) + classes * components * dim + classes * dim
    assert entry["rows"][0]["parameters"] == expected


@pytest.mark.parametrize("name", sorted(SEGMENTERS))
def test_the_paper_segmentation_configs_with_method_gmmseg_hold_gmmsegs_head(report, name):
    """GMMSeg's head (gmmseg_head.py in its repository) swaps the 1x1 classifier (E*C + C) for a bias-free
    1x1 conv to 64 dims with a BatchNorm (E*64 + 2*64), the latent LayerNorm (2*64), per-component means
    and diagonal scales (2*C*K*64) and the LayerNorm over the classes' scores (2*C)."""
    entry = report[f"{name}@gmmseg"]
    published, width = SEGMENTERS[name]
    classes, components = entry["num_classes"], entry["num_components"]
    published += MMSEG_SEGFORMER_HEAD.get(name, 0)
    head = width * 64 + 2 * 64 + 2 * 64 + 2 * classes * components * 64 + 2 * classes
    assert entry["latent_dim"] == 64
    assert entry["rows"][0]["parameters"] == published - (width * classes + classes) + head


# Appendix D.2: "on ADE20K train with crop size 512 x 512 and batch size 16; on Cityscapes train with crop
# size 769 x 769 and batch size 8".
PAPER_CROPS = {
    "ade20k_deeplabv3plus_r101": ((512, 512), 16),
    "ade20k_segformer_b5": ((512, 512), 16),
    "cityscapes_deeplabv3plus_r101": ((769, 769), 8),
    "cityscapes_segformer_b5": ((769, 769), 8),
}


@pytest.mark.parametrize("name", sorted(PAPER_CROPS))
def test_the_paper_segmentation_configs_train_on_appendix_d2s_crops(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    crop, batch_size = PAPER_CROPS[name]
    assert tuple(config.segmentation.crop_size) == crop and config.batch_size == batch_size


@pytest.mark.parametrize("name", ["ade20k_segformer_b5", "cityscapes_segformer_b5"])
def test_the_paper_segformers_use_gmmsegs_decode_head(name):
    """GMMSeg's `SegformerGMMSegHead` (mmseg/models/decode_heads/segformer_gmmseg_head.py in its repository)
    projects each stage with a 1x1 ConvModule (conv, BatchNorm, ReLU), as mainline mmseg's SegformerHead."""
    from lgmm_jax.heads import create_model

    config = importlib.import_module(f"configs.{name}").get_config()
    model = create_model(config.model, 19)
    assert model.decoder.decode_projection == "conv_bn_relu"


def test_an_eval_batch_that_does_not_split_is_rounded_not_refused():
    """The CIFAR configs' 500 does not split over 8 devices: evaluation pads batches to 504."""
    from configs import cifar10
    from lgmm_jax.runtime.sharding import eval_batch_size

    config = cifar10.get_config()
    assert eval_batch_size(config, 8) == 504 and eval_batch_size(config, 4) == 500


def test_a_training_batch_that_does_not_split_is_refused_up_front():
    from configs import default
    from lgmm_jax.training import experiment

    config = default.get_config()
    config.batch_size = 60
    with pytest.raises(ValueError, match="batch_size=60 does not split evenly over 8 devices.*multiple of 8"):
        experiment.check_config(config, 8)
