"""SegFormer (Xie et al. 2021): the Mix Transformer encoder MiT-B0..B5 and the all-MLP decoder, NHWC.

Definitions of the official code (NVlabs/SegFormer `mix_transformer.py`, `segformer_head.py`; HF
transformers' `SegformerForSemanticSegmentation` counts the same):

* Four stages; each starts with an overlapping patch embedding (conv with bias, kernel 7 stride 4 for
  stage 1, kernel 3 stride 2 after, padding kernel // 2, then LayerNorm) and stacks `depth` blocks
  `x + DropPath(Attn(LN(x)))`, `x + DropPath(MixFFN(LN(x)))`, then a LayerNorm.
* Efficient self-attention: queries from every token; keys and values from the map shrunk by a conv
  with kernel = stride = the stage's reduction ratio R (8/4/2/1) and a LayerNorm (no reduction at R=1);
  `q` and `kv` Dense layers with bias, an output projection.
* Mix-FFN: Dense to 4x the width, a 3x3 depthwise conv with bias, exact GELU, Dense back.
* Decoder: per stage a Dense (with bias) to the decoder width E (256 for B0/B1, 768 for B2-B5), each
  upsampled bilinearly (align_corners=False) to stage 1's 1/4 resolution, concatenated as
  [stage 4, 3, 2, 1], fused by a bias-free 1x1 conv with BatchNorm and ReLU. Its output [B, H/4, W/4, E]
  is the decoder feature map that the segmenter's per-pixel head reads. Mainline mmseg's `SegformerHead`
  projects each stage with a 1x1 ConvModule (conv without bias, BatchNorm, ReLU; 4*E parameters more)
  where the official code and HF use Linear layers: `decode_projection="conv_bn_relu"` selects it (the
  default "linear" is the official head). mmseg concatenates the stages as [1, 2, 3, 4]; its fuse conv's
  input channels are reordered on loading (`lgmm_jax.pretrained`), so one concat order serves both.

LayerNorm epsilon is 1e-6 in the blocks and after each stage, 1e-5 in the patch embeddings and the
reduction (as the official code). Other sources differ and their weights only give their outputs with
their own values: Hugging Face's SegFormer uses 1e-5 everywhere (its config's `layer_norm_eps` is not read
by those norms), mmseg's `MixVisionTransformer` 1e-6 everywhere. `layer_norm_epsilon` (blocks and
stages) and `embedding_layer_norm_epsilon` (patch embeddings and reduction) set them;
`pretrained.model_options(path)` gives the values a checkpoint needs. Stochastic depth rises linearly
from 0 to `drop_path_rate` (0.1 in the official configs) over all blocks, draws from the 'dropout' rng
and is active only with `train=True`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgmm_jax.models.deeplab import ConvModule
from lgmm_jax.models.resize import resize_bilinear
from lgmm_jax.models.resnet import CONV_KERNEL_INIT, batch_norm, conv, require_nhwc_images
from lgmm_jax.models.swin import DENSE_KERNEL_INIT, drop_path

Dtype = Any

BLOCK_LAYER_NORM_EPSILON = 1e-6
EMBEDDING_LAYER_NORM_EPSILON = 1e-5
DECODE_PROJECTIONS = ("linear", "conv_bn_relu")


def _dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=DENSE_KERNEL_INIT, name=name)


def conv_kernel_init(kernel: int, features: int, groups: int):
    """The official MiT's conv init: normal with std sqrt(2 / fan_out), fan_out = kernel^2 x features /
    groups. For a depthwise conv (groups = features) that is sqrt(2 / 9) at 3x3; flax's fan_out does not
    divide by the groups, which would start Mix-FFN's depthwise conv sqrt(features) times smaller."""
    if groups == 1:
        return CONV_KERNEL_INIT  # the same distribution
    return nn.initializers.normal(stddev=(2.0 / (kernel * kernel * features // groups)) ** 0.5)


def _biased_conv(features: int, kernel: int, stride: int, padding: int, dtype: Dtype, name: str, groups=1):
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=((padding, padding),) * 2,
        feature_group_count=groups, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=conv_kernel_init(kernel, features, groups), name=name,
    )


def _layer_norm(epsilon: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32, name=name)


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys and values come from the map shrunk R times: [B, H, W, C] in/out."""

    num_heads: int
    reduction_ratio: int
    dtype: Dtype = jnp.float32
    reduction_norm_epsilon: float = EMBEDDING_LAYER_NORM_EPSILON

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        if channels % self.num_heads:
            raise ValueError(f"width {channels} is not divisible by num_heads={self.num_heads}")
        head_dim = channels // self.num_heads
        query = _dense(channels, self.dtype, "q")(x).reshape(batch, height * width, self.num_heads, head_dim)
        context = x
        if self.reduction_ratio > 1:
            ratio = self.reduction_ratio
            context = _biased_conv(channels, ratio, ratio, 0, self.dtype, "sr")(context)
            context = _layer_norm(self.reduction_norm_epsilon, self.dtype, "sr_norm")(context)
        key_value = _dense(2 * channels, self.dtype, "kv")(context)
        key_value = key_value.reshape(batch, -1, 2, self.num_heads, head_dim)
        attended = nn.dot_product_attention(
            query, key_value[:, :, 0], key_value[:, :, 1], dtype=self.dtype, deterministic=True,
            force_fp32_for_softmax=True,
        )
        return _dense(channels, self.dtype, "proj")(attended.reshape(batch, height, width, channels))


class MixFFN(nn.Module):
    """Dense to `ratio` x width, 3x3 depthwise conv with bias, exact GELU, Dense back: [B, H, W, C]."""

    ratio: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        hidden = self.ratio * channels
        y = _dense(hidden, self.dtype, "fc1")(x)
        y = _biased_conv(hidden, 3, 1, 1, self.dtype, "dwconv", groups=hidden)(y)
        return _dense(channels, self.dtype, "fc2")(nn.gelu(y, approximate=False))


class MiTBlock(nn.Module):
    """Pre-norm transformer block with efficient self-attention and Mix-FFN."""

    num_heads: int
    reduction_ratio: int
    drop_path_rate: float = 0.0
    dtype: Dtype = jnp.float32
    layer_norm_epsilon: float = BLOCK_LAYER_NORM_EPSILON
    reduction_norm_epsilon: float = EMBEDDING_LAYER_NORM_EPSILON

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = _layer_norm(self.layer_norm_epsilon, self.dtype, "norm1")(x)
        y = EfficientSelfAttention(
            self.num_heads, self.reduction_ratio, self.dtype, self.reduction_norm_epsilon, name="attn"
        )(y)
        x = x + drop_path(self.drop_path_rate, train)(y)
        y = _layer_norm(self.layer_norm_epsilon, self.dtype, "norm2")(x)
        y = MixFFN(dtype=self.dtype, name="ffn")(y)
        return x + drop_path(self.drop_path_rate, train)(y)


class MixTransformer(nn.Module):
    """MiT encoder: images [B, H, W, 3] -> four maps at strides 4, 8, 16, 32 with widths `widths`.

    `layer_norm_epsilon` is that of the blocks' and stages' LayerNorms, `embedding_layer_norm_epsilon`
    that of the patch embeddings' and the key/value reduction's (see the module docstring). With `pooled`
    it is an image classifier's encoder (NVlabs' MiT ImageNet classifier): the last map, after its
    LayerNorm, averaged over space, [B, widths[-1]]; its parameters are the same arrays, so an encoder
    trained on images moves into a SegFormer unchanged.
    """

    widths: Sequence[int] = (64, 128, 320, 512)
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (1, 2, 5, 8)
    reduction_ratios: Sequence[int] = (8, 4, 2, 1)
    drop_path_rate: float = 0.1
    dtype: Dtype = jnp.float32
    layer_norm_epsilon: float = BLOCK_LAYER_NORM_EPSILON
    embedding_layer_norm_epsilon: float = EMBEDDING_LAYER_NORM_EPSILON
    pooled: bool = False

    @property
    def num_features(self) -> int:
        return self.widths[-1]

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> list[jax.Array] | jax.Array:
        require_nhwc_images(images)
        x = images.astype(self.dtype)
        total_blocks = sum(self.depths)
        block_index = 0
        stages = []
        for stage, (width, depth) in enumerate(zip(self.widths, self.depths)):
            kernel, stride = (7, 4) if stage == 0 else (3, 2)
            x = _biased_conv(width, kernel, stride, kernel // 2, self.dtype, f"patch_embed{stage + 1}")(x)
            x = _layer_norm(self.embedding_layer_norm_epsilon, self.dtype, f"patch_embed{stage + 1}_norm")(x)
            for block in range(depth):
                x = MiTBlock(
                    num_heads=self.num_heads[stage],
                    reduction_ratio=self.reduction_ratios[stage],
                    drop_path_rate=self.drop_path_rate * block_index / max(total_blocks - 1, 1),
                    dtype=self.dtype,
                    layer_norm_epsilon=self.layer_norm_epsilon,
                    reduction_norm_epsilon=self.embedding_layer_norm_epsilon,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)
                block_index += 1
            x = _layer_norm(self.layer_norm_epsilon, self.dtype, f"stage{stage + 1}_norm")(x)
            stages.append(x)
        return jnp.mean(stages[-1], axis=(1, 2)) if self.pooled else stages


class AllMLPDecoder(nn.Module):
    """The official SegFormer head without its classifier: four maps -> [B, h1, w1, width].

    `projection` "linear" (official, HF): a Dense with bias per stage; "conv_bn_relu" (mainline mmseg):
    a 1x1 ConvModule per stage, named `linear_c{i}` with `conv` and `bn` inside.
    """

    width: int = 256
    dtype: Dtype = jnp.float32
    projection: str = "linear"
    align_corners: bool = False  # mmseg's SegFormerHead default

    def _project(self, x: jax.Array, index: int, train: bool) -> jax.Array:
        name = f"linear_c{index + 1}"
        if self.projection == "linear":
            return _dense(self.width, self.dtype, name)(x)
        if self.projection == "conv_bn_relu":
            return ConvModule(self.width, dtype=self.dtype, name=name)(x, train)
        raise ValueError(f"unknown decode_projection {self.projection!r}; choose one of {DECODE_PROJECTIONS}")

    @nn.compact
    def __call__(self, stages: Sequence[jax.Array], train: bool) -> jax.Array:
        size = stages[0].shape[1:3]
        projected = [
            resize_bilinear(self._project(x, index, train), size, self.align_corners) for index, x in enumerate(stages)
        ]
        x = jnp.concatenate(projected[::-1], axis=-1)
        x = conv(self.width, 1, 1, self.dtype, name="linear_fuse")(x)
        return nn.relu(batch_norm(train, self.dtype, name="linear_fuse_bn")(x))


class SegFormer(nn.Module):
    """MiT encoder + all-MLP decoder: images [B, H, W, 3] -> features [B, ceil(H/4), ceil(W/4), width]."""

    widths: Sequence[int]
    depths: Sequence[int]
    decoder_width: int
    drop_path_rate: float = 0.1
    dtype: Dtype = jnp.float32
    layer_norm_epsilon: float = BLOCK_LAYER_NORM_EPSILON
    embedding_layer_norm_epsilon: float = EMBEDDING_LAYER_NORM_EPSILON
    decode_projection: str = "linear"
    align_corners: bool = False

    @property
    def num_features(self) -> int:
        return self.decoder_width

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        stages = MixTransformer(
            self.widths, self.depths, drop_path_rate=self.drop_path_rate, dtype=self.dtype,
            layer_norm_epsilon=self.layer_norm_epsilon,
            embedding_layer_norm_epsilon=self.embedding_layer_norm_epsilon, name="backbone",
        )(images, train)
        decoder = AllMLPDecoder(self.decoder_width, self.dtype, self.decode_projection, self.align_corners,
                                name="decode_head")
        return decoder(stages, train)


MIT_WIDTHS = {"b0": (32, 64, 160, 256)} | {f"b{i}": (64, 128, 320, 512) for i in range(1, 6)}
MIT_DEPTHS = {
    "b0": (2, 2, 2, 2),
    "b1": (2, 2, 2, 2),
    "b2": (3, 4, 6, 3),
    "b3": (3, 4, 18, 3),
    "b4": (3, 8, 27, 3),
    "b5": (3, 6, 40, 3),
}
DECODER_WIDTHS = {"b0": 256, "b1": 256} | {f"b{i}": 768 for i in range(2, 6)}


def mit(variant: str, *, dtype: Dtype = jnp.float32, **kwargs) -> MixTransformer:
    """MiT-B0..B5 as an image classifier's encoder (`pooled`); kwargs override the module's attributes
    (e.g. `widths`, `depths` for a smaller MiT)."""
    if variant not in MIT_WIDTHS:
        raise ValueError(f"unknown MiT variant {variant!r}; choose one of {sorted(MIT_WIDTHS)}")
    attributes = dict(widths=MIT_WIDTHS[variant], depths=MIT_DEPTHS[variant], pooled=True)
    return MixTransformer(**{**attributes, "dtype": dtype, **kwargs})


def segformer(variant: str, *, dtype: Dtype = jnp.float32, **kwargs) -> SegFormer:
    """SegFormer-B0..B5 (`variant` "b0".."b5"); kwargs override the module's attributes.

    E.g. `layer_norm_epsilon=1e-5` (Hugging Face weights), `decode_projection="conv_bn_relu"` (mmseg's
    head); `pretrained.model_options(path)` gives those a checkpoint needs.
    """
    if variant not in MIT_WIDTHS:
        raise ValueError(f"unknown SegFormer variant {variant!r}; choose one of {sorted(MIT_WIDTHS)}")
    if kwargs.get("decode_projection", "linear") not in DECODE_PROJECTIONS:
        raise ValueError(
            f"unknown decode_projection {kwargs['decode_projection']!r}; choose one of {DECODE_PROJECTIONS}"
        )
    attributes = dict(
        widths=MIT_WIDTHS[variant], depths=MIT_DEPTHS[variant], decoder_width=DECODER_WIDTHS[variant]
    )
    return SegFormer(**{**attributes, "dtype": dtype, **kwargs})
