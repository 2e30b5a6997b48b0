"""Users' own labelled images, read in place: a folder per class, or image lists.

``imagefolder=PATH``: torchvision's ``ImageFolder`` layout, one subfolder per class (class names = the
subfolder names, sorted; class ids in that order). Images may lie at any depth below their class folder.
When PATH holds split folders under the names TFDS and Hugging Face use (`SPLIT_FOLDER_NAMES`:
``train``/``training``; ``val``/``valid``/``validation``; ``test``/``testing``/``eval``/``evaluation``),
each split folder holds the class folders; the class table is the sorted union of the class folders of
every split (a test-only class is a class too: the natural unknown class of an open-set test).

``imagelist=FILE``: OpenOOD's image-list format, one ``relative/path label`` per line (the label an
integer class id; the path relative to `LabelledOptions.image_root`, default the list's own folder;
blank lines and lines starting with ``#`` skipped). ``FILE`` is the training list;
``validation_list`` / ``test_list`` name the lists of the other splits. Class names come from
``class_names`` (a file of one name per line, line i naming class i), or are the ids themselves.

Splits that are not given are carved from the training part, per class (stratified), with a fixed seed:
of each class's images (sorted by path, then permuted by ``numpy.random.default_rng([seed, class id])``),
the first ``round(n * test_fraction)`` are test, the next ``round(n * validation_fraction)``
validation, the rest train; every class needs at least one image in each carved split. The same folder
and seed give the same carve on any machine; a training run writes each split's listing into its workdir
(`write_split_lists`, in the image-list format, so a listing can be fed back as ``imagelist=``).

Refused before anything is read (one line naming the file or class and what to do): a missing root or
list, a root with no images, an empty class folder, a class with too few images for the carve, a list
line that does not parse, a label outside the class table, a path that leaves the root, a class-names
file with repeated or empty names. Images that cannot be decoded are found only when read
(`images.UnreadableImageError`, recorded in the source's `unreadable` log): the pipeline skips them in
training and excludes them from evaluation, and the run lists them.

Images are decoded by `images.read_image` (EXIF orientation applied) to ``channels`` channels: 3
unless every one of up to `CHANNEL_SAMPLE` training files spread over the listing is grayscale (then 1),
or as `LabelledOptions.channels` says. Sizes vary: ``image_shape`` is ``(None, None, C)`` and the
input pipeline brings every image to the network's input (`pipeline`: the ImageNet presets resize and
crop, the others resize to ``data.image_size``, by default the size of the first training image).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

from lgmm_jax.data import images
from lgmm_jax.data.sources import DatasetNotAvailableError

IMAGEFOLDER_PREFIX = "imagefolder="
IMAGELIST_PREFIX = "imagelist="
PREFIXES = (IMAGEFOLDER_PREFIX, IMAGELIST_PREFIX)
SPLITS = ("train", "validation", "test")
SPLIT_FOLDER_NAMES = {
    "train": ("train", "training"),
    "validation": ("val", "valid", "validation"),
    "test": ("test", "testing", "eval", "evaluation"),
}
CHANNEL_SAMPLE = 64
SPLIT_LIST_DIR = "splits"


def is_labelled(name: str) -> bool:
    """Whether a dataset name is an ``imagefolder=`` or ``imagelist=`` source."""
    return name.startswith(PREFIXES)


@dataclasses.dataclass(frozen=True)
class LabelledOptions:
    """How a labelled folder or list is split and decoded (the config's ``data`` keys of the same names)."""

    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    channels: int = 0  # 0: decided from the files (module docstring), else 1 or 3
    image_root: str = ""  # imagelist: the folder list paths are relative to ('' = the list's folder)
    validation_list: str = ""
    test_list: str = ""
    class_names: str = ""  # imagelist: a file with one class name per line ('' = the ids)

    @classmethod
    def from_config(cls, data_config) -> "LabelledOptions":
        """The options among a config's ``data`` keys (missing keys keep their defaults)."""
        values = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config or {})
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls) if field.name in values})


@dataclasses.dataclass(frozen=True)
class Listing:
    """Every image of a labelled source: its classes and, per split, (path relative to root, class id)."""

    root: str
    class_names: tuple[str, ...]
    class_paths: tuple[str, ...]  # where each class comes from: its folder(s), or the list file
    splits: dict[str, tuple[tuple[str, int], ...]]
    carved: tuple[str, ...]  # the splits carved from the training part
    channels: int

    def class_map(self) -> list[dict[str, Any]]:
        """config.json's and model.json's class table: id, name and where each class comes from."""
        return [{"id": i, "name": name, "path": path}
                for i, (name, path) in enumerate(zip(self.class_names, self.class_paths))]


