"""A user's own labelled segmentation folder in mmsegmentation's custom-dataset layout (``segfolder=PATH``).

The layout of mmseg's ``BaseSegDataset`` (its "custom dataset")::

    PATH/img_dir/{train,val,test}/<stem><img_suffix>       images (default ``.jpg``)
    PATH/ann_dir/{train,val,test}/<stem><seg_map_suffix>   label PNGs of raw class ids (default ``.png``)
    PATH/classes.txt                                       one class name per line, line k = class k

Split folders may also be called ``training`` (train), ``valid`` / ``validation`` (val) and ``testing``
(test); they map to this library's splits ``train``, ``validation`` and ``test``. ``train`` and ``val``
are required (the validation split sets the rejection thresholds); without a ``test`` folder the
``test`` split reads the ``val`` folder (mmseg's custom recipes test on their val split too). Stems may
hold subfolders (``img_dir/train/city/a.jpg`` pairs with ``ann_dir/train/city/a.png``); pairs are in
sorted image path order.

Label values are the class ids 0..C-1 of the C names in the class-names file, and 255 (void, never a
class). ``reduce_zero_label`` reads them as mmseg does: raw 0 becomes void, raw k becomes class k - 1
(1..C), 255 stays void. The options come from the config's ``segfolder`` block (configs/default.py):
``img_suffix``, ``seg_map_suffix``, ``class_names`` (a file; relative paths are inside PATH; '' =
``PATH/classes.txt``) and ``reduce_zero_label``.

Refused when the source is made, before any training, each in one line naming the file or folder: a
missing ``img_dir`` / ``ann_dir`` or split folder, an image without its label (or a label without its
image), an empty split, a missing or empty class-names file. Refused at read time: a label with a value
that is neither a class id nor 255 (ValueError naming the file and values), a label of another size
than its image. An image (or label) that cannot be decoded is recorded in the source's ``unreadable``
log (`images.UnreadableFiles`) and raises `images.UnreadableImageError`; the segmentation training
stream then draws another example and evaluation leaves the image out. Images are decoded by
`images.read_image` (EXIF orientation applied, any mode to RGB); hidden files and files without an image
extension are never read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError

from lgmm_jax.data import images
from lgmm_jax.data.segmentation import VOID, _check_same_size, lookup_table, read_label_png, reduce_zero_label_table
from lgmm_jax.data.sources import DatasetNotAvailableError

SEGFOLDER_PREFIX = "segfolder="
IMAGE_DIR, LABEL_DIR, CLASS_NAMES_FILE = "img_dir", "ann_dir", "classes.txt"
# This library's split -> the folder names that hold it, in mmseg's and the common datasets' spellings.
SPLIT_FOLDERS = {
    "train": ("train", "training"),
    "validation": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
REQUIRED_SPLITS = ("train", "validation")
MAX_CLASSES = VOID  # class ids 0..254: 255 is void


@dataclasses.dataclass(frozen=True)
class SegFolderOptions:
    """How a segfolder's files are named and its labels read (the config's ``segfolder`` block)."""

    img_suffix: str = ".jpg"
    seg_map_suffix: str = ".png"
    class_names: str = ""  # the class-names file; '' = PATH/classes.txt, relative paths inside PATH
    reduce_zero_label: bool = False

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> SegFolderOptions:
        """The options of a ``segfolder`` config block (None = the defaults); unknown keys, empty suffixes
        and a non-boolean ``reduce_zero_label`` are one-line ValueErrors naming the key."""
        mapping = dict(mapping or {})
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"segfolder.{unknown[0]} is not a segfolder option: use {', '.join(sorted(known))}")
        options = cls(**mapping)
        for key in ("img_suffix", "seg_map_suffix"):
            if not isinstance(getattr(options, key), str) or not getattr(options, key):
                raise ValueError(f"segfolder.{key}={getattr(options, key)!r} must be the file names' ending, "
                                 "e.g. '.jpg' or '_labelTrainIds.png'")
        if not isinstance(options.class_names, str):
            raise ValueError(f"segfolder.class_names={options.class_names!r} must be a file path ('' = classes.txt)")
        if not isinstance(options.reduce_zero_label, (bool, np.bool_)):
            raise ValueError(f"segfolder.reduce_zero_label={options.reduce_zero_label!r} must be True or False")
        return options


# ----------------------------------------------------------------------------------------------------------
# Finding the files
# ----------------------------------------------------------------------------------------------------------


def split_folder(parent: str, split: str) -> str | None:
    """The folder of ``split`` under ``parent`` (one of its `SPLIT_FOLDERS` names), None when there is none;
    two spellings of one split side by side are refused."""
    found = [os.path.join(parent, name) for name in SPLIT_FOLDERS[split] if os.path.isdir(os.path.join(parent, name))]
    if len(found) > 1:
        raise DatasetNotAvailableError(f"{' and '.join(found)} are both the {split} split: keep one of them")
    return found[0] if found else None


def required_folder(parent: str, split: str) -> str:
    """`split_folder`, or a one-line DatasetNotAvailableError saying which folder to create."""
    if not os.path.isdir(parent):
        raise DatasetNotAvailableError(
            f"{parent} not found: a segfolder holds {IMAGE_DIR}/{{train,val}}/ images and {LABEL_DIR}/{{train,val}}/ "
            "label PNGs (mmseg's custom dataset layout)")
    folder = split_folder(parent, split)
    if folder is None:
        names = "/, ".join(SPLIT_FOLDERS[split])
        raise DatasetNotAvailableError(f"{parent} has no {split} folder: create one of {names}/ there")
    return folder


def split_folders(root: str, split: str) -> tuple[str, str]:
    """(image folder, label folder) of ``split``; ``test`` falls back to the ``val`` folders when neither
    ``img_dir`` nor ``ann_dir`` has a test folder."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"unknown split {split!r} for {SEGFOLDER_PREFIX}{root}: use one of {', '.join(SPLIT_FOLDERS)}")
    image_parent, label_parent = os.path.join(root, IMAGE_DIR), os.path.join(root, LABEL_DIR)
    for parent in (image_parent, label_parent):  # the required splits first, whichever split is asked
        for required in REQUIRED_SPLITS:
            required_folder(parent, required)
    if split == "test" and not any(split_folder(parent, "test") for parent in (image_parent, label_parent)):
        split = "validation"
    return required_folder(image_parent, split), required_folder(label_parent, split)


