"""Segmenters: reference parameter counts, output shapes on non-square inputs, the
auxiliary head, the per-pixel L-GMM head, and PyTorch's resizing conventions.

Counts and shapes come from `jax.eval_shape` (nothing is initialised); numerics use a reduced SegFormer,
initialised once for the module (`tiny_segformer`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgmm_jax.models import SEGMENTER_NAMES, auxiliary_logits, create_segmenter
from lgmm_jax.models.gmm import head_gaussians, log_likelihood
from lgmm_jax.models.resize import resize_bilinear, resize_labels_nearest

# Checked against HF transformers' SegFormer and a PyTorch rebuild of mmseg's DeepLabv3+.
REFERENCE_COUNTS = {
    ("segformer_b0", 150): 3_752_694, ("segformer_b1", 150): 13_715_798, ("segformer_b2", 150): 27_461_974,
    ("segformer_b3", 150): 47_337_814, ("segformer_b4", 150): 64_108_374, ("segformer_b5", 150): 84_708_694,
    ("segformer_b0", 19): 3_719_027, ("segformer_b1", 19): 13_682_131, ("segformer_b2", 19): 27_361_235,
    ("segformer_b3", 19): 47_237_075, ("segformer_b4", 19): 64_007_635, ("segformer_b5", 19): 84_607_955,
    ("deeplabv3plus_r101", 150): 62_682_876, ("deeplabv3plus_r101", 19): 62_582_006,
}
REFERENCE_COUNTS_WITHOUT_AUXILIARY = {150: 60_284_518, 19: 60_217_315}
REFERENCE_ENCODER_COUNTS = {
    "segformer_b0": 3_319_392, "segformer_b1": 13_151_424, "segformer_b2": 24_196_288,
    "segformer_b3": 44_072_128, "segformer_b4": 60_842_688, "segformer_b5": 81_443_008,
    "deeplabv3plus_r101": 42_519_392,
    # torchvision's ResNet-50 without its classifier (23,508,032) plus the deep stem's 19,232.
    "deeplabv3plus_r50": 23_527_264,
}
TINY_SEGFORMER = {"widths": (8, 16, 40, 32), "depths": (1, 1, 1, 1), "decoder_width": 16}
TINY_CLASSES, TINY_LATENT_DIM = 4, 8
IMAGE_SHAPE = (2, 96, 128, 3)


@pytest.fixture(scope="module")
def tiny_segformer():
    """(model, variables): the reduced SegFormer with the L-GMM head, initialised by one jitted `init`. The
    tests that share it apply it to their own inputs: SegFormer's variables do not depend on the input
    size (no position embeddings), and the encoder and decoder are the same whatever the head."""
    model = create_segmenter("segformer_b0", TINY_CLASSES, "lgmm", latent_dim=TINY_LATENT_DIM,
                             decoder_kwargs=TINY_SEGFORMER)
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 32, 32, 3)), train=False))
    return model, init(jax.random.key(1))


def random_images(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def abstract_variables(model, shape=IMAGE_SHAPE):
    """(output, variables) shapes of an evaluation-mode init."""
    return jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros(shape), train=False)
    )


@pytest.mark.parametrize("name,num_classes", sorted(REFERENCE_COUNTS))
def test_parameter_counts_equal_the_reference(name, num_classes):
    _, variables = abstract_variables(create_segmenter(name, num_classes))
    assert count(variables["params"]) == REFERENCE_COUNTS[name, num_classes]


@pytest.mark.parametrize("num_classes", sorted(REFERENCE_COUNTS_WITHOUT_AUXILIARY))
def test_deeplab_count_without_its_auxiliary_head(num_classes):
    model = create_segmenter("deeplabv3plus_r101", num_classes, decoder_kwargs={"auxiliary_head": False})
    _, variables = abstract_variables(model)
    assert count(variables["params"]) == REFERENCE_COUNTS_WITHOUT_AUXILIARY[num_classes]


@pytest.mark.parametrize("name", sorted(REFERENCE_ENCODER_COUNTS))
def test_encoder_counts_equal_the_reference(name):
    _, variables = abstract_variables(create_segmenter(name, 150))
    assert count(variables["params"]["decoder"]["backbone"]) == REFERENCE_ENCODER_COUNTS[name]


@pytest.mark.parametrize("head", ["softmax", "lgmm"])
@pytest.mark.parametrize("name", SEGMENTER_NAMES)
def test_scores_at_a_quarter_of_a_non_square_input(name, head):
    model = create_segmenter(name, 7, head)
    scores, variables = abstract_variables(model)
    assert scores.shape == (2, 24, 32, 7) and scores.dtype == jnp.float32
    assert "auxiliary" not in variables  # variables never carry a batch's auxiliary logits
    if head == "lgmm":
        latents = jax.eval_shape(
            functools.partial(model.apply, train=False, method=model.encode), variables, jnp.zeros(IMAGE_SHAPE)
        )
        assert latents.shape == (2, 24, 32, 64)


@pytest.mark.parametrize("name,expected", [("deeplabv3plus_r50", (2, 12, 16, 7)), ("segformer_b0", None)])
def test_auxiliary_logits_in_training_only(name, expected):
    model = create_segmenter(name, 7)
    _, variables = abstract_variables(model)
    images = jnp.zeros(IMAGE_SHAPE)

    def run(variables, train):
        _, collections = model.apply(
            variables, images, train=train, mutable=["batch_stats", "auxiliary"],
            rngs={"dropout": jax.random.key(0)},
        )
        return auxiliary_logits(collections)

    training = jax.eval_shape(functools.partial(run, train=True), variables)
    assert (None if training is None else training.shape) == expected
    assert jax.eval_shape(functools.partial(run, train=False), variables) is None


def test_odd_input_sizes_round_up_as_the_strided_convolutions_do():
    scores, _ = abstract_variables(create_segmenter("segformer_b0", 3), (1, 97, 61, 3))
    assert scores.shape == (1, 25, 16, 3)
    scores, _ = abstract_variables(create_segmenter("deeplabv3plus_r50", 3), (1, 97, 61, 3))
    assert scores.shape == (1, 25, 16, 3)


def test_lgmm_scores_are_the_gmm_log_likelihoods_of_unit_latents(tiny_segformer):
    """On a non-square input, at a quarter of its size: every pixel's latent has unit norm, and its scores
    are the GMM log-likelihoods (`gmm.log_likelihood`) of that latent under the head's Gaussians and
    mixture weights."""
    model, variables = tiny_segformer
    images = random_images(2, 32, 48, 3)
    scores_and_latents = jax.jit(lambda variables, images: (
        model.apply(variables, images), model.apply(variables, images, method=model.encode)))
    scores, z = scores_and_latents(variables, images)
    assert z.shape == (2, 8, 12, TINY_LATENT_DIM) and scores.shape == (2, 8, 12, TINY_CLASSES)
    np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)
    means, scales = head_gaussians(variables["params"]["head"], model.scale_floor, model.num_components)
    expected = log_likelihood(z.reshape(-1, TINY_LATENT_DIM), means, scales,
                              variables["mixture"]["head"]["log_weights"])
    np.testing.assert_allclose(scores.reshape(-1, TINY_CLASSES), expected, rtol=1e-5, atol=1e-4)
    assert np.all(np.isfinite(scores))


def test_training_uses_batch_statistics_dropout_and_drop_path(tiny_segformer):
    """A training pass normalises with the batch's statistics and returns updated statistics for the decode
    head's BatchNorm, and draws its dropout and drop-path masks from the 'dropout' rng: two keys give two
    different outputs, and neither is the evaluation pass's. The head adds no BatchNorm (the L-GMM
    head's projection is a Dense) and the same Dropout2d as the softmax head."""
    model, variables = tiny_segformer
    images = random_images(2, 32, 32, 3)

    @jax.jit
    def run(variables, images):
        train = lambda key: model.apply(
            variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(key)}
        )
        return train(0), train(1), model.apply(variables, images, train=False)

    (first, updates), (second, _), evaluation = run(variables, images)
    assert first.shape == evaluation.shape == (2, 8, 8, TINY_CLASSES)
    assert not np.allclose(first, second)
    assert not np.allclose(first, evaluation)
    assert set(updates["batch_stats"]["decoder"]["decode_head"]) == {"linear_fuse_bn"}


