"""Tests of the encoder registry: published parameter counts and widths, shapes, train/eval behaviour,
bfloat16 compute, and the error messages."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgmm_jax.models import backbones

# Published parameter counts with a 1000-way head at 224x224x3 (torchvision model docs; timm agrees for
# Swin), and kuangliu/pytorch-cifar ResNet18 with 10 classes. BatchNorm buffers are not parameters.
PUBLISHED_PARAMETER_COUNTS = [
    ("resnet18", 1000, 224, 11_689_512),
    ("resnet34", 1000, 224, 21_797_672),
    ("resnet50", 1000, 224, 25_557_032),
    ("resnet101", 1000, 224, 44_549_160),
    ("resnet152", 1000, 224, 60_192_808),
    ("swin_t", 1000, 224, 28_288_354),
    ("swin_s", 1000, 224, 49_606_258),
    ("swin_b", 1000, 224, 87_768_224),
    ("cifar_resnet18", 10, 32, 11_173_962),
]

# Pooled feature widths of the published architectures (input width of their classifier layer).
PUBLISHED_FEATURE_WIDTHS = {
    "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
    "cifar_resnet18": 512, "cifar_resnet34": 512, "cifar_resnet50": 2048, "cifar_resnet101": 2048,
    "swin_t": 768, "swin_s": 768, "swin_b": 1024,
    "cifar_swin_t": 768, "cifar_swin_s": 768, "cifar_swin_b": 1024,
    "small_cnn": 128,
    # NVlabs' MiT classifiers (SegFormer's mix_transformer.py): embed_dims[3].
    "mit_b0": 256, "mit_b1": 512, "mit_b2": 512, "mit_b3": 512, "mit_b4": 512, "mit_b5": 512,
}

TINY_SWIN = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), patch_size=2, window_size=4)


def count_parameters(variables) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def init_variables(model, images):
    """Variables of `model` for `images`, initialised under jit (one compilation instead of many ops)."""
    return jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), images)


def random_variables(model, images, seed=0):
    """Variables of `model`'s shapes filled from numpy: BatchNorm running stats at their initial 0 / 1,
    other scales near 1, kernels and tables ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2).

    Compiling the initialisers costs seconds per model on XLA:CPU; these tests need only plausible values.
    """
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "mean":
            return np.zeros(leaf.shape, np.float32)
        if name == "var":
            return np.ones(leaf.shape, np.float32)
        if name == "scale":
            values = 1 + 0.1 * rng.normal(size=leaf.shape)
        elif leaf.ndim > 1:
            values = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        else:
            values = 0.1 * rng.normal(size=leaf.shape)
        return values.astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def random_images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def abstract_init_with_output(model, images_shape):
    """Shapes of (output, variables) of `model.init` without computing anything."""
    return jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros(images_shape), train=False)
    )


@pytest.mark.parametrize("name,num_classes,size,expected", PUBLISHED_PARAMETER_COUNTS)
def test_parameter_counts_match_published_models(name, num_classes, size, expected):
    model = backbones.create_classifier(name, num_classes)
    logits, variables = abstract_init_with_output(model, (1, size, size, 3))
    assert count_parameters(variables) == expected
    assert logits.shape == (1, num_classes)


def test_registry_lists_every_family():
    assert set(backbones.BACKBONE_NAMES) == set(PUBLISHED_FEATURE_WIDTHS)


@pytest.mark.parametrize("name", backbones.BACKBONE_NAMES)
def test_every_encoder_gives_pooled_features_of_published_width(name):
    height, width, channels = backbones.default_input_shape(name)
    features, _ = abstract_init_with_output(
        backbones.create_backbone(name), (2, height, width, channels)
    )
    assert features.shape == (2, PUBLISHED_FEATURE_WIDTHS[name])
    assert backbones.feature_dim(name) == PUBLISHED_FEATURE_WIDTHS[name]


@pytest.mark.parametrize("size", [8, 28])
def test_small_cnn_runs_on_8x8_and_28x28_grayscale(size):
    model = backbones.create_classifier("small_cnn", 10)
    images = random_images((4, size, size, 1))
    variables = init_variables(model, images)
    logits = jax.jit(functools.partial(model.apply, train=False))(variables, images)
    assert logits.shape == (4, 10)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


def test_cifar_resnet18_forward_train_and_eval():
    model = backbones.create_backbone("cifar_resnet18")
    images = random_images((2, 32, 32, 3))
    variables = random_variables(model, images)
    eval_features = jax.jit(functools.partial(model.apply, train=False))(variables, images)
    train_features, updates = jax.jit(
        functools.partial(model.apply, train=True, mutable=["batch_stats"])
    )(variables, images)
    assert eval_features.shape == train_features.shape == (2, 512)
    assert np.all(np.isfinite(eval_features)) and np.all(np.isfinite(train_features))
    # BatchNorm: batch statistics in training, running averages (still at their init) in evaluation.
    assert not np.allclose(eval_features, train_features, atol=1e-3)
    changed = jax.tree.map(
        lambda old, new: not np.allclose(old, new), variables["batch_stats"], updates["batch_stats"]
    )
    assert all(jax.tree.leaves(changed))


def _first_layer_output(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """3x3 stride-1 zero-padded cross-correlation written out in numpy: [B, H, W, Cin] -> [B, H, W, Cout]."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # [B,H,W,Cin,3,3]
    return np.einsum("bhwcij,ijco->bhwo", windows, kernel)


