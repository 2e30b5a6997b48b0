"""Spatial resizing of feature maps and label maps as PyTorch does it (so as mmsegmentation and GMMSeg do).

- `resize_bilinear` is `F.interpolate(x, size, mode="bilinear", align_corners=...)`, mmseg's `resize`
  for every decode head used here and for the logits before the loss and at inference. With
  align_corners=False (mmseg's default): half-pixel centres, edge values repeated; with True (mmseg's
  769x769 Cityscapes recipes) the corner pixels of input and output coincide and output pixel i samples
  input position i * (in - 1) / (out - 1). Only used to enlarge (decoders, logits to the label size),
  where no antialiasing applies.
- `resize_labels_nearest` is `F.interpolate(labels, size, mode="nearest")`: the source index is
  `floor(dst * in / out)`, which GMMSeg uses to bring labels to the decoder's 1/4 resolution. (XLA's
  "nearest" in `jax.image.resize` rounds half-pixel centres instead and picks other pixels.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resize_bilinear(x: jax.Array, size: tuple[int, int], align_corners: bool = False) -> jax.Array:
    """[B, h, w, C] -> [B, H, W, C] by bilinear interpolation, PyTorch's `align_corners` convention.

    align_corners=False: half-pixel centres; where the output is no smaller than the input this equals
    PyTorch's: the triangle kernel's weights that fall outside the map are dropped and the rest
    renormalised, i.e. the edge value is repeated. align_corners=True: `corner_aligned_weights` per axis.
    """
    height, width = size
    if x.shape[1:3] == (height, width):
        return x
    if height < x.shape[1] or width < x.shape[2]:
        raise ValueError(f"resize_bilinear enlarges maps only: {x.shape[1:3]} -> {(height, width)}")
    if align_corners:
        return corner_aligned_resize(x, size)
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), method="linear", antialias=False)


def corner_aligned_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, h, w, C] -> [B, H, W, C], bilinear with align_corners=True (enlarging or not: PyTorch's kernel has
    two taps either way), as two matmuls with `corner_aligned_weights`."""
    rows = corner_aligned_weights(x.shape[1], size[0])
    cols = corner_aligned_weights(x.shape[2], size[1])
    return jnp.einsum("oh,bhwc,pw->bopc", rows, x, cols, precision=jax.lax.Precision.HIGHEST).astype(x.dtype)


def corner_aligned_weights(size_in: int, size_out: int) -> jax.Array:
    """[size_out, size_in] linear-interpolation weights of align_corners=True: output i samples input position
    i * (size_in - 1) / (size_out - 1) (0 when size_out is 1), split between its two neighbours."""
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    position = jnp.arange(size_out, dtype=jnp.float32) * scale
    lower = jnp.clip(jnp.floor(position).astype(jnp.int32), 0, size_in - 1)
    upper = jnp.minimum(lower + 1, size_in - 1)
    fraction = position - lower
    return (jax.nn.one_hot(lower, size_in) * (1 - fraction)[:, None]
            + jax.nn.one_hot(upper, size_in) * fraction[:, None])


def resize_labels_nearest(labels: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, H, W] integer labels -> [B, h, w], picking source pixel floor(i * H / h) as PyTorch "nearest"."""
    height, width = labels.shape[1:3]
    rows = (jnp.arange(size[0]) * height) // size[0]
    cols = (jnp.arange(size[1]) * width) // size[1]
    return labels[:, rows][:, :, cols]