def _torch_bilinear_reference(x: np.ndarray, size) -> np.ndarray:
    """F.interpolate(mode="bilinear", align_corners=False) written out: source coordinate
    (dst + 0.5) * in / out - 0.5 clamped at 0, neighbours clamped at the last index."""

    def weights(out_size, in_size):
        source = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(int), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        frac = source - low
        matrix = np.zeros((out_size, in_size))
        np.add.at(matrix, (np.arange(out_size), low), 1 - frac)
        np.add.at(matrix, (np.arange(out_size), high), frac)
        return matrix

    rows, cols = weights(size[0], x.shape[1]), weights(size[1], x.shape[2])
    return np.einsum("Hh,bhwc,Ww->bHWc", rows, x, cols)


@pytest.mark.parametrize("in_size,out_size", [((6, 8), (24, 32)), ((13, 7), (25, 13)), ((5, 5), (5, 9))])
def test_bilinear_resize_is_pytorchs_align_corners_false(in_size, out_size):
    x = np.random.default_rng(0).normal(size=(2, *in_size, 3)).astype(np.float32)
    np.testing.assert_allclose(
        resize_bilinear(jnp.asarray(x), out_size), _torch_bilinear_reference(x, out_size), atol=1e-5
    )


def test_bilinear_resize_with_align_corners_gives_pytorchs_known_values():
    # F.interpolate([[0, 1]], size=4, mode="bilinear", align_corners=...) along one axis, by hand: True
    # samples 0, 1/3, 2/3, 1 (corners on corners); False samples (i + 0.5) / 2 - 0.5, clamped.
    ramp = jnp.asarray([0.0, 1.0]).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(resize_bilinear(ramp, (1, 4), align_corners=True).ravel(), [0, 1 / 3, 2 / 3, 1],
                               atol=1e-7)
    np.testing.assert_allclose(resize_bilinear(ramp, (1, 4)).ravel(), [0, 0.25, 0.75, 1], atol=1e-7)
    # A bilinear function is reproduced exactly with the corners aligned: 97 -> 769, the 769x769 recipe's
    # 1/8 map and crop, f(y, x) = 2y - 3x + 1 on the input grid stretched onto the output grid.
    y, x = np.meshgrid(np.arange(97.0), np.arange(13.0), indexing="ij")
    plane = (2 * y - 3 * x + 1)[None, :, :, None].astype(np.float32)
    out_y, out_x = np.meshgrid(np.arange(769) * 96 / 768, np.arange(25) * 12 / 24, indexing="ij")
    expected = 2 * out_y - 3 * out_x + 1
    got = resize_bilinear(jnp.asarray(plane), (769, 25), align_corners=True)[0, :, :, 0]
    np.testing.assert_allclose(got, expected, atol=1e-3)  # float32 values up to ~190


