"""Swin Transformer image encoders (Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer
using Shifted Windows") in flax.linen, NHWC.

These are backbones for the L-GMM encoder `f_phi` (paper Section 3: Swin-T/S/B on ImageNet) with the
classification layer removed: `SwinTransformer.__call__(images, train)` returns `[B, F]` features (final
LayerNorm, then global average pooling).

Layout (torchvision `swin_t/s/b`, timm `swin_*_patch4_window7_224`): a patch embedding (conv with kernel
= stride = patch size, then LayerNorm), four stages of Swin blocks with patch merging (2x2 neighbours
concatenated, LayerNorm, bias-free Dense to twice the width) between stages. Each block is
`x + DropPath(W-MSA(LN(x)))`, then `x + DropPath(MLP(LN(x)))` with MLP ratio 4 and exact GELU. Odd blocks
of a stage shift the windows by half a window (cyclic roll) and mask attention between tokens that the roll
brought together from opposite edges of the image (additive -100 on the logits, as in the reference
code). Every window attention adds a learned relative position bias from a `[(2w-1)^2, heads]` table.
LayerNorm epsilon is 1e-5. Stochastic depth rises linearly from 0 at the first block to `drop_path_rate` at
the last, is active only with `train=True`, and draws from the 'dropout' rng collection. With a
1000-way Dense head the parameter counts equal torchvision's / timm's: 28,288,354 (Swin-T), 49,606,258
(Swin-S), 87,768,224 (Swin-B).

Where a stage's feature map is no larger than the window (the 7x7 last stage at 224x224), the window is
that feature map and no shift is applied (torchvision and timm do the same).

32x32 inputs (CIFAR, SVHN): `cifar_swin_t/s/b` use patch size 2 and window size 4, so the four stages
work at 16x16, 8x8, 4x4 and 2x2 (the last two stages attend over the whole map without shifting); the
widths, depths and heads are those of Swin-T/S/B. Any other combination is available through the
`patch_size` / `window_size` arguments. Image sizes must divide into whole windows at every stage;
anything else raises ValueError.

`dtype` is the compute dtype (e.g. `jnp.bfloat16`); parameters are float32 and the attention softmax is
computed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lgmm_jax.models.resnet import require_nhwc_images

Dtype = Any

LAYER_NORM_EPSILON = 1e-5
MASKED_LOGIT = -100.0  # added to the attention logits of pairs that the cyclic shift made neighbours
DENSE_KERNEL_INIT = nn.initializers.truncated_normal(stddev=0.02)


def effective_window_and_shift(height: int, width: int, window: int, shift: int) -> tuple[int, int]:
    """A feature map no larger than the window is attended as one window, without shifting."""
    if min(height, width) <= window:
        return min(height, width), 0
    return window, shift


def stage_resolutions(height: int, width: int, patch_size: int, num_stages: int) -> list[tuple[int, int]]:
    """Feature-map sizes of the stages: the patch grid, halved by each patch merging."""
    return [(height // patch_size // 2**i, width // patch_size // 2**i) for i in range(num_stages)]


def validate_image_size(height: int, width: int, patch_size: int, window_size: int, num_stages: int):
    """Raises ValueError unless every stage splits into whole windows and every merging has even sides."""
    hint = (
        f"Swin with patch {patch_size} and window {window_size} needs sides divisible by "
        f"{patch_size * 2 ** (num_stages - 1)} that tile into whole windows at every stage "
        "(e.g. 224 for swin_*, 32 for cifar_swin_*); resize the images or change patch_size/window_size"
    )
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size; {hint}")
    for stage, (h, w) in enumerate(stage_resolutions(height, width, patch_size, num_stages)):
        window, _ = effective_window_and_shift(h, w, window_size, 0)
        if stage < num_stages - 1 and (h % 2 or w % 2):
            raise ValueError(f"image size {height}x{width}: stage {stage + 1} map {h}x{w} is odd; {hint}")
        if h % window or w % window:
            raise ValueError(f"image size {height}x{width}: stage {stage + 1} map {h}x{w}; {hint}")


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """`[B, H, W, C]` -> `[B, (H/w)*(W/w), w*w, C]`, windows in row-major order."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // window, window, width // window, window, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, (height // window) * (width // window), window * window, channels)


