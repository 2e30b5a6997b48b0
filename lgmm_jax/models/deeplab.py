"""DeepLabv3+ (Chen et al. 2018) as mmsegmentation builds it: `deeplabv3plus_r{50,101}-d8`, NHWC.

The encoder-decoder of the paper's Section 5.3, with mmseg's definitions:

* `ResNetV1c`: ResNet with a deep stem (three 3x3 convs 32-32-64, the first strided, then a 3x3 stride-2
  max-pool) and bottlenecks with the stride on the 3x3 conv. "D8": stage strides (1, 2, 1, 1) and
  dilations (1, 1, 2, 4), output stride 8; `contract_dilation` gives the first block of a dilated stage
  half the stage's dilation (mmseg's `ResLayer`). The bottleneck is `resnet.Bottleneck`, the layers are
  those of torchvision's ResNets, so the backbone's count is theirs plus the deep stem's 19,232.
* `DepthwiseSeparableASPPHead` on stage 4 (2048 -> 512 channels): image pooling (global average, 1x1
  ConvModule, broadcast back), a 1x1 ConvModule and three depthwise-separable 3x3 branches dilated
  12/24/36, concatenated and fused by a plain 3x3 ConvModule (2560 -> 512); upsampled to stage 1's 1/4
  resolution, concatenated with a 1x1 ConvModule of stage 1 (256 -> 48), then two depthwise-separable
  3x3 ConvModules. Its output (512 channels at 1/4) is the decoder feature map that the segmenter's
  per-pixel head (softmax classifier or L-GMM) reads.
* `FCNHead` on stage 3 (1024 -> 256 -> classes), the auxiliary head of mmseg's recipe (loss weight 0.4):
  run in training only. Its logits are `sow`n into the "auxiliary" collection (see
  `segmenter.auxiliary_logits`); inference never computes them.

A ConvModule is conv (no bias) + BatchNorm + ReLU; a depthwise-separable ConvModule is a depthwise 3x3
ConvModule followed by a pointwise 1x1 ConvModule (mmcv). Resizing is bilinear with the decode head's
`align_corners` (`resize.resize_bilinear`; mmseg's default False, True in its 769x769 Cityscapes
recipes). BatchNorm follows `resnet.batch_norm` (PyTorch's
momentum and epsilon; under jit with a sharded batch the statistics are global, as mmseg's SyncBN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgmm_jax.models.resize import resize_bilinear
from lgmm_jax.models.resnet import IMAGENET_STAGES, Bottleneck, batch_norm, conv, require_nhwc_images

Dtype = Any

CLASSIFIER_KERNEL_INIT = nn.initializers.normal(stddev=0.01)  # mmseg's `conv_seg` init
DECODER_CHANNELS = 512  # mmseg's `channels` of the ASPP head


class ConvModule(nn.Module):
    """mmcv's ConvModule: conv without bias (square kernel, PyTorch padding) + BatchNorm + ReLU."""

    features: int
    kernel: int = 1
    dilation: int = 1
    groups: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv(self.features, self.kernel, 1, self.dtype, "conv", self.dilation, self.groups)(x)
        return nn.relu(batch_norm(train, self.dtype, name="bn")(x))


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise 3x3 ConvModule (one filter per channel) then a pointwise 1x1 ConvModule (mmcv)."""

    features: int
    dilation: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        x = ConvModule(channels, 3, self.dilation, channels, self.dtype, name="depthwise")(x, train)
        return ConvModule(self.features, 1, dtype=self.dtype, name="pointwise")(x, train)


class ResNetV1c(nn.Module):
    """Dilated ResNetV1c: images [B, H, W, 3] -> the four stages' maps (strides 4, 8, 8, 8 for D8)."""

    depth: int = 101
    strides: Sequence[int] = (1, 2, 1, 1)
    dilations: Sequence[int] = (1, 1, 2, 4)
    contract_dilation: bool = True
    stem_width: int = 64
    # mmseg's ResNet default: the last BatchNorm of each bottleneck starts at scale 0 when the backbone
    # trains from scratch, so every block begins as the identity (a loaded checkpoint replaces it).
    zero_init_residual: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> list[jax.Array]:
        require_nhwc_images(images)
        stage_sizes, block_cls = IMAGENET_STAGES[self.depth]
        if block_cls is not Bottleneck:
            raise ValueError(f"ResNetV1c is built from bottlenecks: depth 50, 101 or 152, not {self.depth}")
        x = images.astype(self.dtype)
        for index, (width, stride) in enumerate(
            ((self.stem_width // 2, 2), (self.stem_width // 2, 1), (self.stem_width, 1))
        ):
            x = conv(width, 3, stride, self.dtype, name=f"stem_conv{index + 1}")(x)
            x = nn.relu(batch_norm(train, self.dtype, name=f"stem_bn{index + 1}")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        stages = []
        for stage, num_blocks in enumerate(stage_sizes):
            dilation = self.dilations[stage]
            for block in range(num_blocks):
                first_dilation = dilation // 2 if self.contract_dilation and dilation > 1 else dilation
                x = Bottleneck(
                    features=64 * 2**stage,
                    strides=self.strides[stage] if block == 0 else 1,
                    dilation=first_dilation if block == 0 else dilation,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)
            stages.append(x)
        return stages


class DepthwiseSeparableASPPHead(nn.Module):
    """mmseg's DepthwiseSeparableASPPHead without its classifier: (stage 1, stage 4) -> [B, h1, w1, 512]."""

    channels: int = DECODER_CHANNELS
    dilations: Sequence[int] = (1, 12, 24, 36)
    skip_channels: int = 48
    align_corners: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, stage1: jax.Array, stage4: jax.Array, train: bool) -> jax.Array:
        pooled = jnp.mean(stage4, axis=(1, 2), keepdims=True)
        pooled = ConvModule(self.channels, dtype=self.dtype, name="image_pool")(pooled, train)
        branches = [jnp.broadcast_to(pooled, (*stage4.shape[:3], self.channels))]
        for index, dilation in enumerate(self.dilations):
            name = f"aspp{index}"
            if dilation == 1:
                branches.append(ConvModule(self.channels, dtype=self.dtype, name=name)(stage4, train))
            else:
                branch = DepthwiseSeparableConvModule(self.channels, dilation, self.dtype, name=name)
                branches.append(branch(stage4, train))
        x = jnp.concatenate(branches, axis=-1)
        x = ConvModule(self.channels, 3, dtype=self.dtype, name="bottleneck")(x, train)
        skip = ConvModule(self.skip_channels, dtype=self.dtype, name="skip")(stage1, train)
        x = jnp.concatenate([resize_bilinear(x, stage1.shape[1:3], self.align_corners), skip], axis=-1)
        x = DepthwiseSeparableConvModule(self.channels, dtype=self.dtype, name="sep_bottleneck1")(x, train)
        return DepthwiseSeparableConvModule(self.channels, dtype=self.dtype, name="sep_bottleneck2")(x, train)


class FCNHead(nn.Module):
    """mmseg's FCNHead (one 3x3 ConvModule, no input concat), Dropout2d(0.1), 1x1 classifier: logits."""

    num_classes: int
    channels: int = 256
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = ConvModule(self.channels, 3, dtype=self.dtype, name="conv")(x, train)
        x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(x)
        return nn.Conv(
            self.num_classes, (1, 1), dtype=jnp.float32, param_dtype=jnp.float32,
            kernel_init=CLASSIFIER_KERNEL_INIT, name="classifier",
        )(x.astype(jnp.float32))


class DeepLabV3Plus(nn.Module):
    """Backbone + ASPP decoder: images [B, H, W, 3] -> decoder features [B, ceil(H/4), ceil(W/4), 512].

    With `auxiliary_head` the FCN head's logits on stage 3 ([B, H/8, W/8, C]) are sown into the
    "auxiliary" collection in training (pass `mutable=[..., "auxiliary"]` to read them); its parameters
    are created at initialisation whatever `train` is, so training and evaluation share one variable tree.
    `align_corners`: the decode head's resize convention (mmseg's `decode_head.align_corners`).
    """

    num_classes: int
    depth: int = 101
    auxiliary_head: bool = True
    align_corners: bool = False
    dtype: Dtype = jnp.float32

    @property
    def num_features(self) -> int:
        return DECODER_CHANNELS

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        stage1, _, stage3, stage4 = ResNetV1c(self.depth, dtype=self.dtype, name="backbone")(images, train)
        if self.auxiliary_head and (train or self.is_initializing()):
            logits = FCNHead(self.num_classes, dtype=self.dtype, name="auxiliary_head")(stage3, train)
            if not self.is_initializing():  # the variables never hold a batch's logits
                self.sow("auxiliary", "logits", logits)
        decode_head = DepthwiseSeparableASPPHead(align_corners=self.align_corners, dtype=self.dtype, name="decode_head")
        return decode_head(stage1, stage4, train)