def test_batch_norm_uses_batch_statistics_in_training_and_running_averages_in_evaluation():
    model = backbones.create_backbone("small_cnn")
    images = random_images((16, 8, 8, 1))
    variables = random_variables(model, images)
    train = jax.jit(lambda v: model.apply(v, images, train=True, mutable=["batch_stats"]))
    evaluate = jax.jit(lambda v: model.apply(v, images, train=False))

    # The running statistics move toward the batch's (momentum 0.9; flax keeps the biased variance).
    _, updates = train(variables)
    conv1 = _first_layer_output(images, np.asarray(variables["params"]["conv1"]["kernel"]))
    stats = updates["batch_stats"]["bn1"]
    np.testing.assert_allclose(stats["mean"], 0.1 * conv1.mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * conv1.var(axis=(0, 1, 2)), rtol=1e-4)

    # Training output ignores the running statistics; evaluation output depends on them.
    scrambled = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(lambda s: s + 3.0, variables["batch_stats"]),
    }
    np.testing.assert_allclose(train(variables)[0], train(scrambled)[0], atol=1e-6)
    assert not np.allclose(evaluate(variables), evaluate(scrambled), atol=1e-3)


def test_swin_drop_path_is_the_only_train_eval_difference():
    images = random_images((4, 16, 16, 3))
    one_stage = dict(TINY_SWIN, depths=(2,), num_heads=(2,))  # a plain and a shifted block
    with_drop_path = backbones.create_backbone("swin_t", **one_stage, drop_path_rate=0.5)
    without_drop_path = backbones.create_backbone("swin_t", **one_stage, drop_path_rate=0.0)
    variables = random_variables(with_drop_path, images)
    assert "batch_stats" not in variables

    evaluate = jax.jit(lambda v: with_drop_path.apply(v, images, train=False))(variables)

    def train(model):
        run = jax.jit(lambda v, key: model.apply(v, images, train=True, rngs={"dropout": key}))
        return lambda seed: run(variables, jax.random.key(seed))

    train_with_drop_path, train_without_drop_path = train(with_drop_path), train(without_drop_path)
    assert evaluate.shape == (4, 16)
    assert not np.allclose(train_with_drop_path(2), evaluate, atol=1e-4)
    assert not np.allclose(train_with_drop_path(2), train_with_drop_path(3), atol=1e-4)
    np.testing.assert_array_equal(train_with_drop_path(2), train_with_drop_path(2))
    np.testing.assert_allclose(train_without_drop_path(2), evaluate, atol=1e-6)


