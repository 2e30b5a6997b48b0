"""Spatial resizing of feature maps and label maps as PyTorch does it (so as mmsegmentation and GMMSeg do).

- `resize_bilinear` is `F.interpolate(x, size, mode="bilinear", align_corners=False)`, mmseg's `resize`
  for every decode head used here and for the logits before the loss: half-pixel centres, edge values
  repeated. Only used to enlarge (decoders, logits to the label size), where no antialiasing applies.
- `resize_labels_nearest` is `F.interpolate(labels, size, mode="nearest")`: the source index is
  `floor(dst * in / out)`, which GMMSeg uses to bring labels to the decoder's 1/4 resolution. (XLA's
  "nearest" in `jax.image.resize` rounds half-pixel centres instead and picks other pixels.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, h, w, C] -> [B, H, W, C] by bilinear interpolation with half-pixel centres (align_corners=False).

    Where the output is no smaller than the input this equals PyTorch's: the triangle kernel's weights
    that fall outside the map are dropped and the rest renormalised, i.e. the edge value is repeated.
    """
    height, width = size
    if x.shape[1:3] == (height, width):
        return x
    if height < x.shape[1] or width < x.shape[2]:
        raise ValueError(f"resize_bilinear enlarges maps only: {x.shape[1:3]} -> {(height, width)}")
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), method="linear", antialias=False)


def resize_labels_nearest(labels: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, H, W] integer labels -> [B, h, w], picking source pixel floor(i * H / h) as PyTorch "nearest"."""
    height, width = labels.shape[1:3]
    rows = (jnp.arange(size[0]) * height) // size[0]
    cols = (jnp.arange(size[1]) * width) // size[1]
    return labels[:, rows][:, :, cols]
