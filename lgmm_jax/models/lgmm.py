"""L-GMM: an encoder f_phi, a projection to the latent z, and the Gaussian mixture head theta (Fig. 2).

Section 5.1 projects the backbone's features to a 128-dimensional latent with a 1x1 convolution. A 1x1
convolution followed by global average pooling equals pooling followed by a Dense layer, so the projection
here is a Dense layer on the pooled features. Latents are L2-normalised by default (docs/design.md, "Latent normalisation":
with raw latents their norm grows while the means lag behind, and unknown classes end up closer to the
means than known ones).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgmm_jax.models.backbones import create_backbone
from lgmm_jax.models.deeplab import ConvModule
from lgmm_jax.models.gmm import GMMHead

LATENT_NORMALIZATIONS = ("l2", "none", "layernorm_l2", "l2_log_norm")


def l2_normalize(z: jax.Array, epsilon: float = 1e-6) -> jax.Array:
    """z / |z|, safe at z = 0."""
    return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(z), axis=-1, keepdims=True), epsilon**2))


def require_latent_normalization(name: str) -> None:
    """Raises ValueError unless `name` is one of LATENT_NORMALIZATIONS."""
    if name not in LATENT_NORMALIZATIONS:
        raise ValueError(f"unknown latent normalization {name!r}: use one of {LATENT_NORMALIZATIONS}")


def normalize_latents(z: jax.Array, normalization: str, layer_norm=None) -> jax.Array:
    """The projected latents as configured: "none" as they are, "l2" z / |z|, "layernorm_l2" the
    `layer_norm` module first, then z / |z| (over the last axis), "l2_log_norm" [z / |z|, log |z|] (the
    direction on the sphere plus the norm that L2 normalisation discards: one more dimension)."""
    if normalization == "l2_log_norm":
        log_norm = 0.5 * jnp.log(jnp.maximum(jnp.sum(jnp.square(z), axis=-1, keepdims=True), 1e-12))
        return jnp.concatenate([l2_normalize(z), log_norm], axis=-1)
    if normalization == "layernorm_l2":
        z = layer_norm(z)
    if normalization in ("l2", "layernorm_l2"):
        z = l2_normalize(z)
    return z


def latent_modules(model: nn.Module) -> tuple[nn.Dense, nn.LayerNorm | None, GMMHead]:
    """(projection to D, LayerNorm or None, GMM head) from an L-GMM model's attributes.

    The projection is a Dense, or for a segmenter with `latent_projection="conv_bn_relu"` mmcv's 1x1
    ConvModule (conv, BatchNorm, ReLU: GMMSeg's); the LayerNorm takes the model's `latent_norm_epsilon`
    where it has one (GMMSeg's PyTorch 1e-5), else 1e-6.

    Shared by `LGMMModel` and the per-pixel `LGMMSegmenter`, which assign them in `setup` as
    `projection`, `latent_norm` and `head` (the parameter names the train step and checkpoints use).
    """
    require_latent_normalization(model.latent_normalization)
    # "l2_log_norm" appends log |x| to the direction: the projection gives one dimension fewer.
    projected_dim = model.latent_dim - (model.latent_normalization == "l2_log_norm")
    if getattr(model, "latent_projection", "dense") == "conv_bn_relu":  # GMMSeg's (segmenters)
        projection = ConvModule(projected_dim, dtype=model.dtype)
    else:
        projection = nn.Dense(projected_dim, dtype=model.dtype, param_dtype=jnp.float32)
    latent_norm = None
    if model.latent_normalization == "layernorm_l2":
        epsilon = getattr(model, "latent_norm_epsilon", 1e-6)
        latent_norm = nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32, param_dtype=jnp.float32)
    head = GMMHead(
        num_classes=model.num_classes,
        num_components=model.num_components,
        latent_dim=model.latent_dim,
        init_scale=model.init_scale,
        scale_floor=model.scale_floor,
        share_scale=model.share_scale,
        reduction=model.reduction,
    )
    return projection, latent_norm, head


class LGMMModel(nn.Module):
    """Backbone + projection + latent normalisation + GMM head.

    `__call__(images, train)` returns (latents [B, D], class log-likelihoods log p(z|y) [B, C]);
    `encode(images, train)` returns the latents alone (what the train step differentiates through).
    """

    backbone: nn.Module
    num_classes: int
    num_components: int = 3
    latent_dim: int = 128
    latent_normalization: str = "l2"
    init_scale: float = 0.1
    scale_floor: float = 0.05
    share_scale: bool = True
    reduction: str = "logsumexp"
    dtype: Any = jnp.float32

    def setup(self):
        self.projection, self.latent_norm, self.head = latent_modules(self)

    def features(self, images: jax.Array, train: bool = False) -> jax.Array:
        """The backbone's pooled features [B, F], before the projection."""
        return self.backbone(images, train=train)

    def encode(self, images: jax.Array, train: bool = False) -> jax.Array:
        """z = f_phi(x) [B, D] in float32, normalised as configured."""
        z = self.projection(self.features(images, train)).astype(jnp.float32)
        return normalize_latents(z, self.latent_normalization, self.latent_norm)

    def __call__(self, images: jax.Array, train: bool = False):
        z = self.encode(images, train)
        return z, self.head(z)


def create_lgmm(
    name: str,
    num_classes: int,
    num_components: int = 3,
    latent_dim: int = 128,
    *,
    dtype=jnp.float32,
    backbone_kwargs: dict | None = None,
    **head_kwargs,
) -> LGMMModel:
    """The backbone `name` with its classifier removed, a projection to `latent_dim`, and the GMM head."""
    return LGMMModel(
        backbone=create_backbone(name, dtype=dtype, **(backbone_kwargs or {})),
        num_classes=num_classes,
        num_components=num_components,
        latent_dim=latent_dim,
        dtype=dtype,
        **head_kwargs,
    )
