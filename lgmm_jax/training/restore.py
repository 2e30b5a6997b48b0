"""A training run's latest checkpoint, rebuilt as a model and its variables: what evaluation and export
start from.

The model and the train state's structure come from the run's config exactly as training builds them
(`state.create_train_state` under `jax.eval_shape`), so nothing is initialised: orbax restores straight
into the shapes and shardings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
from etils import epath

from lgmm_jax import heads
from lgmm_jax.data import protocols
from lgmm_jax.deploy import forward
from lgmm_jax.runtime import checkpointing
from lgmm_jax.training import experiment
from lgmm_jax.data.protocols import OpenSetProtocol
from lgmm_jax.data.sources import Source
from lgmm_jax.training.state import create_optimizer, create_train_state, state_shardings


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A training run's latest checkpoint, rebuilt: what evaluation and export need.

    variables: {"params", "batch_stats", "mixture"} of the model (see `model_variables`).
    input_shape: (H, W, C) of the images the network takes (after the evaluation transform).
    """

    config: ml_collections.ConfigDict
    protocol: OpenSetProtocol
    train_source: Source
    model: Any
    variables: dict
    input_shape: tuple[int, ...]
    num_classes: int
    step: int


def configured_model(config: ml_collections.ConfigDict):
    """(protocol, training source, number of known classes, network input shape (H, W, C), model) of a
    config: what rebuilding a trained model needs besides its variables."""
    protocol = experiment.resolve_protocol(config)
    train_source = experiment.data_source(protocol.dataset, protocol.train_split, config=config)
    num_classes = protocols.num_known_classes(protocol, train_source)
    input_shape = experiment.model_input_shape(config, protocol, train_source)
    return protocol, train_source, num_classes, tuple(input_shape), heads.create_model(config.model, num_classes)


def restore_workdir(workdir: str, mesh, config: ml_collections.ConfigDict | None = None) -> TrainedModel:
    """The latest checkpoint of `workdir`, rebuilt with the run's config (`DIR/config.json` by default).

    The train state's structure comes from `state.py`, as in training, through `jax.eval_shape`: nothing
    is initialised, orbax restores straight into the shapes and shardings.

    Raises:
      FileNotFoundError: no config.json, or no complete checkpoint in the workdir.
      IncompatibleCheckpointError: the checkpoint does not fit the config.
    """
    config = config if config is not None else checkpointing.read_config(workdir)
    protocol, train_source, num_classes, input_shape, model = configured_model(config)
    # The optimiser state's structure does not depend on the schedule's step counts.
    optimizer, _ = create_optimizer(config, steps_per_epoch=1, total_steps=1)
    abstract = jax.eval_shape(lambda: create_train_state(config, model, optimizer, input_shape, num_classes))
    checkpoints = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
    no_checkpoint = FileNotFoundError(
        f"no complete checkpoint in {checkpoints}: train first "
        f"(python -m lgmm_jax.main --workdir={workdir}) or pass the --workdir of a finished run"
    )
    if not epath.Path(checkpoints).is_dir():
        raise no_checkpoint
    manager = checkpointing.open_manager(workdir, config, read_only=True)
    try:
        state = checkpointing.restore_latest(manager, abstract, state_shardings(abstract, mesh, num_classes))
    finally:
        manager.close()
    if state is abstract:  # restore_latest found no complete step
        raise no_checkpoint
    return TrainedModel(
        config=config,
        protocol=protocol,
        train_source=train_source,
        model=model,
        variables=forward.model_variables(state),
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        step=int(state.step),
    )


def with_overrides(config: ml_collections.ConfigDict, ood_datasets=(), data_dir: str | None = None,
                   config_overrides: dict | None = None):
    """A copy of `config` with extra unknown sets (`ood_datasets` entries), another data_dir, and
    `config_overrides` ({dotted key: value}, e.g. {"eval_batch_size": 64}) written in."""
    config = ml_collections.ConfigDict(json.loads(config.to_json()))
    config.update_from_flattened_dict(dict(config_overrides or {}))
    if ood_datasets:
        config.ood_datasets = tuple(config.ood_datasets) + tuple(ood_datasets)
    if data_dir:
        config.data_dir = data_dir
    return config
