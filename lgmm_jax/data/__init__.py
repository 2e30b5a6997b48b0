"""Data layer: sources (bundled real data, TFDS), open-set protocols, grain pipelines."""

from lgmm_jax.data.pipeline import (
    NORMALIZATION,
    PREPROCESS_PRESETS,
    Normalization,
    count_examples,
    eval_batches,
    get_normalization,
    num_eval_batches,
    steps_per_epoch,
    train_iterator,
)
from lgmm_jax.data.protocols import DataRef, OpenSetProtocol, get_protocol, remap_labels
from lgmm_jax.data.sources import ArraySource, DatasetNotAvailableError, Source, get_source

__all__ = [
    "ArraySource",
    "DataRef",
    "DatasetNotAvailableError",
    "NORMALIZATION",
    "Normalization",
    "OpenSetProtocol",
    "PREPROCESS_PRESETS",
    "Source",
    "count_examples",
    "eval_batches",
    "get_normalization",
    "get_protocol",
    "get_source",
    "num_eval_batches",
    "remap_labels",
    "steps_per_epoch",
    "train_iterator",
]