def window_reverse(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
    """Inverse of `window_partition`: `[B, num_windows, w*w, C]` -> `[B, H, W, C]`."""
    batch, channels = windows.shape[0], windows.shape[-1]
    x = windows.reshape(batch, height // window, width // window, window, window, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height, width, channels)


def relative_position_index(window: int) -> np.ndarray:
    """`[w*w, w*w]` row of the bias table for each (query, key) pair of a window (Swin Eq. 4)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    relative = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, N, N], each in [0, 2w-2]
    return relative[0] * (2 * window - 1) + relative[1]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """`[num_windows, w*w, w*w]` booleans: may query i attend to key j inside each shifted window.

    Follows the reference implementation: label the rolled feature map in up to 3x3 regions that were
    contiguous before the roll; tokens attend only within their region.
    """
    labels = np.zeros((height, width), np.int32)
    bounds = lambda size: ((0, size - window), (size - window, size - shift), (size - shift, size))
    region = 0
    for h_start, h_stop in bounds(height):
        for w_start, w_stop in bounds(width):
            labels[h_start:h_stop, w_start:w_stop] = region
            region += 1
    window_labels = np.asarray(window_partition(labels[None, :, :, None], window))[0, :, :, 0]
    return window_labels[:, :, None] == window_labels[:, None, :]


class ShiftedWindowAttention(nn.Module):
    """(Shifted-)window multi-head self-attention with relative position bias, `[B, H, W, C]` in and out.

    `shift_size` 0 gives W-MSA, `window_size // 2` gives SW-MSA (Swin Section 3.2).
    """

    num_heads: int
    window_size: int
    shift_size: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        window, shift = effective_window_and_shift(height, width, self.window_size, self.shift_size)
        if height % window or width % window:
            raise ValueError(
                f"feature map {height}x{width} does not tile into {window}x{window} windows; "
                "choose an image size that does (see validate_image_size)"
            )
        if channels % self.num_heads:
            raise ValueError(f"width {channels} is not divisible by num_heads={self.num_heads}")
        tokens = window * window
        head_dim = channels // self.num_heads

        if shift:
            x = jnp.roll(x, (-shift, -shift), axis=(1, 2))
        windows = window_partition(x, window)  # [B, nW, N, C]
        qkv = nn.Dense(
            3 * channels, dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=DENSE_KERNEL_INIT, name="qkv",
        )(windows)
        qkv = qkv.reshape(*windows.shape[:3], 3, self.num_heads, head_dim)
        query, key, value = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

        table = self.param(
            "relative_position_bias_table", DENSE_KERNEL_INIT,
            ((2 * window - 1) ** 2, self.num_heads), jnp.float32,
        )
        bias = table[relative_position_index(window).reshape(-1)]
        bias = bias.reshape(tokens, tokens, self.num_heads).transpose(2, 0, 1)[None]  # [1, h, N, N]
        if shift:
            allowed = shifted_window_mask(height, width, window, shift)  # [nW, N, N]
            bias = bias + jnp.where(allowed, 0.0, MASKED_LOGIT)[:, None]
        attended = nn.dot_product_attention(
            query, key, value, bias=bias.astype(self.dtype), dtype=self.dtype,
            deterministic=True, force_fp32_for_softmax=True,
        )  # [B, nW, N, heads, head_dim]
        attended = attended.reshape(windows.shape)
        attended = nn.Dense(
            channels, dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=DENSE_KERNEL_INIT, name="proj",
        )(attended)
        x = window_reverse(attended, window, height, width)
        if shift:
            x = jnp.roll(x, (shift, shift), axis=(1, 2))
        return x


def _layer_norm(dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=dtype, param_dtype=jnp.float32, name=name)


def drop_path(rate: float, train: bool) -> nn.Dropout:
    """Stochastic depth: drop the whole residual branch per example, rescale survivors by 1/(1-rate)."""
    return nn.Dropout(rate, broadcast_dims=(1, 2, 3), deterministic=not train)


class SwinBlock(nn.Module):
    """Pre-norm transformer block on `[B, H, W, C]` with (shifted-)window attention."""

    num_heads: int
    window_size: int
    shift_size: int
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        dense = lambda features, name: nn.Dense(
            features, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=DENSE_KERNEL_INIT, name=name
        )
        y = _layer_norm(self.dtype, "norm1")(x)
        y = ShiftedWindowAttention(
            self.num_heads, self.window_size, self.shift_size, self.dtype, name="attn"
        )(y)
        x = x + drop_path(self.drop_path_rate, train)(y)
        y = _layer_norm(self.dtype, "norm2")(x)
        y = dense(int(channels * self.mlp_ratio), "mlp_fc1")(y)
        y = dense(channels, "mlp_fc2")(nn.gelu(y, approximate=False))
        return x + drop_path(self.drop_path_rate, train)(y)


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (`[B, H, W, C]` -> `[B, H/2, W/2, 4C]`), LayerNorm, Dense to 2C."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        x = jnp.concatenate(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1
        )
        x = _layer_norm(self.dtype, "norm")(x)
        return nn.Dense(
            2 * channels, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=DENSE_KERNEL_INIT, name="reduction",
        )(x)


class SwinTransformer(nn.Module):
    """Swin feature extractor: images `[B, H, W, C]` -> pooled features `[B, num_features]`.

    Attributes:
      embed_dim: width of the first stage (doubled by each patch merging).
      depths: blocks per stage.
      num_heads: attention heads per stage.
      patch_size: side of the non-overlapping patches of the embedding.
      window_size: side of the attention windows.
      mlp_ratio: MLP hidden width / block width.
      drop_path_rate: stochastic depth rate of the last block (linear from 0 at the first).
      dtype: compute dtype; parameters stay float32.
    """

    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    patch_size: int = 4
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    dtype: Dtype = jnp.float32

    @property
    def num_features(self) -> int:
        """Width of the pooled features."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        require_nhwc_images(images)
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        validate_image_size(
            images.shape[1], images.shape[2], self.patch_size, self.window_size, len(self.depths)
        )
        x = nn.Conv(
            self.embed_dim, (self.patch_size, self.patch_size), strides=(self.patch_size,) * 2,
            padding="VALID", dtype=self.dtype, param_dtype=jnp.float32, name="patch_embed",
        )(images.astype(self.dtype))
        x = _layer_norm(self.dtype, "patch_embed_norm")(x)

        total_blocks = sum(self.depths)
        block_index = 0
        for stage, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
            if stage > 0:
                x = PatchMerging(self.dtype, name=f"stage{stage}_merge")(x)
            for block in range(depth):
                rate = self.drop_path_rate * block_index / max(total_blocks - 1, 1)
                x = SwinBlock(
                    num_heads=heads,
                    window_size=self.window_size,
                    shift_size=0 if block % 2 == 0 else self.window_size // 2,
                    mlp_ratio=self.mlp_ratio,
                    drop_path_rate=rate,
                    dtype=self.dtype,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)
                block_index += 1
        x = _layer_norm(self.dtype, "norm")(x)
        return jnp.mean(x, axis=(1, 2))


SWIN_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)
SWIN_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)
SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)
IMAGENET_PATCHING = dict(patch_size=4, window_size=7)
CIFAR_PATCHING = dict(patch_size=2, window_size=4)