def files_by_key(folder: str, suffix: str) -> dict[str, str]:
    """``{key: path}`` of the image files under ``folder`` whose names end with ``suffix`` (any case); the
    key is the path below ``folder`` without the suffix, e.g. ``city/a``."""
    return {os.path.relpath(path, folder)[: -len(suffix)]: path
            for path in images.image_files(folder) if path.lower().endswith(suffix.lower())}


def pairs_of(image_folder: str, label_folder: str, img_suffix: str, seg_map_suffix: str) -> list[tuple[str, str]]:
    """Sorted ``(image, label)`` paths of one split; an image without its label, a label without its image
    and an empty split are one-line DatasetNotAvailableErrors naming the file or folder."""
    images_by_key = files_by_key(image_folder, img_suffix)
    labels_by_key = files_by_key(label_folder, seg_map_suffix)
    if not images_by_key:
        others = len(images.image_files(image_folder))
        raise DatasetNotAvailableError(
            f"no *{img_suffix} images under {image_folder} ({others} image files of other names): put the split's "
            f"images there or set --config.segfolder.img_suffix")
    unlabelled = sorted(set(images_by_key) - set(labels_by_key))
    if unlabelled:
        first = unlabelled[0]
        raise DatasetNotAvailableError(
            f"{images_by_key[first]} has no label {os.path.join(label_folder, first + seg_map_suffix)}"
            f"{_and_more(unlabelled)}: add the label or remove the image")
    orphans = sorted(set(labels_by_key) - set(images_by_key))
    if orphans:
        first = orphans[0]
        raise DatasetNotAvailableError(
            f"{labels_by_key[first]} has no image {os.path.join(image_folder, first + img_suffix)}"
            f"{_and_more(orphans)}: add the image or remove the label")
    return sorted((images_by_key[key], labels_by_key[key]) for key in images_by_key)


def _and_more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def read_class_names(path: str, max_classes: int = MAX_CLASSES) -> tuple[str, ...]:
    """The class names of a class-names file, one per line (trailing blank lines ignored); a missing or empty
    file, a blank line between names and more than ``max_classes`` are one-line errors naming the file."""
    if not os.path.isfile(path):
        raise DatasetNotAvailableError(
            f"class-names file {path} not found: write one class name per line (line k names label value k) "
            "or set --config.segfolder.class_names")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f.read().splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise DatasetNotAvailableError(f"class-names file {path} is empty: write one class name per line")
    if "" in names:
        raise ValueError(f"line {names.index('') + 1} of the class-names file {path} is blank: one class name "
                         "per line, no gaps (line k names label value k)")
    if len(names) > max_classes:
        raise ValueError(f"the class-names file {path} names {len(names)} classes: at most {max_classes} "
                         f"({VOID} is void, never a class)")
    return tuple(names)


# ----------------------------------------------------------------------------------------------------------
# Reading the labels
# ----------------------------------------------------------------------------------------------------------


