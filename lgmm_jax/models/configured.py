"""The head-independent parts of a model built from the `model` section of a run's config (the encoder's
options, the compute dtype, the initial variables); the model itself is the head's (`lgmm_jax.heads`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from lgmm_jax.models.segmenter import SEGMENTER_NAMES

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


def decoder_options(model_config: ml_collections.ConfigDict) -> dict:
    """A segmenter's decoder attributes from `model.decoder` (lists as tuples), e.g. a SegFormer's widths."""
    decoder = model_config.get("decoder") or {}
    return {name: tuple(v) if isinstance(v, list) else v for name, v in dict(decoder).items()}


def initial_variables(model, key: jax.Array, image_shape: tuple[int, ...]) -> dict:
    """The model's variables for one dummy image of `image_shape` (H, W, C)."""
    params_key, dropout_key = jax.random.split(key)
    images = jnp.zeros((1, *image_shape), jnp.float32)
    return model.init({"params": params_key, "dropout": dropout_key}, images, train=False)
