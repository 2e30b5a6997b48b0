"""A model from the `model` section of a run's config: what training, evaluation and an exported model's
loader build, so that each rebuilds exactly the same structure."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from lgmm_jax.models.backbones import create_classifier
from lgmm_jax.models.lgmm import create_lgmm
from lgmm_jax.models.segmenter import SEGMENTER_NAMES, create_segmenter

HEADS = ("lgmm", "softmax")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """The jnp dtype of `model.dtype` ('float32' or 'bfloat16')."""
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r} is not one of {tuple(DTYPES)}")
    return DTYPES[name]


def _positive_integers(key: str, values: tuple) -> tuple[int, ...]:
    if any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"model.{key}={values} must be positive integers, e.g. (64, 128, 256)")
    return tuple(int(v) for v in values)


def backbone_options(model_config: ml_collections.ConfigDict) -> dict:
    """Keyword arguments of `create_backbone` that the config sets and the encoder has: `zero_init_residual`
    is a ResNet option (a config that switches a ResNet recipe to another encoder keeps working);
    `encoder_widths` sets the small CNN's channels or MiT's four stage widths, `encoder_depths` MiT's
    blocks per stage (as `model.decoder`'s `widths` and `depths` do for a SegFormer); both are refused
    for the other encoders, whose sizes are the published ones."""
    options = {}
    encoder = model_config.encoder
    if model_config.get("zero_init_residual", False) and "resnet" in encoder:
        options["zero_init_residual"] = True
    for key, option in (("encoder_widths", "widths"), ("encoder_depths", "depths")):
        values = tuple(model_config.get(key, ()))
        if not values:
            continue
        applies = encoder.startswith("mit_b") or (encoder == "small_cnn" and key == "encoder_widths")
        if not applies:
            raise ValueError(f"model.{key}={values} does not apply to {encoder!r}; leave it empty (the "
                             "published sizes)")
        options[option] = _positive_integers(key, values)
    return options


def is_segmenter(encoder: str) -> bool:
    """Whether `model.encoder` names a segmenter (per-pixel scores) rather than an image encoder."""
    return encoder in SEGMENTER_NAMES


def lgmm_head_options(model_config: ml_collections.ConfigDict) -> dict:
    """The GMM head's attributes, the same for the classifier and the segmenter."""
    return dict(
        latent_normalization=model_config.latent_normalization,
        init_scale=model_config.init_scale,
        scale_floor=model_config.scale_floor,
        share_scale=model_config.share_scale,
        reduction="max" if model_config.get("variant", "equations") == "appendix_g" else "logsumexp",
    )


def create_segmentation_model(model_config: ml_collections.ConfigDict, num_classes: int):
    """The segmenter `model.encoder` with `model.head`'s per-pixel head (`models.create_segmenter`)."""
    if model_config.head not in HEADS:
        raise ValueError(f"model.head={model_config.head!r} is not one of {HEADS}")
    decoder = model_config.get("decoder") or {}
    decoder = {name: tuple(v) if isinstance(v, list) else v for name, v in dict(decoder).items()}
    lgmm = dict(num_components=model_config.num_components, latent_dim=model_config.latent_dim,
                latent_projection=model_config.get("latent_projection", "dense"),
                latent_norm_epsilon=model_config.get("latent_norm_epsilon", 1e-6),
                class_norm=model_config.get("class_norm", False),
                **lgmm_head_options(model_config)) if model_config.head == "lgmm" else {}
    return create_segmenter(model_config.encoder, num_classes, model_config.head,
                            dtype=compute_dtype(model_config.dtype), decoder_kwargs=decoder, **lgmm)


def create_model(model_config: ml_collections.ConfigDict, num_classes: int):
    """The L-GMM model or its softmax counterpart, as `model_config.head` says: an image classifier, or a
    segmenter when `model.encoder` names one."""
    if is_segmenter(model_config.encoder):
        return create_segmentation_model(model_config, num_classes)
    dtype = compute_dtype(model_config.dtype)
    if model_config.head == "lgmm":
        return create_lgmm(
            model_config.encoder,
            num_classes,
            model_config.num_components,
            model_config.latent_dim,
            dtype=dtype,
            backbone_kwargs=backbone_options(model_config),
            **lgmm_head_options(model_config),
        )
    if model_config.head == "softmax":
        return create_classifier(model_config.encoder, num_classes, dtype=dtype, **backbone_options(model_config))
    raise ValueError(f"model.head={model_config.head!r} is not one of {HEADS}")


def initial_variables(model, key: jax.Array, image_shape: tuple[int, ...]) -> dict:
    """The model's variables for one dummy image of `image_shape` (H, W, C)."""
    params_key, dropout_key = jax.random.split(key)
    images = jnp.zeros((1, *image_shape), jnp.float32)
    return model.init({"params": params_key, "dropout": dropout_key}, images, train=False)