def raw_label_table(num_classes: int, reduce_zero_label: bool) -> np.ndarray:
    """uint8 ``[256]``: raw label value -> class id or `VOID` (mmseg's ``reduce_zero_label`` when asked)."""
    if reduce_zero_label:
        return reduce_zero_label_table(num_classes)
    return lookup_table({k: k for k in range(num_classes)})


def allowed_raw_values(num_classes: int, reduce_zero_label: bool) -> np.ndarray:
    """bool ``[256]``: the raw values a label may hold (the classes' ids and 255; with ``reduce_zero_label``
    0..num_classes and 255)."""
    allowed = np.zeros(256, dtype=bool)
    allowed[: num_classes + (1 if reduce_zero_label else 0)] = True
    allowed[VOID] = True
    return allowed


def check_label_values(raw: np.ndarray, allowed: np.ndarray, path: str, num_classes: int,
                       reduce_zero_label: bool) -> None:
    """A one-line ValueError naming ``path`` and its values that are neither a class nor void."""
    unexpected = [int(v) for v in np.unique(raw) if not allowed[v]]
    if unexpected:
        classes = f"1..{num_classes} (reduce_zero_label; 0 void)" if reduce_zero_label else f"0..{num_classes - 1}"
        raise ValueError(f"{path}: label values {unexpected} are neither class ids {classes} of the {num_classes} "
                         f"class names nor {VOID} (void): fix the label or the class-names file")


def read_label(path: str) -> np.ndarray:
    """`segmentation.read_label_png`, a file pillow cannot decode raised as `images.UnreadableImageError`."""
    try:
        return read_label_png(path)
    except FileNotFoundError:
        raise images.UnreadableImageError(path, "file not found") from None
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise images.UnreadableImageError(path, f"not a label PNG pillow can read ({first_line})") from None


# ----------------------------------------------------------------------------------------------------------
# The source
# ----------------------------------------------------------------------------------------------------------


class SegFolderSource:
    """One split of a segfolder (see the module docstring): ``source[i]`` -> ``{"image": uint8 [H, W, 3],
    "label": uint8 [H, W]}``, class ids 0..num_classes-1 and 255 void."""

    def __init__(self, folder: str, split: str, options: SegFolderOptions | None = None):
        if not folder:
            raise ValueError(f"{SEGFOLDER_PREFIX!r} has no path: write {SEGFOLDER_PREFIX}/path/to/folder")
        self.options = options or SegFolderOptions()
        self.folder = os.path.abspath(os.path.expanduser(folder))
        self.name = SEGFOLDER_PREFIX + self.folder
        self.split = split
        if not os.path.isdir(self.folder):
            raise DatasetNotAvailableError(
                f"segfolder {self.folder} not found: {SEGFOLDER_PREFIX}PATH must name a folder holding {IMAGE_DIR}/, "
                f"{LABEL_DIR}/ and {CLASS_NAMES_FILE} (everything after '=' is the path)")
        image_folder, label_folder = split_folders(self.folder, split)
        self._pairs = pairs_of(image_folder, label_folder, self.options.img_suffix, self.options.seg_map_suffix)
        self.class_names_file = os.path.join(self.folder, self.options.class_names or CLASS_NAMES_FILE)
        # reduce_zero_label reads raw 1..C as the classes: raw 255 stays void, so one class fewer fits.
        self._label_names = read_class_names(self.class_names_file, MAX_CLASSES - self.options.reduce_zero_label)
        self._table = raw_label_table(self.num_classes, self.options.reduce_zero_label)
        self._allowed = allowed_raw_values(self.num_classes, self.options.reduce_zero_label)
        self.unreadable = images.UnreadableFiles(f"{self.name}:{split}")

    @property
    def paths(self) -> tuple[tuple[str, str], ...]:
        """``(image, label)`` file paths, in order."""
        return tuple(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, label_path = self._pairs[int(index)]
        try:
            image = images.read_image(image_path, 3)
            raw = read_label(label_path)
        except images.UnreadableImageError as error:
            self.unreadable.record(error)
            raise
        _check_same_size(image, raw, label_path)
        check_label_values(raw, self._allowed, label_path, self.num_classes, self.options.reduce_zero_label)
        return {"image": image, "label": self._table[raw]}

    @property
    def num_classes(self) -> int:
        return len(self._label_names)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self._label_names

    def __getstate__(self):  # a copy in another process keeps a log of its own: a lock does not pickle
        return {key: value for key, value in self.__dict__.items() if key != "unreadable"}

    def __setstate__(self, state):
        self.__dict__.update(state, unreadable=images.UnreadableFiles(f"{state['name']}:{state['split']}"))

    def __repr__(self) -> str:
        return f"SegFolderSource(folder={self.folder!r}, split={self.split!r}, size={len(self)})"
