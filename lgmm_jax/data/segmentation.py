"""Segmentation sources: dense labels for closed-set training and evaluation, anomaly maps for open-set sets.

Every source has ``len(source)``, ``name``, ``num_classes``, ``label_names`` and ``source[i]`` -> a dict of

- ``image``: uint8 ``[H, W, 3]``;
- ``label``: uint8 ``[H, W]``, class ids ``0..num_classes-1`` and `VOID` (255) (closed-set sources);
- ``anomaly``: uint8 ``[H, W]``, 0 known, 1 anomaly, 255 void (open-set sources: the Fishyscapes format).

``catalog.get_segmentation_source(name, split, data_dir=None, options=None)`` picks the source:

=====================  ========================================================  ===========================
name                   data                                                      splits
=====================  ========================================================  ===========================
``scenes``             the offline testbed (`scenes.py`): label and anomaly      train / validation / test /
                                                                                 test_near / test_far
``ade20k``             ADE20K as mmseg reads it: ``ADEChallengeData2016``         train, validation
                       (folder or the official zip) under ``data_dir``
``cityscapes``         Cityscapes fine labels (TFDS config                       train / validation / test
                       ``semantic_segmentation``), 19 train ids
``folder=PATH``        Fishyscapes Lost & Found or Road Anomaly files: anomaly   test
``segfolder=PATH``     a user's labelled folder in mmseg's custom-dataset        train / validation / test
                       layout (`segfolder`): img_dir/ + ann_dir/ + classes.txt   (test: val/ when no test/)
=====================  ========================================================  ===========================

Label conventions:

- ADE20K as mmseg's ``ADE20KDataset``: ``ADEChallengeData2016/images/{training,validation}/<stem>.jpg``
  with ``annotations/{training,validation}/<stem>.png`` (the folder, or ``ADEChallengeData2016.zip`` as
  downloaded, read in place), under ``data_dir``; ``reduce_zero_label``: 0 ("other") becomes void,
  class k becomes k - 1 (0..149), anything above 150 void. TFDS ``scene_parse150`` is refused: its
  builder downloads ``annotations_instance.tar`` (the instance-challenge masks, whose values are
  categories of another challenge), not these 150-class semantic maps, so a stock build would train
  and score on the wrong labels.
- Cityscapes as the official ``labels.py`` (cityscapesScripts): label ids -> the 19 train ids, every
  other id (unlabelled, ego vehicle, ..., license plate) void.
- TFDS datasets are never downloaded: an unprepared one raises `DatasetNotAvailableError` at once, with
  the one-line ``tfds build`` instruction of the classification sources.

Anomaly folders (``folder=PATH``; everything after ``=`` is the path), one of two layouts:

- Fishyscapes format: ``PATH/images/<stem>.<png|jpg|...>`` with ``PATH/labels/<stem>.png`` whose values are
  0 known, 1 anomaly, 255 void (Fishyscapes Lost & Found exported as files; any set prepared this way).
- Road Anomaly as it ships: ``PATH/frames/<stem>.jpg`` with ``PATH/frames/<stem>.labels/labels_semantic.png``
  whose values are 0 (not an anomaly) and 2 (anomaly), read as 0 and 1.

Label PNGs are read as their raw values (pillow, no palette conversion). A label of another size than its
image, or with a value outside its layout's set, is refused with a one-line ValueError naming the file.
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
import zipfile
from typing import Any

import numpy as np
from PIL import Image

from lgmm_jax.data import images, scenes, sources
from lgmm_jax.data.sources import DatasetNotAvailableError

VOID = 255
SEGMENTATION_DATASETS = ("scenes", "ade20k", "cityscapes")

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# cityscapesScripts labels.py: label id -> train id for the 19 evaluated classes; every other id is void.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

FISHYSCAPES_VALUES = {0: 0, 1: 1, VOID: VOID}
ROAD_ANOMALY_VALUES = {0: 0, 2: 1}


def lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """uint8 ``[256]`` table sending each key of ``mapping`` to its value and every other byte to `VOID`."""
    table = np.full(256, VOID, dtype=np.uint8)
    table[list(mapping)] = list(mapping.values())
    return table


def reduce_zero_label_table(num_classes: int) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 -> void, k -> k - 1 for k in 1..num_classes, anything else void."""
    return lookup_table({k: k - 1 for k in range(1, num_classes + 1)})