# ----------------------------------------------------------------------------------------------------------
# Carving splits
# ----------------------------------------------------------------------------------------------------------


def check_fractions(options: LabelledOptions) -> None:
    for name in ("validation_fraction", "test_fraction"):
        value = getattr(options, name)
        if not 0 < value < 1:
            raise ValueError(f"data.{name}={value} must lie strictly between 0 and 1")
    if options.validation_fraction + options.test_fraction >= 1:
        raise ValueError(f"data.validation_fraction + data.test_fraction = "
                         f"{options.validation_fraction + options.test_fraction:g} leaves nothing to train on: "
                         "lower them")


def carve(entries: list[tuple[str, int]], carved: tuple[str, ...], class_names: tuple[str, ...],
          options: LabelledOptions, where: str) -> dict[str, list[tuple[str, int]]]:
    """``entries`` split per class into train and the ``carved`` splits (see the module docstring)."""
    check_fractions(options)
    fractions = {"test": options.test_fraction, "validation": options.validation_fraction}
    parts: dict[str, list[tuple[str, int]]] = {split: [] for split in ("train",) + carved}
    by_class: dict[int, list[str]] = {}
    for path, label in entries:
        by_class.setdefault(label, []).append(path)
    for label, paths in sorted(by_class.items()):
        paths = sorted(paths)
        order = np.random.default_rng([options.split_seed, label]).permutation(len(paths))
        start = 0
        for split in ("test", "validation"):
            if split not in carved:
                continue
            count = int(round(len(paths) * fractions[split]))
            if count < 1 or start + count >= len(paths):
                raise ValueError(
                    f"class {class_names[label]!r} of {where} has {len(paths)} images: too few to carve "
                    f"{'/'.join(carved)} splits from (data.test_fraction={options.test_fraction:g}, "
                    f"data.validation_fraction={options.validation_fraction:g}): add images to it or "
                    "give the splits as folders or lists")
            parts[split] += [(paths[i], label) for i in order[start:start + count]]
            start += count
        parts["train"] += [(paths[i], label) for i in order[start:]]
    return {split: sorted(part) for split, part in parts.items()}


def decided_channels(root: str, train: tuple[tuple[str, int], ...], requested: int) -> int:
    """`LabelledOptions.channels`, or 1 when every sampled training file is grayscale, else 3."""
    if requested:
        if requested not in (1, 3):
            raise ValueError(f"data.channels={requested} must be 0 (decide from the files), 1 or 3")
        return requested
    picks = np.unique(np.linspace(0, len(train) - 1, min(CHANNEL_SAMPLE, len(train))).round().astype(int))
    found = {images.file_channels(os.path.join(root, train[i][0])) for i in picks} - {None}
    return 1 if found == {1} else 3


# ----------------------------------------------------------------------------------------------------------
# imagefolder=
# ----------------------------------------------------------------------------------------------------------


def visible_subfolders(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder)
                  if not images.is_hidden(name) and os.path.isdir(os.path.join(folder, name)))


def split_folders(root: str) -> dict[str, str]:
    """split -> its folder under ``root``, for the split folders ``root`` has (empty: no split layout)."""
    found = {}
    for name in visible_subfolders(root):
        for split, aliases in SPLIT_FOLDER_NAMES.items():
            if name.lower() in aliases:
                if split in found:
                    raise ValueError(f"{root} has two {split} folders ({found[split]}, {name}): keep one")
                found[split] = name
    return found


def class_folder_files(folder: str) -> dict[str, list[str]]:
    """class name -> sorted image paths (relative to the class folder) of each class subfolder of ``folder``."""
    classes = {}
    for name in visible_subfolders(folder):
        files = images.image_files(os.path.join(folder, name))
        if not files:
            raise ValueError(f"class folder {os.path.join(folder, name)} holds no image files "
                             f"({', '.join(images.IMAGE_FILE_EXTENSIONS)}): add images or remove the folder")
        classes[name] = [os.path.relpath(path, os.path.join(folder, name)) for path in files]
    return classes


