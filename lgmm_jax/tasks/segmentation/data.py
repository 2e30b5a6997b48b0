"""A segmenter's sources: `catalog.get_segmentation_source` with the config's data_dir and its ``segfolder``
options, as training, evaluation, export and the task read them."""

from __future__ import annotations

import ml_collections

from lgmm_jax.data import catalog
from lgmm_jax.data.protocols import DataRef


def segfolder_options(config: ml_collections.ConfigDict) -> dict | None:
    """The config's ``segfolder`` block (`lgmm_jax.data.segfolder`) as a dict; None where the config has none
    (one written before the block existed: the defaults)."""
    block = config.get("segfolder")
    return None if block is None else block.to_dict()


def source(config: ml_collections.ConfigDict, ref_or_name, split: str | None = None):
    """The source of a `DataRef`, or of a dataset name and split, with the config's data_dir and options."""
    name = ref_or_name.dataset if isinstance(ref_or_name, DataRef) else ref_or_name
    split = ref_or_name.split if isinstance(ref_or_name, DataRef) else split
    return catalog.get_segmentation_source(name, split, config.data_dir or None, options=segfolder_options(config))
