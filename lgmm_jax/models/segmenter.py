"""Segmenters: an encoder-decoder to per-pixel features, then a per-pixel head (paper Section 5.3).

`create_segmenter(name, num_classes, head)` returns a module applied as
`model.apply(variables, images, train=...)` on float images [B, H, W, 3] that returns per-pixel class
scores at 1/4 resolution, [B, ceil(H/4), ceil(W/4), C] in float32:

* `head="softmax"`: mmseg's `cls_seg`, Dropout2d(0.1) then a 1x1 conv with bias (named `classifier`) to
  the logits. These are the paper's discriminative baselines.
* `head="lgmm"`: the per-pixel L-GMM. The decoder features (after the same Dropout2d) are projected per
  pixel (a 1x1 conv, i.e. a Dense on the last axis) to `latent_dim` (64 as GMMSeg) dimensions, normalised
  as the classifier's latents (`lgmm.normalize_latents`: L2 by default), and scored by the same
  `GMMHead` the classifier uses (named `head`, mixture weights in the "mixture" collection): the
  scores are the class log-likelihoods log p(z|y) (Eq. 4). `encode` returns the per-pixel latents
  [B, h, w, D] that the train step differentiates through (`objective.pixel_lgmm_objective`).

Names (`SEGMENTER_NAMES`): `deeplabv3plus_r50`, `deeplabv3plus_r101` (mmseg's DeepLabv3+ D8 on
ResNetV1c, `models.deeplab`) and `segformer_b0` .. `segformer_b5` (MiT + all-MLP decoder,
`models.segformer`). DeepLabv3+ carries mmseg's auxiliary FCN head on stage 3: in training its logits
[B, H/8, W/8, C] are sown into the "auxiliary" collection (apply with `mutable=[..., "auxiliary"]` and
read them with `auxiliary_logits`); inference does not compute them. It is a softmax head whatever
`head` is (the recipe's auxiliary cross-entropy, weight 0.4, trains the encoder only).

Variables: 'params', 'batch_stats' (BatchNorm everywhere in the decoders; pass `mutable=["batch_stats"]`
in training), 'mixture' for L-GMM. Training uses the 'dropout' rng (Dropout2d, DropPath).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgmm_jax.models.deeplab import CLASSIFIER_KERNEL_INIT, DeepLabV3Plus
from lgmm_jax.models.lgmm import latent_modules, normalize_latents
from lgmm_jax.models.segformer import segformer

Dtype = Any

SEGMENTER_HEADS = ("softmax", "lgmm")
LATENT_PROJECTIONS = ("dense", "conv_bn_relu")  # a Dense (a 1x1 conv with bias), or GMMSeg's ConvModule
OUTPUT_STRIDE = 4  # the per-pixel scores are at 1/4 of the input resolution

_DECODERS: dict[str, Callable[..., nn.Module]] = {
    "deeplabv3plus_r50": lambda num_classes, **kw: DeepLabV3Plus(num_classes, depth=50, **kw),
    "deeplabv3plus_r101": lambda num_classes, **kw: DeepLabV3Plus(num_classes, depth=101, **kw),
} | {
    f"segformer_b{i}": (lambda variant: lambda num_classes, **kw: segformer(variant, **kw))(f"b{i}")
    for i in range(6)
}
SEGMENTER_NAMES: tuple[str, ...] = tuple(_DECODERS)


def _per_pixel_dropout(rate: float) -> nn.Dropout:
    """PyTorch's Dropout2d on NHWC maps: whole channels dropped per example."""
    return nn.Dropout(rate, broadcast_dims=(1, 2))


class SoftmaxSegmenter(nn.Module):
    """Decoder + Dropout2d + 1x1 conv classifier: images -> logits [B, h, w, C] (float32)."""

    decoder: nn.Module
    num_classes: int
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        features = self.decoder(images, train)
        features = _per_pixel_dropout(self.dropout_rate)(features, deterministic=not train)
        return nn.Conv(
            self.num_classes, (1, 1), dtype=jnp.float32, param_dtype=jnp.float32,
            kernel_init=CLASSIFIER_KERNEL_INIT, name="classifier",
        )(features.astype(jnp.float32))


