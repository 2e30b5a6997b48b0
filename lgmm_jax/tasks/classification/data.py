"""A classifier's data: its sources (`catalog.get_source` with the config's options) and its padded
evaluation batches, as training and evaluation, export and the task read them."""

from __future__ import annotations

import jax
import ml_collections

from lgmm_jax.data import catalog, pipeline, settings
from lgmm_jax.data.protocols import DataRef, OpenSetProtocol
from lgmm_jax.runtime.sharding import eval_batch_size


def source(config: ml_collections.ConfigDict, ref_or_name, split: str | None = None):
    """The source of a `DataRef`, or of a dataset name and split, with the config's data_dir and options."""
    name = ref_or_name.dataset if isinstance(ref_or_name, DataRef) else ref_or_name
    split = ref_or_name.split if isinstance(ref_or_name, DataRef) else split
    return catalog.get_source(name, split, config.data_dir or None, settings.labelled_options(config))


def eval_stream(config, protocol: OpenSetProtocol, source, classes=None, all_unknown=False):
    """Padded, masked evaluation batches of this process, brought to the network's input as the training
    data was (the preset, `data.image_size`, the training dataset's normalisation)."""
    return pipeline.eval_batches(
        source,
        batch_size=eval_batch_size(config),
        preprocess=settings.preprocess_preset(config, protocol),
        known_classes=() if all_unknown else protocol.known_classes,
        classes=classes,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        normalization=settings.normalization_name(config, protocol.dataset),
        image_size=settings.input_image_size(config),
        workers=settings.eval_workers_of(config),
        threads=settings.threads_of(config),
    )
