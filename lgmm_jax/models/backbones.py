"""Registry of the image encoders: a backbone name -> a flax module that maps images to pooled features.

A backbone is the encoder `f_phi` of the paper (Section 2) without its classification layer:
`backbone.apply(variables, images, train=bool, rngs=...)` maps NHWC images `[B, H, W, C]` to features
`[B, F]` with `F = backbone.num_features = feature_dim(name)`. The L-GMM model puts its projection to the
latent space on top of these features; the discriminative baseline uses `create_classifier`, the backbone
plus a Dense softmax head.

Names and their usual inputs (`DEFAULT_INPUT_SHAPES`):
  resnet18/34/50/101/152        ImageNet ResNets (torchvision layout), 224x224x3
  cifar_resnet18/34/50/101      CIFAR ResNets (3x3 stem, no max-pool), 32x32x3
  swin_t/s/b                    Swin Transformers, patch 4, window 7, 224x224x3
  cifar_swin_t/s/b              the same widths and depths with patch 2, window 4, 32x32x3
  small_cnn                     three conv layers, 8x8x1 (sklearn digits) or 28x28x1 (MNIST-like)
  mit_b0 .. mit_b5              SegFormer's Mix Transformer, its last map averaged (the encoder of the
                                `segformer_b*` segmenters, trained on images), 224x224x3

Variables: 'params' always; 'batch_stats' for the ResNets and the small CNN (pass
`mutable=['batch_stats']` when `train=True`). Swin uses the 'dropout' rng in training (stochastic depth).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgmm_jax.models import resnet, segformer, small, swin

Dtype = Any

_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
    "resnet152": resnet.resnet152,
    "cifar_resnet18": resnet.cifar_resnet18,
    "cifar_resnet34": resnet.cifar_resnet34,
    "cifar_resnet50": resnet.cifar_resnet50,
    "cifar_resnet101": resnet.cifar_resnet101,
    "swin_t": swin.swin_t,
    "swin_s": swin.swin_s,
    "swin_b": swin.swin_b,
    "cifar_swin_t": swin.cifar_swin_t,
    "cifar_swin_s": swin.cifar_swin_s,
    "cifar_swin_b": swin.cifar_swin_b,
    "small_cnn": small.small_cnn,
} | {f"mit_b{i}": functools.partial(segformer.mit, f"b{i}") for i in range(6)}

BACKBONE_NAMES: tuple[str, ...] = tuple(_FACTORIES)

DEFAULT_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    name: (224, 224, 3) if name.startswith(("resnet", "swin", "mit")) else (32, 32, 3)
    for name in BACKBONE_NAMES
} | {"small_cnn": (28, 28, 1)}


def _require_known(name: str) -> None:
    if name not in _FACTORIES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONE_NAMES)}")


def create_backbone(name: str, *, dtype: Dtype = jnp.float32, **kwargs) -> nn.Module:
    """The feature extractor `name`: `__call__(images, train) -> [B, num_features]`.

    Args:
      name: one of `BACKBONE_NAMES`.
      dtype: compute dtype (e.g. `jnp.bfloat16`); parameters are float32 in every case.
      **kwargs: overrides of the module's attributes, e.g. `drop_path_rate=0.1` for Swin,
        `zero_init_residual=True` for ResNets, `widths=(16, 32)` for the small CNN.
    """
    _require_known(name)
    try:
        return _FACTORIES[name](dtype=dtype, **kwargs)
    except TypeError as error:
        raise ValueError(f"invalid option for backbone {name!r}: {error}") from None


def feature_dim(name: str, **kwargs) -> int:
    """Width F of the features that `create_backbone(name, **kwargs)` returns."""
    return create_backbone(name, **kwargs).num_features


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The `(H, W, C)` images the backbone `name` is usually trained on."""
    _require_known(name)
    return DEFAULT_INPUT_SHAPES[name]


class Classifier(nn.Module):
    """Backbone followed by a Dense softmax classifier; logits are float32 whatever the compute dtype.

    The Dense layer is named `classifier`: `head` is the L-GMM density head theta, which trains apart.
    """

    backbone: nn.Module
    num_classes: int

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        features = self.backbone(images, train)
        return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32, name="classifier")(
            features.astype(jnp.float32)
        )


def create_classifier(name: str, num_classes: int, *, dtype: Dtype = jnp.float32, **kwargs) -> Classifier:
    """`create_backbone(name, dtype=dtype, **kwargs)` plus a Dense head to `num_classes` float32 logits."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return Classifier(create_backbone(name, dtype=dtype, **kwargs), num_classes)
