"""ResNet image encoders (He et al. 2016) in flax.linen, NHWC.

These are backbones for the L-GMM encoder `f_phi` (paper Section 2, Appendix B) with the classification
layer removed: `ResNet.__call__(images, train)` returns globally average-pooled features `[B, F]`.

Two families share one module:

* ImageNet ResNets (torchvision layout): 7x7 stride-2 stem, 3x3 stride-2 max-pool, four stages of basic
  blocks (ResNet-18/34) or bottlenecks (ResNet-50/101/152) with the stride on the bottleneck's 3x3 conv
  ("v1.5"), a projection shortcut (1x1 conv + BatchNorm) wherever the shape changes. With a 1000-way Dense
  head the parameter counts equal torchvision's (11,689,512 for ResNet-18, 25,557,032 for ResNet-50).
* CIFAR ResNets (kuangliu/pytorch-cifar, mmcls `ResNet_CIFAR`): 3x3 stride-1 stem, no max-pool, the same
  four stages; on 32x32 inputs the last stage works at 4x4.

Conventions matching torchvision: convolutions without bias, explicit symmetric padding `k // 2` (so that
stride-2 layers align with PyTorch rather than XLA's "SAME"), BatchNorm with scale and bias, momentum 0.9
(PyTorch's 0.1), epsilon 1e-5, Kaiming-normal (fan_out) conv init. BatchNorm running statistics live in
the `batch_stats` collection and are not parameters; the running variance averages the biased batch
variance (flax), where PyTorch averages the unbiased one (a factor n/(n-1) apart). BatchNorm has no
`axis_name`: under `jax.jit` with a batch sharded over devices its statistics are those of the global batch.

`dtype` is the compute dtype (e.g. `jnp.bfloat16`); parameters are always stored in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5
CONV_KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def require_nhwc_images(images: jax.Array) -> None:
    """Raises ValueError unless `images` is a rank-4 `[B, H, W, C]` batch."""
    if images.ndim != 4:
        raise ValueError(
            f"expected images of shape [batch, height, width, channels], got shape {images.shape}; "
            "add the missing batch or channel axis"
        )


def conv(
    features: int,
    kernel: int,
    strides: int,
    dtype: Dtype,
    name: str | None = None,
    dilation: int = 1,
    groups: int = 1,
) -> nn.Conv:
    """Bias-free square convolution with PyTorch's symmetric padding `dilation * (kernel // 2)`.

    `groups` splits the channels as PyTorch's `groups` (the input width for a depthwise convolution).
    """
    pad = dilation * (kernel // 2)
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=CONV_KERNEL_INIT,
        name=name,
    )


def batch_norm(train: bool, dtype: Dtype, zero_scale: bool = False, name: str | None = None):
    """BatchNorm with torchvision's defaults; batch statistics in training, running averages otherwise."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BATCH_NORM_MOMENTUM,
        epsilon=BATCH_NORM_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        name=name,
    )


def _shortcut(residual: jax.Array, out_features: int, strides: int, train: bool, dtype: Dtype):
    """Identity, or a 1x1 conv + BatchNorm projection when the block changes width or resolution."""
    if residual.shape[-1] == out_features and strides == 1:
        return residual
    residual = conv(out_features, 1, strides, dtype, name="proj_conv")(residual)
    return batch_norm(train, dtype, name="proj_bn")(residual)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); output width `features`."""

    features: int
    strides: int = 1
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = conv(self.features, 3, self.strides, self.dtype)(x)
        y = nn.relu(batch_norm(train, self.dtype)(y))
        y = conv(self.features, 3, 1, self.dtype)(y)
        y = batch_norm(train, self.dtype, zero_scale=self.zero_init_residual)(y)
        return nn.relu(y + _shortcut(x, self.features, self.strides, train, self.dtype))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided: v1.5) -> 1x1 bottleneck (ResNet-50+); output width `4 * features`.

    `dilation` dilates the 3x3 conv (mmseg's dilated ResNets for segmentation; 1 in classification).
    """

    features: int
    strides: int = 1
    zero_init_residual: bool = False
    dilation: int = 1
    dtype: Dtype = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out_features = self.features * self.expansion
        y = conv(self.features, 1, 1, self.dtype)(x)
        y = nn.relu(batch_norm(train, self.dtype)(y))
        y = conv(self.features, 3, self.strides, self.dtype, dilation=self.dilation)(y)
        y = nn.relu(batch_norm(train, self.dtype)(y))
        y = conv(out_features, 1, 1, self.dtype)(y)
        y = batch_norm(train, self.dtype, zero_scale=self.zero_init_residual)(y)
        return nn.relu(y + _shortcut(x, out_features, self.strides, train, self.dtype))


