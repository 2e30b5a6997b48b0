"""What a config's data keys (`config.data`, configs/default.py) mean to the sources and the input pipeline.

Tasks, the experiment and the exports read them here, so each key is interpreted in one place.
"""

from __future__ import annotations

import ml_collections

from lgmm_jax.data.labelled import LabelledOptions


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