def _swin(size: dict, patching: dict, dtype: Dtype, kwargs: dict) -> SwinTransformer:
    return SwinTransformer(**{**size, **patching, "dtype": dtype, **kwargs})


def swin_t(*, dtype: Dtype = jnp.float32, **kwargs) -> SwinTransformer:
    """Swin-T, patch 4, window 7, for 224x224 (768 features)."""
    return _swin(SWIN_T, IMAGENET_PATCHING, dtype, kwargs)


def swin_s(*, dtype: Dtype = jnp.float32, **kwargs) -> SwinTransformer:
    """Swin-S, patch 4, window 7, for 224x224 (768 features)."""
    return _swin(SWIN_S, IMAGENET_PATCHING, dtype, kwargs)


def swin_b(*, dtype: Dtype = jnp.float32, **kwargs) -> SwinTransformer:
    """Swin-B, patch 4, window 7, for 224x224 (1024 features)."""
    return _swin(SWIN_B, IMAGENET_PATCHING, dtype, kwargs)


def cifar_swin_t(*, dtype: Dtype = jnp.float32, **kwargs) -> SwinTransformer:
    """Swin-T widths/depths with patch 2, window 4, for 32x32 (768 features)."""
    return _swin(SWIN_T, CIFAR_PATCHING, dtype, kwargs)


def cifar_swin_s(*, dtype: Dtype = jnp.float32, **kwargs) -> SwinTransformer:
    """Swin-S widths/depths with patch 2, window 4, for 32x32 (768 features)."""
    return _swin(SWIN_S, CIFAR_PATCHING, dtype, kwargs)


def cifar_swin_b(*, dtype: Dtype = jnp.float32, **kwargs) -> SwinTransformer:
    """Swin-B widths/depths with patch 2, window 4, for 32x32 (1024 features)."""
    return _swin(SWIN_B, CIFAR_PATCHING, dtype, kwargs)
