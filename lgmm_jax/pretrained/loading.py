"""Placing a converted checkpoint into a model's variables, with a report of what came from where.

Rules (`convert_state`):
- every entry of a part (role) that the model has and `what` asks for must land on an array of ours of
  the same shape, and every array of ours in a part the file provides must be filled: anything else is a
  `WeightsError` naming the file, the entry and both shapes (a classifier of another class count with
  what="all" is one);
- `what="backbone"` loads the encoder only: the file's other entries are reported ignored and our
  decoder / heads fresh (a classifier of another class count is then no error);
- parts the file has and the model lacks (an ImageNet head for a segmenter, an auxiliary head for a model
  built without one) are ignored; parts of ours the file lacks are fresh (left at initialisation).
- conventions of the source that change outputs (SegFormer's LayerNorm epsilons, mmseg's decode-head
  projection) must be those of the model: `model_options(path)` gives the create_segmenter kwargs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lgmm_jax.models.backbones import Classifier
from lgmm_jax.models.deeplab import DeepLabV3Plus
from lgmm_jax.models.lgmm import LGMMModel
from lgmm_jax.models.segformer import MixTransformer, SegFormer
from lgmm_jax.models.segmenter import LGMMSegmenter, SoftmaxSegmenter
from lgmm_jax.pretrained.files import read_state_dict
from lgmm_jax.pretrained.layouts import Layout, detect
from lgmm_jax.pretrained.rules import WeightsError

DEFAULT_IMAGE_SHAPE = (1, 224, 224, 3)
WHAT = ("all", "backbone")
LOADED_COLLECTIONS = ("params", "batch_stats")


def role_roots(model) -> dict[str, tuple[str, ...]]:
    """Where each part of a checkpoint lives in `model`'s variables (under each collection)."""
    if isinstance(model, (SoftmaxSegmenter, LGMMSegmenter)):
        roots = {"encoder": ("decoder", "backbone"), "decode_head": ("decoder", "decode_head"),
                 "auxiliary_head": ("decoder", "auxiliary_head")}
        if isinstance(model, SoftmaxSegmenter):
            roots["pixel_classifier"] = ("classifier",)
        return roots
    if isinstance(model, (SegFormer, DeepLabV3Plus)):
        return {"encoder": ("backbone",), "decode_head": ("decode_head",),
                "auxiliary_head": ("auxiliary_head",)}
    if isinstance(model, Classifier):
        return {"encoder": ("backbone",), "image_classifier": ("classifier",)}
    if isinstance(model, LGMMModel):
        return {"encoder": ("backbone",)}
    return {"encoder": ()}  # a bare backbone (create_backbone, MixTransformer, ResNetV1c)


def abstract_variables(model, image_shape=DEFAULT_IMAGE_SHAPE) -> dict:
    """The model's variables as ShapeDtypeStructs (nothing computed)."""
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    images = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(rngs, x, train=False), images)


def initial_values(model, keys, image_shape=DEFAULT_IMAGE_SHAPE, rng: jax.Array | None = None) -> dict:
    """`model.init`'s values of the flattened variable `keys` only (the rest is never computed).

    Jitted so that XLA drops the initialisers of every other array: a head initialises in a moment
    where initialising the whole model would compile every initialiser.
    """
    keys = list(keys)
    if not keys:
        return {}
    rng = jax.random.key(0) if rng is None else rng
    params_rng, dropout_rng = jax.random.split(rng)

    @jax.jit
    def init(params_rng, dropout_rng):
        images = jnp.zeros(image_shape, jnp.float32)
        flat = traverse_util.flatten_dict(model.init({"params": params_rng, "dropout": dropout_rng}, images,
                                                     train=False))
        return [flat[key] for key in keys]

    return dict(zip(keys, init(params_rng, dropout_rng)))


def _segformer_of(model):
    for candidate in (model, getattr(model, "decoder", None), getattr(model, "backbone", None)):
        if isinstance(candidate, (SegFormer, MixTransformer)):
            return candidate
    return None


def check_conventions(model, layout: Layout, what: str, file: str) -> None:
    """WeightsError unless the model computes as the file's implementation (see `model_options`)."""
    wanted = dict(layout.options.get("decoder_kwargs", {}))
    if what == "backbone":
        wanted.pop("decode_projection", None)
    module = _segformer_of(model)
    if module is None or not wanted:
        return
    for key, value in wanted.items():
        if hasattr(module, key) and getattr(module, key) != value:
            raise WeightsError(
                f"{file}: a {layout.name} checkpoint needs {key}={value!r} but the model has "
                f"{getattr(module, key)!r}; build it with models.create_segmenter(name, num_classes, "
                f"**pretrained.model_options({file!r}))"
            )


def _name(key: tuple[str, ...]) -> str:
    return "/".join(key)