def _check_same_size(image: np.ndarray, label: np.ndarray, what: str) -> None:
    if image.shape[:2] != label.shape[:2]:
        raise ValueError(f"{what}: image is {image.shape[0]}x{image.shape[1]} but its label is "
                         f"{label.shape[0]}x{label.shape[1]}: they must have the same size")


# ----------------------------------------------------------------------------------------------------------
# TFDS: ADE20K and Cityscapes
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TfdsSegmentationSpec:
    """How to read one TFDS segmentation dataset: its builder, features, and raw label -> class id table."""

    tfds_name: str
    image_key: str
    label_key: str
    lookup: np.ndarray
    label_names: tuple[str, ...]


TFDS_SEGMENTATION = {
    "cityscapes": TfdsSegmentationSpec(
        "cityscapes/semantic_segmentation", "image_left", "segmentation_label",
        lookup_table(CITYSCAPES_TRAIN_IDS), CITYSCAPES_CLASSES),
}


class TfdsSegmentationSource:
    """A prepared TFDS segmentation dataset (`TFDS_SEGMENTATION`), read with ``as_data_source``."""

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        if name not in TFDS_SEGMENTATION:
            raise ValueError(f"unknown segmentation dataset {name!r}: use one of {', '.join(TFDS_SEGMENTATION)}")
        self.name = name
        self.split = split
        self._spec = TFDS_SEGMENTATION[name]
        builder = sources.prepared_tfds_builder(self._spec.tfds_name, data_dir, bundled=SEGMENTATION_DATASETS)
        self._data = sources.tfds_split_data_source(builder, split)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._data[int(index)]
        image = np.asarray(record[self._spec.image_key], dtype=np.uint8)
        raw_label = np.asarray(record[self._spec.label_key], dtype=np.uint8)
        raw_label = raw_label[..., 0] if raw_label.ndim == 3 else raw_label
        _check_same_size(image, raw_label, f"record {index} of {self.name} {self.split}")
        return {"image": image, "label": self._spec.lookup[raw_label]}

    @property
    def num_classes(self) -> int:
        return len(self._spec.label_names)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self._spec.label_names

    def __repr__(self) -> str:
        return f"TfdsSegmentationSource(name={self.name!r}, split={self.split!r}, size={len(self)})"


# ----------------------------------------------------------------------------------------------------------
# ADE20K: ADEChallengeData2016, as mmseg reads it
# ----------------------------------------------------------------------------------------------------------

ADE20K_ROOT = "ADEChallengeData2016"
ADE20K_SPLITS = {"train": "training", "validation": "validation"}
ADE20K_LABELS = reduce_zero_label_table(len(ADE20K_CLASSES))
SCENE_PARSE150_REFUSED = (
    "TFDS scene_parse150 holds ADE20K's instance-challenge masks (annotations_instance.tar), not the 150-class "
    "semantic maps mmseg and the paper use: put ADEChallengeData2016/ (or ADEChallengeData2016.zip) under "
    "--config.data_dir and use --config.dataset=ade20k")


