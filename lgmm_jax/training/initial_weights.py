"""Starting a new run from weights (`config.init`): a published checkpoint or an earlier run of this library.

    --config.init.weights=resnet50.safetensors                     # the encoder; the heads start fresh
    --config.init.weights=model.safetensors --config.init.what=all  # every part the file and model share
    --config.init.weights=/runs/garments                           # the encoder of one of our workdirs or exports

Only a run that starts at step 0 reads the file: a resumed run takes its own checkpoint. The arrays the file
does not fill (a GMM head, a decode head, a classifier of another class count) keep the run's own
initialisation, and so does the optimiser's state (zero moments whatever the parameters). What was loaded,
left fresh and ignored is printed in one line and written to `init_weights.json` in the workdir. A file that
cannot be used fails in one line before anything is written (`pretrained.WeightsError`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
from flax import traverse_util

from lgmm_jax import pretrained
from lgmm_jax.deploy import inference
from lgmm_jax.runtime import checkpointing
from lgmm_jax.training import restore
from lgmm_jax.runtime.sharding import make_mesh

REPORT_FILE = "init_weights.json"
WHAT = ("backbone", "all")
SHOWN_NAMES = 3  # names of fresh arrays and ignored entries quoted in the one-line summary


def weights_of(config: ml_collections.ConfigDict) -> str:
    """`init.weights`, or '' (a config written before the key existed starts from scratch)."""
    return str(config.get("init", {}).get("weights", "") or "")


def is_run_folder(path: str) -> bool:
    """A workdir (config.json and checkpoints) or an export (model.json) of this library."""
    folder = epath.Path(path)
    return folder.is_dir() and ((folder / "model.json").exists() or (folder / "config.json").exists())


def with_source_conventions(config: ml_collections.ConfigDict, workdir: str | None) -> ml_collections.ConfigDict:
    """`config` with the conventions of `init.weights`' implementation written into `model.decoder`
    (Hugging Face SegFormer's LayerNorm epsilon, mmseg's decode-head projection), so that the model
    computes what the source computed; config.json then records them for evaluation and export. A run
    that resumes takes them from its own config.json and does not open the file again (`workdir` None: no
    run folder, always read the file)."""
    path = weights_of(config)
    if not path:
        return config
    what = config.init.get("what", "backbone")
    if what not in WHAT:
        raise ValueError(f"init.what={what!r} is not one of {WHAT}")
    if is_run_folder(path):
        return config
    if workdir is not None and checkpointing.complete_steps_on_disk(workdir):
        decoder_options = dict(checkpointing.read_config(workdir).model.get("decoder") or {})
    else:
        decoder_options = dict(pretrained.model_options(path).get("decoder_kwargs", {}))
        if what == "backbone":  # the decode head starts fresh in this library's form
            decoder_options.pop("decode_projection", None)
    if not decoder_options:
        return config
    config = ml_collections.ConfigDict(json.loads(config.to_json()))
    with config.unlocked():
        config.model.decoder = {**dict(config.model.get("decoder") or {}), **decoder_options}
    return config


def source_variables(path: str) -> dict:
    """The variables of one of this library's runs: an export's, or a workdir's latest checkpoint."""
    if (epath.Path(path) / inference.MODEL_FILE).exists():
        return inference.load(path).variables
    return restore.restore_workdir(path, make_mesh(), checkpointing.read_config(path)).variables


def loaded_arrays(config, model, variables: dict, image_shape) -> tuple[dict, dict]:
    """({flat variable key: array} of what `init.weights` fills, report). `variables` are the run's own
    initial ones (the arrays a library run's encoder replaces); nothing else is initialised."""
    path, what = weights_of(config), config.init.get("what", "backbone")
    shape = (1, *image_shape)
    if is_run_folder(path):
        if what != "backbone":
            raise pretrained.WeightsError(
                f"{path}: init.what='all' takes a checkpoint file; from a run of this library only the "
                "encoder is taken (init.what='backbone')")
        merged, report = pretrained.transfer_encoder(source_variables(path), model, target_variables=variables,
                                                     image_shape=shape, source=path)
        flat = traverse_util.flatten_dict(merged)
        loaded = {tuple(name.split("/")): flat[tuple(name.split("/"))] for name in report["loaded"]}
        return loaded, report
    state_dict = pretrained.read_state_dict(path)
    return pretrained.plan(model, state_dict, file=path, what=what, image_shape=shape)


def start_from(state, loaded: dict[tuple[str, ...], Any], shardings):
    """The train state with the loaded arrays in place of its initial ones, in the state's shardings."""
    collections = {"params": state.params, "batch_stats": state.batch_stats}
    flat = {name: traverse_util.flatten_dict(tree) if tree else {} for name, tree in collections.items()}
    for key, value in loaded.items():
        flat[key[0]][key[1:]] = jnp.asarray(value, dtype=flat[key[0]][key[1:]].dtype)
    state = state.replace(**{name: traverse_util.unflatten_dict(tree) if tree else collections[name]
                             for name, tree in flat.items()})
    return jax.device_put(state, shardings)


def summary(path: str, report: dict) -> str:
    """One line: how many arrays were loaded, which were left fresh and which entries were not used."""

    def some(names):
        shown = ", ".join(names[:SHOWN_NAMES])
        return f"{len(names)}" + (f" ({shown}{', ...' if len(names) > SHOWN_NAMES else ''})" if names else "")

    return (f"initial weights from {path} ({report.get('layout', '?')}): {len(report['loaded'])} arrays "
            f"loaded, {some(report['fresh'])} initialised fresh, {some(report['ignored'])} entries of the file "
            f"not used")


def write_report(workdir: str, path: str, report: dict) -> None:
    """init_weights.json: the source and the full lists of loaded, fresh and ignored names."""
    record = {"weights": os.fspath(path), **report}
    (epath.Path(workdir) / REPORT_FILE).write_text(json.dumps(record, indent=2))