def natural_order(key: tuple[str, ...]) -> list:
    """Sort key that puts stage3_block7 before stage3_block10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", _name(key))]


def _under(key: tuple[str, ...], root: tuple[str, ...]) -> bool:
    return key[0] in LOADED_COLLECTIONS and key[1 : 1 + len(root)] == root


def plan(model, state: Mapping[str, np.ndarray], *, file: str = "<state dict>", what: str = "all",
         image_shape=DEFAULT_IMAGE_SHAPE, abstract=None) -> tuple[dict, dict]:
    """Which of our arrays each file entry fills: ({our key: array}, report); nothing initialised."""
    if what not in WHAT:
        raise ValueError(f"what={what!r}; choose one of {WHAT}")
    layout = detect(state, file)
    check_conventions(model, layout, what, file)
    entries, ignored = layout.convert(state, file)
    abstract = abstract_variables(model, image_shape) if abstract is None else abstract
    flat = traverse_util.flatten_dict(abstract)
    roots = {role: root for role, root in role_roots(model).items()
             if any(_under(key, root) for key in flat)}
    loaded, filled_roles, misfits = {}, set(), []
    for entry in entries:
        root = roots.get(entry.role)
        if root is None or (what == "backbone" and entry.role != "encoder"):
            ignored.extend(entry.sources)
            continue
        key = (entry.collection, *root, *entry.path)
        if key not in flat:
            raise WeightsError(
                f"{file}: entry {entry.source!r} {entry.source_shape} has no counterpart in the model "
                f"(it would be {_name(key)}): the file's {entry.role} ({layout.name}) is another architecture"
            )
        if tuple(flat[key].shape) != entry.value.shape:
            misfits.append((entry, key))
            continue
        loaded[key] = np.asarray(entry.value, dtype=flat[key].dtype)
        filled_roles.add(entry.role)
    if misfits:  # name the largest (a kernel rather than its bias)
        entry, key = max(misfits, key=lambda misfit: misfit[0].value.size)
        raise WeightsError(
            f"{file}: entry {entry.source!r} of shape {entry.source_shape} does not fit {_name(key)} "
            f"of shape {tuple(flat[key].shape)} (converted: {entry.value.shape})"
            + (f"; {len(misfits) - 1} more entries do not fit" if len(misfits) > 1 else "")
        )
    for role in sorted(filled_roles):
        missing = [key for key in flat if _under(key, roots[role]) and key not in loaded]
        missing.sort(key=natural_order)
        if missing:
            raise WeightsError(
                f"{file}: the {layout.name} file has no entry for {_name(missing[0])}"
                f"{f' and {len(missing) - 1} more arrays' if len(missing) > 1 else ''} of the model's "
                f"{role}: the file and the model differ in architecture"
            )
    if "encoder" not in filled_roles:
        raise WeightsError(f"{file}: the {layout.name} file fills none of the model's encoder")
    ordered = sorted(flat, key=natural_order)
    report = {
        "layout": layout.name,
        "loaded": [_name(key) for key in ordered if key in loaded],
        "fresh": [_name(key) for key in ordered if key not in loaded],
        "ignored": list(dict.fromkeys(ignored)),
    }
    return loaded, report


def convert_state(model, state: Mapping[str, np.ndarray], *, file: str = "<state dict>", what: str = "all",
                  image_shape=DEFAULT_IMAGE_SHAPE, rng: jax.Array | None = None) -> tuple[dict, dict]:
    """`load_variables` for a state dict already in memory ({name: array}, the file's names)."""
    abstract = abstract_variables(model, image_shape)
    loaded, report = plan(model, state, file=file, what=what, image_shape=image_shape, abstract=abstract)
    flat = traverse_util.flatten_dict(abstract)
    fresh = initial_values(model, [key for key in flat if key not in loaded], image_shape, rng)
    variables = {key: jnp.asarray(loaded[key]) if key in loaded else fresh[key] for key in flat}
    return traverse_util.unflatten_dict(variables), report


def load_variables(model, path: str | os.PathLike, *, what: str = "all", image_shape=DEFAULT_IMAGE_SHAPE,
                   rng: jax.Array | None = None) -> tuple[dict, dict]:
    """Variables of `model` (params, batch_stats, ...) filled from the checkpoint at `path`.

    Args:
      model: a flax module of this library: `models.create_classifier`, `create_lgmm`,
        `create_segmenter`, or a bare backbone.
      path: a local path or URL (gs://...) of a .safetensors, .pth/.pt/.bin/.ckpt or .npz file in one of
        the layouts `layouts.detect` recognises.
      what: "all" (every part the file and the model share) or "backbone" (the encoder only).
      image_shape: an input shape at which the model initialises ([B, H, W, C]; only shapes matter).
      rng: initialises the arrays the file does not fill (default: key 0).

    Returns:
      (variables, report): `model.apply(variables, images, train=False)` works as it is; report has
      "layout" (what the file is), "loaded" (our array names filled from the file), "fresh" (ours left at
      initialisation) and "ignored" (the file's entries not used).

    Raises:
      WeightsError (a ValueError) with a one-line message naming the file: unreadable, unknown layout,
      a shape mismatch (entry and both shapes), a missing or extra array, or a model built with other
      conventions than the file's (see `model_options`).
    """
    path = os.fspath(path)
    return convert_state(model, read_state_dict(path), file=path, what=what, image_shape=image_shape, rng=rng)


def model_options(path: str | os.PathLike) -> dict:
    """Keyword arguments for `models.create_segmenter(name, num_classes, **options)` that make the model
    compute what the checkpoint's implementation computes: e.g. `{"decoder_kwargs": {"layer_norm_epsilon":
    1e-5, ...}}` for Hugging Face SegFormer, `decode_projection="conv_bn_relu"` for mmseg's SegFormer
    head; {} for layouts whose conventions are the defaults (ResNets, Swin, DeepLabv3+)."""
    path = os.fspath(path)
    return dict(detect(read_state_dict(path), path).options)