def _floating_leaves(tree):
    return [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)]


@pytest.mark.parametrize(
    "name,kwargs,images_shape",
    [("small_cnn", {}, (2, 8, 8, 1)), ("swin_t", TINY_SWIN, (2, 16, 16, 3))],
)
def test_bfloat16_compute_keeps_float32_parameters(name, kwargs, images_shape):
    model = backbones.create_classifier(name, 5, dtype=jnp.bfloat16, **kwargs)
    images = random_images(images_shape)
    variables = random_variables(model, images)
    logits, state = jax.jit(
        functools.partial(
            model.apply, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
    )(variables, images)
    assert {leaf.dtype for leaf in _floating_leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert logits.dtype == jnp.float32
    activations = dict(state["intermediates"])
    del activations["classifier"], activations["__call__"]  # the float32 classifier
    dtypes = {leaf.dtype for leaf in _floating_leaves(activations)}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    assert np.all(np.isfinite(np.asarray(logits)))


def test_abstract_bfloat16_resnet50_features():
    model = backbones.create_backbone("resnet50", dtype=jnp.bfloat16)
    features, variables = abstract_init_with_output(model, (2, 224, 224, 3))
    assert features.dtype == jnp.bfloat16 and features.shape == (2, 2048)
    assert {leaf.dtype for leaf in _floating_leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet7'.*cifar_resnet18.*small_cnn"):
        backbones.create_backbone("resnet7")
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.create_classifier("vit_b", 10)


def test_bad_options_and_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="invalid option for backbone 'small_cnn'"):
        backbones.create_backbone("small_cnn", depth=3)
    with pytest.raises(ValueError, match="num_classes"):
        backbones.create_classifier("small_cnn", 0)
    model = backbones.create_backbone("small_cnn")
    with pytest.raises(ValueError, match=r"\[batch, height, width, channels\]"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((8, 8, 1)), train=False))
    with pytest.raises(ValueError, match="patch size"):
        abstract_init_with_output(backbones.create_backbone("swin_t"), (1, 30, 30, 3))
    with pytest.raises(ValueError, match="whole windows"):
        abstract_init_with_output(backbones.create_backbone("swin_t"), (1, 64, 64, 3))


def _small_cnn_parameter_count(widths, num_classes):
    """Written out: 3x3 convs without bias from 1 channel, a BatchNorm scale and bias per channel, and a
    Dense head."""
    channels = (1, *widths)
    convs = sum(9 * c_in * c_out + 2 * c_out for c_in, c_out in zip(channels, channels[1:]))
    return convs + widths[-1] * num_classes + num_classes


@pytest.mark.parametrize("widths", [(), (64, 128, 256), (16, 32)])
def test_model_encoder_widths_sets_the_small_cnns_channels(widths):
    from configs import default
    from lgmm_jax.heads import create_model

    config = default.get_config()
    config.model.encoder, config.model.head, config.model.encoder_widths = "small_cnn", "softmax", widths
    logits, variables = abstract_init_with_output(create_model(config.model, 10), (1, 28, 28, 1))
    expected_widths = widths or (32, 64, 128)
    assert count_parameters(variables) == _small_cnn_parameter_count(expected_widths, 10)
    assert logits.shape == (1, 10)
    config.model.head = "lgmm"
    features, _ = abstract_init_with_output(create_model(config.model, 10).backbone, (1, 28, 28, 1))
    assert features.shape == (1, expected_widths[-1])


def test_model_encoder_widths_is_refused_for_a_published_encoder():
    from configs import default
    from lgmm_jax.heads import create_model

    config = default.get_config()
    config.model.encoder, config.model.encoder_widths = "resnet18", (64, 128)
    with pytest.raises(ValueError, match="encoder_widths=.*does not apply to 'resnet18'"):
        create_model(config.model, 10)