class ResNet(nn.Module):
    """ResNet feature extractor: images `[B, H, W, C]` -> pooled features `[B, num_features]`.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block_cls: `BasicBlock` or `Bottleneck`.
      cifar_stem: True for the 3x3 stride-1 stem without max-pool (32x32 inputs); False for the ImageNet
        7x7 stride-2 stem followed by a 3x3 stride-2 max-pool.
      base_width: channels of the stem and of the first stage (64 in every published ResNet).
      zero_init_residual: start the scale of the last BatchNorm of each residual block at zero, so that
        every block begins as the identity (Goyal et al. 2017; mmcls `ResNet(zero_init_residual=True)`).
        Off by default: torchvision's and mmcls's default.
      dtype: compute dtype; parameters stay float32.
    """

    stage_sizes: Sequence[int]
    block_cls: type[nn.Module] = BasicBlock
    cifar_stem: bool = False
    base_width: int = 64
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32

    @property
    def num_features(self) -> int:
        """Width of the pooled features."""
        return self.base_width * 2 ** (len(self.stage_sizes) - 1) * self.block_cls.expansion

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        require_nhwc_images(images)
        x = images.astype(self.dtype)
        if self.cifar_stem:
            x = conv(self.base_width, 3, 1, self.dtype, name="stem_conv")(x)
        else:
            x = conv(self.base_width, 7, 2, self.dtype, name="stem_conv")(x)
        x = nn.relu(batch_norm(train, self.dtype, name="stem_bn")(x))
        if not self.cifar_stem:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                x = self.block_cls(
                    features=self.base_width * 2**stage,
                    strides=2 if stage > 0 and block == 0 else 1,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)
        return jnp.mean(x, axis=(1, 2))


IMAGENET_STAGES = {
    18: ((2, 2, 2, 2), BasicBlock),
    34: ((3, 4, 6, 3), BasicBlock),
    50: ((3, 4, 6, 3), Bottleneck),
    101: ((3, 4, 23, 3), Bottleneck),
    152: ((3, 8, 36, 3), Bottleneck),
}


def _resnet(depth: int, cifar_stem: bool, dtype: Dtype, **kwargs) -> ResNet:
    stage_sizes, block_cls = IMAGENET_STAGES[depth]
    return ResNet(stage_sizes, block_cls, cifar_stem=cifar_stem, dtype=dtype, **kwargs)


def resnet18(*, dtype: Dtype = jnp.float32, **kwargs) -> ResNet:
    """ImageNet ResNet-18 (512 features)."""
    return _resnet(18, False, dtype, **kwargs)


def resnet34(*, dtype: Dtype = jnp.float32, **kwargs) -> ResNet:
    """ImageNet ResNet-34 (512 features)."""
    return _resnet(34, False, dtype, **kwargs)


def resnet50(*, dtype: Dtype = jnp.float32, **kwargs) -> ResNet:
    """ImageNet ResNet-50 v1.5 (2048 features)."""
    return _resnet(50, False, dtype, **kwargs)


def resnet101(*, dtype: Dtype = jnp.float32, **kwargs) -> ResNet:
    """ImageNet ResNet-101 v1.5 (2048 features)."""
    return _resnet(101, False, dtype, **kwargs)


def resnet152(*, dtype: Dtype = jnp.float32, **kwargs) -> ResNet:
    """ImageNet ResNet-152 v1.5 (2048 features)."""
    return _resnet(152, False, dtype, **kwargs)


def cifar_resnet18(*, dtype: Dtype = jnp.float32, **kwargs) -> ResNet:
    """CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool (512 features)."""
    return _resnet(18, True, dtype, **kwargs)


def cifar_resnet34(*, dtype: Dtype = jnp.float32, **kwargs) -> ResNet:
    """CIFAR ResNet-34 (512 features)."""
    return _resnet(34, True, dtype, **kwargs)


def cifar_resnet50(*, dtype: Dtype = jnp.float32, **kwargs) -> ResNet:
    """CIFAR ResNet-50 (2048 features)."""
    return _resnet(50, True, dtype, **kwargs)


def cifar_resnet101(*, dtype: Dtype = jnp.float32, **kwargs) -> ResNet:
    """CIFAR ResNet-101 (2048 features)."""
    return _resnet(101, True, dtype, **kwargs)
