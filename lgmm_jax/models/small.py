"""A small CNN for 8x8 and 28x28 grayscale images (sklearn digits, MNIST, Fashion-MNIST).

Three 3x3 conv + BatchNorm + ReLU layers, the last two with stride 2, then global average pooling:
8x8 -> 8x8 -> 4x4 -> 2x2 and 28x28 -> 28x28 -> 14x14 -> 7x7. It has about 93k parameters with the default
widths (32, 64, 128) and trains on sklearn digits in seconds on a CPU, which is what the tests and the
bundled-data configuration need; it plays the role of the paper's small backbones for the small data sets
that install offline.

`SmallCNN.__call__(images, train)` returns `[B, widths[-1]]` features; `dtype` is the compute dtype and the
parameters stay float32. Conv and BatchNorm conventions are those of `resnet.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgmm_jax.models.resnet import batch_norm, conv, require_nhwc_images

Dtype = Any


class SmallCNN(nn.Module):
    """Conv-BN-ReLU layers of the given widths (stride 1 for the first, 2 after), then a global mean.

    Attributes:
      widths: channels of each conv layer.
      dtype: compute dtype; parameters stay float32.
    """

    widths: Sequence[int] = (32, 64, 128)
    dtype: Dtype = jnp.float32

    @property
    def num_features(self) -> int:
        """Width of the pooled features."""
        return self.widths[-1]

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        require_nhwc_images(images)
        x = images.astype(self.dtype)
        for layer, width in enumerate(self.widths):
            x = conv(width, 3, 1 if layer == 0 else 2, self.dtype, name=f"conv{layer + 1}")(x)
            x = nn.relu(batch_norm(train, self.dtype, name=f"bn{layer + 1}")(x))
        return jnp.mean(x, axis=(1, 2))


def small_cnn(*, dtype: Dtype = jnp.float32, **kwargs) -> SmallCNN:
    """The small CNN for 8x8x1 / 28x28x1 images (128 features by default)."""
    return SmallCNN(dtype=dtype, **kwargs)