class Ade20kSource:
    """A split of ADE20K from ``data_dir/ADEChallengeData2016`` (a folder) or ``data_dir/ADEChallengeData2016.zip``
    (read in place, one open archive per thread): images/<split>/<stem>.jpg with annotations/<split>/<stem>.png,
    labels through mmseg's ``reduce_zero_label``."""

    def __init__(self, split: str, data_dir: str | None):
        if split not in ADE20K_SPLITS:
            raise ValueError(f"unknown split {split!r} for ade20k: use one of {', '.join(ADE20K_SPLITS)}")
        if not data_dir:
            raise DatasetNotAvailableError(
                f"ade20k reads {ADE20K_ROOT}/ (or {ADE20K_ROOT}.zip) from --config.data_dir: pass the folder that holds it")
        self.name, self.split = "ade20k", split
        root = os.path.join(os.path.expanduser(data_dir), ADE20K_ROOT)
        self.archive = None if os.path.isdir(root) else f"{root}.zip"
        if self.archive is not None and not os.path.isfile(self.archive):
            raise DatasetNotAvailableError(
                f"neither {root}/ nor {root}.zip exists: download ADEChallengeData2016.zip (the MIT Scene Parsing "
                f"benchmark) into {data_dir}")
        members = self._archive_names() if self.archive else self._folder_names(root)
        self._pairs = ade20k_pairs(members, ADE20K_SPLITS[split], self.archive or root)
        self._root = root
        self._local = threading.local()

    @staticmethod
    def _folder_names(root: str) -> list[str]:
        """Every file below ``root`` as a path relative to its parent (``ADEChallengeData2016/...``)."""
        parent = os.path.dirname(root)
        return [os.path.relpath(path, parent) for folder, _, names in os.walk(root)
                for path in (os.path.join(folder, name) for name in names)]

    def _archive_names(self) -> list[str]:
        with zipfile.ZipFile(self.archive) as archive:
            return archive.namelist()

    def _read(self, member: str) -> bytes:
        if self.archive is None:
            with open(os.path.join(os.path.dirname(self._root), member), "rb") as f:
                return f.read()
        if getattr(self._local, "archive", None) is None:  # a ZipFile is not safe to share between threads
            self._local.archive = zipfile.ZipFile(self.archive)
        return self._local.archive.read(member)

    def __getstate__(self):  # grain may copy a source into worker processes: open archives stay behind
        return {key: value for key, value in self.__dict__.items() if key != "_local"}

    def __setstate__(self, state):
        self.__dict__.update(state, _local=threading.local())

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_member, label_member = self._pairs[int(index)]
        with Image.open(io.BytesIO(self._read(image_member))) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        with Image.open(io.BytesIO(self._read(label_member))) as label:
            raw = np.asarray(label)
        if raw.ndim != 2:
            raise ValueError(f"{label_member}: an ADE20K annotation must be a single-channel PNG, got shape {raw.shape}")
        _check_same_size(pixels, raw, label_member)
        return {"image": pixels, "label": ADE20K_LABELS[raw.astype(np.uint8)]}

    @property
    def num_classes(self) -> int:
        return len(ADE20K_CLASSES)

    @property
    def label_names(self) -> tuple[str, ...]:
        return ADE20K_CLASSES

    def __repr__(self) -> str:
        return f"Ade20kSource(split={self.split!r}, size={len(self)}, from={self.archive or self._root!r})"


def ade20k_pairs(members: list[str], split_folder: str, where: str) -> list[tuple[str, str]]:
    """Sorted ``(image, annotation)`` member names of one split: every ``images/<split>/<stem>.jpg`` with its
    ``annotations/<split>/<stem>.png``; an image without its annotation is refused (named)."""
    images_prefix = f"{ADE20K_ROOT}/images/{split_folder}/"
    annotations = {name for name in members if name.startswith(f"{ADE20K_ROOT}/annotations/{split_folder}/")}
    pairs = []
    for image in sorted(name for name in members if name.startswith(images_prefix) and name.lower().endswith(".jpg")):
        annotation = f"{ADE20K_ROOT}/annotations/{split_folder}/{_stem(image)}.png"
        if annotation not in annotations:
            raise DatasetNotAvailableError(f"{where}: {image} has no annotation {annotation}")
        pairs.append((image, annotation))
    if not pairs:
        raise DatasetNotAvailableError(f"{where} holds no {images_prefix}*.jpg: unpack ADEChallengeData2016 there")
    return pairs


# ----------------------------------------------------------------------------------------------------------
# Anomaly folders: Fishyscapes Lost & Found, Road Anomaly
# ----------------------------------------------------------------------------------------------------------


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def fishyscapes_pairs(folder: str) -> list[tuple[str, str]]:
    """``(image, label)`` paths of the Fishyscapes layout: ``images/<stem>.*`` with ``labels/<stem>.png``."""
    labels = {_stem(p): p for p in images.image_files(os.path.join(folder, "labels")) if p.endswith(".png")}
    pairs = []
    for image in images.image_files(os.path.join(folder, "images")):
        if _stem(image) not in labels:
            raise DatasetNotAvailableError(f"{image} has no label {os.path.join(folder, 'labels', _stem(image))}.png")
        pairs.append((image, labels[_stem(image)]))
    return pairs


