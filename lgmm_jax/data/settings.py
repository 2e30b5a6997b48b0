"""What a config's data keys (`config.data`, configs/default.py) mean to the sources and the input pipeline.

Tasks, the experiment and the exports read them here, so each key is interpreted in one place.
"""

from __future__ import annotations

import os

import ml_collections

from lgmm_jax.data import reading
from lgmm_jax.data.labelled import LabelledOptions

AUTO = -1
MAX_AUTO_WORKERS = 32


def data_keys(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config.data`` (an empty ConfigDict for a config written before it existed)."""
    return config.get("data") or ml_collections.ConfigDict()


def input_image_size(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
    """``data.image_size`` as (H, W), or None where images are used at the size the source gives."""
    size = tuple(data_keys(config).get("image_size", ()) or ())
    if not size:
        return None
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"data.image_size={size} must be (height, width), e.g. '(28, 28)'")
    return (int(size[0]), int(size[1]))


def normalization_name(config: ml_collections.ConfigDict, dataset: str) -> str:
    """The dataset whose normalisation statistics the model sees: ``data.normalization``, or ``dataset``."""
    return data_keys(config).get("normalization", "") or dataset


def labelled_options(config: ml_collections.ConfigDict | None) -> LabelledOptions:
    """How labelled folders and lists are split and decoded (`labelled.LabelledOptions`)."""
    return LabelledOptions.from_config(None if config is None else data_keys(config))


def class_table(config: ml_collections.ConfigDict) -> list[dict]:
    """``data.classes``: a labelled source's class table (id, name, path) as the run recorded it, or []."""
    return [dict(entry.to_dict() if hasattr(entry, "to_dict") else entry)
            for entry in data_keys(config).get("classes", ()) or ()]


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def workers_for(config: ml_collections.ConfigDict, source) -> int:
    """``data.workers``; its default (-1, auto): none for a source held in memory (worker processes cost
    more than they save there), else one per core (at most `MAX_AUTO_WORKERS`) for a source that decodes
    files."""
    workers = int(data_keys(config).get("workers", AUTO))
    if workers != AUTO:
        return workers
    return 0 if getattr(source, "in_memory", False) else min(available_cores(), MAX_AUTO_WORKERS)


def threads_of(config: ml_collections.ConfigDict) -> int:
    """``data.threads``: reading threads in each process (`reading`)."""
    return int(data_keys(config).get("threads", reading.DEFAULT_THREADS))


def eval_workers_of(config: ml_collections.ConfigDict) -> int:
    """``data.eval_workers``: worker processes of each evaluation stream (default 0: its threads only; an
    evaluation stream lives for one pass, and starting workers costs seconds each time)."""
    return int(data_keys(config).get("eval_workers", 0))


def preprocess_preset(config: ml_collections.ConfigDict, protocol) -> str:
    """The config's preset, or the protocol's when the config leaves it empty."""
    return config.preprocess or protocol.preprocess