@functools.lru_cache(maxsize=16)
def folder_listing(root: str, options: LabelledOptions) -> Listing:
    """The `Listing` of an ``imagefolder=`` root (see the module docstring)."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DatasetNotAvailableError(f"image folder {root} not found: {IMAGEFOLDER_PREFIX}PATH must name a "
                                       "folder with one subfolder of images per class")
    layout = split_folders(root)
    if layout and "train" not in layout:
        raise ValueError(f"{root} has split folders ({', '.join(layout.values())}) but no train/ or training/: "
                         "add one, or put the class folders directly under the root")
    split_classes = ({split: class_folder_files(os.path.join(root, folder)) for split, folder in layout.items()}
                     if layout else {"train": class_folder_files(root)})
    class_names = tuple(sorted(set().union(*split_classes.values())))
    if not class_names:
        raise DatasetNotAvailableError(f"{root} has no class folders with images: put each class's images "
                                       "in a subfolder named after the class")
    ids = {name: i for i, name in enumerate(class_names)}
    given = {}
    for split, classes in split_classes.items():
        prefix = layout.get(split, "")
        given[split] = [(os.path.join(prefix, name, path), ids[name])
                        for name, files in classes.items() for path in files]
    carved = tuple(split for split in ("validation", "test") if split not in given)
    splits = carve(given.pop("train"), carved, class_names, options, root) if carved else {"train": given.pop("train")}
    splits.update({split: sorted(entries) for split, entries in given.items()})
    train = tuple(splits["train"])
    if not train:
        raise DatasetNotAvailableError(f"{root} has no training images")
    # A class may lack training images (a test-only class can only be unknown, `known_classes`).
    class_paths = tuple(
        os.pathsep.join(os.path.join(root, layout.get(split, ""), name) for split in SPLITS
                        if name in split_classes.get(split, {}))
        for name in class_names)
    return Listing(root, class_names, class_paths, {s: tuple(splits[s]) for s in SPLITS}, carved,
                   decided_channels(root, train, options.channels))


# ----------------------------------------------------------------------------------------------------------
# imagelist=
# ----------------------------------------------------------------------------------------------------------


def read_class_names(path: str) -> tuple[str, ...]:
    """One class name per line (blank lines at the end ignored); refuses repeated or empty names."""
    if not os.path.isfile(path):
        raise DatasetNotAvailableError(f"class-names file {path} not found: data.class_names must name a file "
                                       "with one class name per line")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f.read().rstrip("\n").split("\n")]
    for number, name in enumerate(names, 1):
        if not name:
            raise ValueError(f"{path}:{number}: empty class name: give every class a name, one per line")
        if names.index(name) != number - 1:
            raise ValueError(f"{path}:{number}: class name {name!r} repeats line {names.index(name) + 1}")
    return tuple(names)


def inside(root: str, relative: str) -> bool:
    """Whether ``relative`` names a file below ``root`` (no absolute path, no '..' out of it)."""
    if os.path.isabs(relative):
        return False
    full = os.path.normpath(os.path.join(root, relative))
    return full.startswith(os.path.join(os.path.normpath(root), ""))


def parse_image_list(path: str, root: str, num_classes: int | None) -> list[tuple[str, int]]:
    """(relative path, label) of each line of an image list, refusing the first line that does not fit."""
    if not os.path.isfile(path):
        raise DatasetNotAvailableError(f"image list {path} not found: give a file of 'relative/path label' lines")
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.rsplit(None, 1)
            where = f"{path}:{number}"
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{where}: {text[:80]!r} is not 'relative/path label' (an integer class id "
                                 "after the last space)")
            relative, label = parts[0], int(parts[1])
            if label < 0 or (num_classes is not None and label >= num_classes):
                table = f"0..{num_classes - 1}" if num_classes else "non-negative ids"
                raise ValueError(f"{where}: label {label} is outside the class table ({table}): fix the line "
                                 "or the class-names file")
            if not inside(root, relative):
                raise ValueError(f"{where}: {relative!r} leaves the image root {root}: paths must be relative "
                                 "to data.image_root and stay below it")
            entries.append((os.path.normpath(relative), label))
    if not entries:
        raise DatasetNotAvailableError(f"image list {path} names no images: add 'relative/path label' lines")
    return entries


@functools.lru_cache(maxsize=16)
def list_listing(train_list: str, options: LabelledOptions) -> Listing:
    """The `Listing` of an ``imagelist=`` training list and the options' other lists (module docstring)."""
    train_list = os.path.abspath(os.path.expanduser(train_list))
    root = os.path.abspath(os.path.expanduser(options.image_root or os.path.dirname(train_list)))
    if not os.path.isdir(root):
        raise DatasetNotAvailableError(f"image root {root} not found: set data.image_root to the folder the "
                                       "list's paths are relative to")
    class_names = read_class_names(options.class_names) if options.class_names else None
    num_classes = len(class_names) if class_names else None
    lists = {"train": train_list, "validation": options.validation_list, "test": options.test_list}
    given = {split: parse_image_list(os.path.abspath(os.path.expanduser(path)), root, num_classes)
             for split, path in lists.items() if path}
    if class_names is None:
        largest = max(label for entries in given.values() for _, label in entries)
        class_names = tuple(str(i) for i in range(largest + 1))
    carved = tuple(split for split in ("validation", "test") if split not in given)
    splits = carve(given.pop("train"), carved, class_names, options, train_list) if carved else {"train": given.pop("train")}
    splits.update(given)
    class_paths = tuple(options.class_names or train_list for _ in class_names)
    return Listing(root, class_names, class_paths, {s: tuple(splits[s]) for s in SPLITS}, carved,
                   decided_channels(root, tuple(splits["train"]), options.channels))


