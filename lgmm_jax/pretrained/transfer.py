"""The encoder of one run of this library into another model whose encoder has the same structure.

`transfer_encoder(source_variables, model)` takes the restored variables of the source model (a
classifier, an L-GMM model or a segmenter of this library, e.g. from a workdir's checkpoint or an
export) and returns variables of `model` whose encoder (`backbone`, or `decoder/backbone` in a
segmenter) is the source's, params and batch_stats alike; the rest is initialised (or taken from
`target_variables`). Reading workdirs and exports is the caller's.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lgmm_jax.pretrained.loading import (
    DEFAULT_IMAGE_SHAPE,
    LOADED_COLLECTIONS,
    abstract_variables,
    initial_values,
    natural_order,
    role_roots,
)
from lgmm_jax.pretrained.rules import WeightsError

ENCODER_ROOTS = (("decoder", "backbone"), ("backbone",))


def encoder_root(variables: Mapping) -> tuple[str, ...]:
    """Where the encoder lives in a variables tree of this library's models."""
    params = variables.get("params", {})
    for root in ENCODER_ROOTS:
        node = params
        for part in root:
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping):
            return root
    places = " nor ".join("/".join(root) for root in ENCODER_ROOTS)
    raise WeightsError(f"the source variables have no encoder (neither params/{places})")


def transfer_encoder(source_variables: Mapping, model, *, target_variables: Mapping | None = None,
                     image_shape=DEFAULT_IMAGE_SHAPE, rng: jax.Array | None = None,
                     source: str = "source variables") -> tuple[dict, dict]:
    """Variables of `model` with the encoder copied from `source_variables`; (variables, report).

    The report is `load_variables`'s: "loaded" and "fresh" name our arrays, "ignored" the source's
    arrays outside its encoder. A structure or shape mismatch raises WeightsError naming both arrays.
    """
    source_root = encoder_root(source_variables)
    target_root = role_roots(model)["encoder"]
    source_flat = traverse_util.flatten_dict(dict(source_variables))
    encoder = {(key[0], *key[1 + len(source_root):]): value for key, value in source_flat.items()
               if key[0] in LOADED_COLLECTIONS and key[1 : 1 + len(source_root)] == source_root}
    abstract = traverse_util.flatten_dict(abstract_variables(model, image_shape))
    ours = {(key[0], *key[1 + len(target_root):]): key for key in abstract
            if key[0] in LOADED_COLLECTIONS and key[1 : 1 + len(target_root)] == target_root}
    for relative in sorted(encoder.keys() - ours.keys(), key=natural_order):
        raise WeightsError(f"{source}: encoder array {'/'.join(relative)} has no counterpart in the model's "
                           "encoder: the encoders differ in architecture")
    for relative in sorted(ours.keys() - encoder.keys(), key=natural_order):
        raise WeightsError(
            f"{source}: the source encoder lacks {'/'.join(ours[relative])}: the encoders differ"
        )
    misfits = [(relative, key) for relative, key in ours.items()
               if tuple(np.shape(encoder[relative])) != tuple(abstract[key].shape)]
    if misfits:  # name the largest (a kernel rather than its bias)
        relative, key = max(misfits, key=lambda misfit: np.size(encoder[misfit[0]]))
        raise WeightsError(
            f"{source}: encoder array {'/'.join(relative)} of shape {tuple(np.shape(encoder[relative]))} "
            f"does not fit {'/'.join(key)} of shape {tuple(abstract[key].shape)}"
            + (f"; {len(misfits) - 1} more arrays do not fit" if len(misfits) > 1 else "")
        )
    loaded = set(ours.values())
    if target_variables is None:
        target = initial_values(model, [key for key in abstract if key not in loaded], image_shape, rng)
    else:
        target = traverse_util.flatten_dict(dict(target_variables))
    for relative, key in ours.items():
        target[key] = jnp.asarray(encoder[relative], dtype=abstract[key].dtype)
    report = {
        "layout": "lgmm_jax",
        "loaded": ["/".join(key) for key in abstract if key in loaded],
        "fresh": ["/".join(key) for key in abstract if key not in loaded],
        "ignored": ["/".join(key) for key in source_flat
                    if not (key[0] in LOADED_COLLECTIONS and key[1 : 1 + len(source_root)] == source_root)],
    }
    return traverse_util.unflatten_dict(target), report