class LGMMSegmenter(nn.Module):
    """Decoder + Dropout2d + per-pixel projection + normalisation + GMM head (Fig. 2, one pixel = one z).

    `encode(images, train)` -> latents [B, h, w, D] (float32); `__call__` -> log p(z|y) [B, h, w, C].
    The head's attributes are those of `LGMMModel` (see there and `GMMHead`). GMMSeg's head
    (`lgmm_jax.method.gmmseg`) is this module with `latent_projection="conv_bn_relu"` (mmcv's 1x1 ConvModule,
    omitted when the decoder is already `latent_dim` wide), `latent_normalization="layernorm_l2"` with
    PyTorch's epsilon 1e-5, and `class_norm`: the decode scores are a LayerNorm over the classes of the
    log-likelihoods (`class_logits`), which the prediction takes while the likelihood scores stay log p(z|y).
    """

    decoder: nn.Module
    num_classes: int
    num_components: int = 3
    latent_dim: int = 64
    latent_normalization: str = "l2"
    init_scale: float = 0.1
    scale_floor: float = 0.05
    share_scale: bool = True
    reduction: str = "logsumexp"
    dropout_rate: float = 0.1
    latent_projection: str = "dense"
    latent_norm_epsilon: float = 1e-6
    class_norm: bool = False
    dtype: Dtype = jnp.float32

    def setup(self):
        if self.latent_projection not in LATENT_PROJECTIONS:
            raise ValueError(f"latent_projection={self.latent_projection!r} is not one of {LATENT_PROJECTIONS}")
        self.dropout = _per_pixel_dropout(self.dropout_rate)
        self.projection, self.latent_norm, self.head = latent_modules(self)
        if self.class_norm:
            self.class_layer_norm = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32)

    def encode(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Per-pixel latents z = f_phi(x) [B, h, w, D] in float32, normalised as configured."""
        features = self.dropout(self.decoder(images, train), deterministic=not train)
        if self.latent_projection == "dense":
            z = self.projection(features)
        elif features.shape[-1] != self.latent_dim:
            z = self.projection(features, train)
        else:
            z = features
        return normalize_latents(z.astype(jnp.float32), self.latent_normalization, self.latent_norm)

    def class_logits(self, log_likelihood: jax.Array) -> jax.Array:
        """The scores a pixel's class is predicted from: the LayerNorm over the classes of log p(z|y)
        [..., C] with `class_norm` (GMMSeg's `mask_norm`), else log p(z|y) itself."""
        return self.class_layer_norm(log_likelihood) if self.class_norm else log_likelihood

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        z = self.encode(images, train)
        log_likelihood = self.head(z.reshape(-1, self.latent_dim), compact_scales=True)
        if self.class_norm and self.is_initializing():  # `class_logits` is applied on its own: create its scale
            self.class_logits(log_likelihood)
        return log_likelihood.reshape(*z.shape[:3], self.num_classes)


def auxiliary_logits(collections: Mapping) -> jax.Array | None:
    """The auxiliary head's logits [B, H/8, W/8, C] from a training apply's mutable collections, or None.

    Use as `out, updates = model.apply(..., train=True, mutable=["batch_stats", "auxiliary"])`,
    `auxiliary_logits(updates)`. None for models without an auxiliary head.
    """
    leaves = jax.tree.leaves(collections.get("auxiliary", {}))
    return leaves[0] if leaves else None


def create_segmenter(
    name: str,
    num_classes: int,
    head: str = "softmax",
    *,
    dtype: Dtype = jnp.float32,
    decoder_kwargs: dict | None = None,
    **head_kwargs,
) -> SoftmaxSegmenter | LGMMSegmenter:
    """The segmenter `name` with a softmax or L-GMM per-pixel head.

    Args:
      name: one of `SEGMENTER_NAMES`.
      num_classes: C, the known classes (void is not a class).
      head: "softmax" or "lgmm".
      dtype: compute dtype of the decoder (parameters are float32; scores are float32).
      decoder_kwargs: overrides of the decoder's attributes, e.g. `{"auxiliary_head": False}` for
        DeepLabv3+, `{"drop_path_rate": 0.0}` for SegFormer; for SegFormer also the conventions of other
        implementations' weights: `layer_norm_epsilon` / `embedding_layer_norm_epsilon` (Hugging Face
        1e-5, mmseg 1e-6) and `decode_projection="conv_bn_relu"` (mmseg's decode head).
        `**lgmm_jax.pretrained.model_options(path)` passes those a checkpoint needs.
      **head_kwargs: attributes of the head module: `dropout_rate` for both; for "lgmm" also
        `latent_dim` (64), `num_components` (3), `latent_normalization`, `init_scale`, `scale_floor`,
        `share_scale`, `reduction`, `latent_projection`, `latent_norm_epsilon`, `class_norm`.
    """
    if name not in _DECODERS:
        raise ValueError(f"unknown segmenter {name!r}; choose one of: {', '.join(SEGMENTER_NAMES)}")
    if head not in SEGMENTER_HEADS:
        raise ValueError(f"unknown segmentation head {head!r}; choose one of {SEGMENTER_HEADS}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    try:
        decoder = _DECODERS[name](num_classes, dtype=dtype, **(decoder_kwargs or {}))
        closing = {"softmax": SoftmaxSegmenter, "lgmm": functools.partial(LGMMSegmenter, dtype=dtype)}[head]
        return closing(decoder, num_classes, **head_kwargs)
    except TypeError as error:
        raise ValueError(f"invalid option for segmenter {name!r} with head {head!r}: {error}") from None