def road_anomaly_pairs(folder: str) -> list[tuple[str, str]]:
    """``(image, label)`` paths of Road Anomaly's layout: ``frames/<stem>.jpg`` with its ``.labels`` folder."""
    frames = os.path.join(folder, "frames")
    pairs = []
    for image in sorted(os.path.join(frames, n) for n in os.listdir(frames)
                        if n.lower().endswith(images.IMAGE_FILE_EXTENSIONS)):
        label = os.path.join(frames, f"{_stem(image)}.labels", "labels_semantic.png")
        if not os.path.isfile(label):
            raise DatasetNotAvailableError(f"{image} has no label {label}")
        pairs.append((image, label))
    return pairs


def read_label_png(path: str) -> np.ndarray:
    """The raw values of a single-channel label PNG (palette indices stay indices), uint8 ``[H, W]``."""
    with Image.open(path) as label:
        values = np.asarray(label)
    if values.ndim != 2:
        raise ValueError(f"{path}: a label must be a single-channel PNG, got shape {values.shape}")
    if values.dtype != np.uint8 and (values.min() < 0 or values.max() > 255):
        raise ValueError(f"{path}: label values {values.min()}..{values.max()} do not fit in 0..255")
    return values.astype(np.uint8)


def anomaly_map(raw: np.ndarray, values: dict[int, int], path: str) -> np.ndarray:
    """Raw label values -> the Fishyscapes anomaly map, refusing values outside ``values`` (naming the file)."""
    unexpected = sorted(set(np.unique(raw).tolist()) - set(values))
    if unexpected:
        raise ValueError(f"{path}: label values {unexpected} are outside the known set {sorted(values)} "
                         "of this layout")
    return lookup_table(values)[raw]


class AnomalyFolderSource:
    """Images with anomaly maps from a folder in the Fishyscapes or the Road Anomaly layout (one split)."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(os.path.expanduser(folder))
        self.name = sources.FOLDER_PREFIX + self.folder
        if os.path.isdir(os.path.join(self.folder, "images")):
            self.layout, self._values = "fishyscapes", FISHYSCAPES_VALUES
            self._pairs = fishyscapes_pairs(self.folder)
        elif os.path.isdir(os.path.join(self.folder, "frames")):
            self.layout, self._values = "road_anomaly", ROAD_ANOMALY_VALUES
            self._pairs = road_anomaly_pairs(self.folder)
        else:
            raise DatasetNotAvailableError(
                f"{self.folder} holds neither images/ + labels/ (Fishyscapes) nor frames/ (Road Anomaly): "
                "unpack the data set there first")
        if not self._pairs:
            raise DatasetNotAvailableError(f"no image files under {self.folder}: unpack the data set there first")

    @property
    def paths(self) -> tuple[tuple[str, str], ...]:
        """``(image, label)`` file paths, in order."""
        return tuple(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, label_path = self._pairs[int(index)]
        image = images.read_image(image_path, 3)
        raw = read_label_png(label_path)
        _check_same_size(image, raw, label_path)
        return {"image": image, "anomaly": anomaly_map(raw, self._values, label_path)}

    @property
    def num_classes(self) -> int:
        return 0  # no closed-set classes: open-set evaluation only

    @property
    def label_names(self) -> tuple[str, ...]:
        return ()

    def __repr__(self) -> str:
        return f"AnomalyFolderSource(folder={self.folder!r}, layout={self.layout!r}, size={len(self)})"


# ----------------------------------------------------------------------------------------------------------
# The testbed
# ----------------------------------------------------------------------------------------------------------


class ScenesSource:
    """A split of the offline testbed (`scenes.load`), with ``label`` and ``anomaly`` for every scene."""

    in_memory = True  # arrays made once and cached: read in this process (`settings.workers_for`)

    def __init__(self, split: str, data_dir: str | None = None, seed: int = 0):
        self.name = "scenes"
        self.split = split
        self._arrays = scenes.load(split, data_dir, seed=seed)

    def __len__(self) -> int:
        return len(self._arrays["image"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {key: values[int(index)] for key, values in self._arrays.items()}

    @property
    def num_classes(self) -> int:
        return scenes.NUM_CLASSES

    @property
    def label_names(self) -> tuple[str, ...]:
        return scenes.LABEL_NAMES

    def __repr__(self) -> str:
        return f"ScenesSource(split={self.split!r}, size={len(self)})"