def test_the_769_cityscapes_deeplab_recipe_resizes_with_aligned_corners_everywhere():
    import configs.cityscapes_deeplabv3plus_r101
    import configs.cityscapes_segformer_b5
    from lgmm_jax.heads import create_model
    from lgmm_jax.tasks.segmentation import evaluation
    from lgmm_jax.tasks.segmentation.task import pixel_config

    config = configs.cityscapes_deeplabv3plus_r101.get_config()
    assert pixel_config(config).align_corners and evaluation.settings_of(config).align_corners
    model = create_model(config.model, 19)
    assert model.decoder.align_corners
    segformer = configs.cityscapes_segformer_b5.get_config()  # mmseg's SegFormerHead keeps the default
    assert not pixel_config(segformer).align_corners and not create_model(segformer.model, 19).decoder.align_corners


def test_nearest_label_resize_picks_pytorchs_source_pixels():
    labels = np.arange(2 * 10 * 9).reshape(2, 10, 9)
    small = np.asarray(resize_labels_nearest(jnp.asarray(labels), (3, 4)))
    rows, cols = [0, 3, 6], [0, 2, 4, 6]  # floor(i * 10 / 3), floor(j * 9 / 4)
    np.testing.assert_array_equal(small, labels[:, rows][:, :, cols])