def listing_of(name: str, options: LabelledOptions) -> Listing:
    """The `Listing` of an ``imagefolder=`` or ``imagelist=`` dataset name."""
    prefix = next(prefix for prefix in PREFIXES if name.startswith(prefix))
    if not name[len(prefix):]:
        raise ValueError(f"dataset={name!r} names no {'folder' if prefix == IMAGEFOLDER_PREFIX else 'list'}: "
                         f"set --config.dataset={prefix}/path/to/your/{'images' if prefix == IMAGEFOLDER_PREFIX else 'train.txt'}")
    if name.startswith(IMAGEFOLDER_PREFIX):
        return folder_listing(name[len(IMAGEFOLDER_PREFIX):], options)
    return list_listing(name[len(IMAGELIST_PREFIX):], options)


# ----------------------------------------------------------------------------------------------------------
# The source
# ----------------------------------------------------------------------------------------------------------


class LabelledImageSource:
    """One split of a labelled folder or list (`sources.Source`), decoded when read."""

    def __init__(self, name: str, split: str, options: LabelledOptions = LabelledOptions()):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} for {name}: use one of {', '.join(SPLITS)}")
        self.name = name
        self.split = split
        self.listing = listing_of(name, options)
        self._entries = self.listing.splits[split]
        self._labels = np.asarray([label for _, label in self._entries], dtype=np.int64)
        self.unreadable = images.UnreadableFiles(f"{name}:{split}")

    def path(self, index: int) -> str:
        return os.path.join(self.listing.root, self._entries[int(index)][0])

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(os.path.join(self.listing.root, relative) for relative, _ in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._example(index, lambda path: images.read_image(path, self.listing.channels))

    def read_window(self, index: int, choose_window, size: int, resample: int) -> dict[str, Any]:
        """Example ``index`` with a window of its image resized to ``size x size`` in one pass of pillow
        (`images.read_image_window`): a random resized crop, without the whole picture as an array."""
        return self._example(index, lambda path: images.read_image_window(
            path, self.listing.channels, choose_window, size, resample))

    def _example(self, index: int, decode) -> dict[str, Any]:
        try:
            image = decode(self.path(index))
        except images.UnreadableImageError as error:
            self.unreadable.record(error)
            raise
        return {"image": image, "label": int(self._labels[int(index)])}

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def num_classes(self) -> int:
        return len(self.listing.class_names)

    @property
    def image_shape(self) -> tuple[None, None, int]:
        return (None, None, self.listing.channels)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.listing.class_names

    def first_image_size(self) -> tuple[int, int]:
        """(H, W) of the first readable image, in listing order: the default network input size."""
        for index in range(len(self)):
            try:
                return tuple(images.read_image(self.path(index), self.listing.channels).shape[:2])
            except images.UnreadableImageError:
                continue
        raise DatasetNotAvailableError(f"no readable image in the {self.split} split of {self.name}")

    def __repr__(self) -> str:
        return f"LabelledImageSource(name={self.name!r}, split={self.split!r}, size={len(self)})"


def split_list_text(listing: Listing, split: str) -> str:
    """A split's listing in the image-list format (relative path and class id per line)."""
    return "".join(f"{relative} {label}\n" for relative, label in listing.splits[split])


def write_split_lists(folder: str, listing: Listing) -> None:
    """Each split's listing as ``folder/<split>.txt`` and the class names as ``folder/classes.txt``; these
    three files are a valid ``imagelist=`` of the same data (``data.image_root`` = the listing's root)."""
    os.makedirs(folder, exist_ok=True)
    for split in SPLITS:
        with open(os.path.join(folder, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write(split_list_text(listing, split))
    with open(os.path.join(folder, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(name + "\n" for name in listing.class_names))