def test_bad_names_and_options_raise_one_line_errors():
    with pytest.raises(ValueError, match="unknown segmenter 'pspnet'.*segformer_b5"):
        create_segmenter("pspnet", 3)
    with pytest.raises(ValueError, match="unknown segmentation head 'crf'"):
        create_segmenter("segformer_b0", 3, "crf")
    with pytest.raises(ValueError, match="invalid option for segmenter 'segformer_b0'"):
        create_segmenter("segformer_b0", 3, "lgmm", latent_size=4)
    with pytest.raises(ValueError, match="num_classes"):
        create_segmenter("segformer_b0", 0)


def test_mits_convolutions_start_as_the_official_code_starts_them(tiny_segformer):
    """NVlabs' mix_transformer.py `_init_weights`: a Conv2d's weight ~ N(0, 2 / fan_out) with fan_out =
    k * k * out_channels / groups, so Mix-FFN's 3x3 depthwise conv starts at std sqrt(2/9) whatever its
    width (flax's own fan_out, which ignores the groups, gives sqrt(2 / (9 * width)): 5.7x smaller at the
    tiny model's narrowest 32), and the 7x7 patch embedding at sqrt(2 / (49 * width)). Sample stds of n
    draws are compared within 6 standard errors, sqrt(1 / (2n)) relative. The encoder's kernels are the
    same whatever the head and the input size."""
    _, variables = tiny_segformer
    flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
            jax.tree_util.tree_leaves_with_path(variables["params"])}
    depthwise = {name: kernel for name, kernel in flat.items() if "dwconv" in name and name.endswith("['kernel']")}
    assert len(depthwise) == 4  # one block in each of four stages
    for name, kernel in depthwise.items():
        assert abs(kernel.std() / np.sqrt(2 / 9) - 1) < 6 * np.sqrt(1 / (2 * kernel.size)), name
    embedding = next(kernel for name, kernel in flat.items() if "patch_embed1']['kernel" in name)
    assert embedding.shape == (7, 7, 3, 8)
    assert abs(embedding.std() / np.sqrt(2 / (49 * 8)) - 1) < 6 * np.sqrt(1 / (2 * embedding.size))


def test_deeplabs_resnet_starts_each_bottleneck_as_the_identity_as_mmseg_does():
    """mmseg's ResNet(zero_init_residual=True), its default: trained from scratch, the last norm (norm3)
    of every bottleneck starts at weight 0 and every other BatchNorm at 1 (its init_cfg Constant 1)."""
    from lgmm_jax.models.deeplab import ResNetV1c

    model = ResNetV1c(depth=50)

    @jax.jit  # returning the scales only, XLA compiles none of the other initialisers
    def batch_norm_scales():
        params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
        return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                if jax.tree_util.keystr(path).endswith("['scale']")}

    scales = jax.tree.map(np.asarray, batch_norm_scales())
    zero = sorted(name for name, scale in scales.items() if not scale.any())
    assert len(zero) == 3 + 4 + 6 + 3  # one per bottleneck of ResNet-50
    assert all("['BatchNorm_2']" in name for name in zero)  # the one after the last 1x1 conv
    assert all(np.all(scale == 1) for name, scale in scales.items() if name not in zero)
