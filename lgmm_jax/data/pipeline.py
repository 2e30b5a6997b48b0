"""One grain pipeline for every source: training iterators (shuffled, augmented, sharded, resumable) and
evaluation batches (ordered, padded and masked so that no example is dropped).

Batch size convention: ``batch_size`` is always the GLOBAL batch size; each of ``process_count`` processes
gets ``batch_size // process_count`` examples of every global batch, namely
``global_batch[process_index * b:(process_index + 1) * b]`` for training (b = batch_size // process_count),
so that the per-process parts laid end to end in process order are exactly the global batch; evaluation
batches take ``[process_index::process_count]`` (every example keeps its own labels, so order is free).

Training stream: the example indices (filtered to the known classes through ``source.labels``, no image
decoded) are shuffled globally with ``seed`` (a new permutation every epoch), repeated, loaded and augmented
with a per-example generator derived by grain from ``seed`` and the element's position in the global stream
(so a process count change keeps the same global batches), then sliced per process and batched. Batches
straddle epoch boundaries; `steps_per_epoch` gives the number of full global batches per epoch.

Preprocessing presets (``preprocess=``):

=================  ==================================================  ====================================
preset             training                                            evaluation
=================  ==================================================  ====================================
``none``           nothing                                             nothing
``shift``          zero-pad by ``max(1, H // 8)`` px, random crop back  nothing
``cifar``          zero-pad 4 px, random crop back, horizontal flip    nothing
``imagenet``       random resized crop 224, scale (0.08, 1), flip      resize shorter side 256, center crop 224
``imagenet_swin``  random resized crop 224 (bicubic), flip,            resize shorter side 256 (bicubic),
                   RandAugment, random erasing                         center crop 224
=================  ==================================================  ====================================

Input size: the presets that resize (`resizes_to_network_input`) take images of any size. For the others,
``image_size=(H, W)`` resizes every image (bilinear, pillow; an image of that size already is left as it
is) before the preset's transform, in training and evaluation alike: that is how folders of photographs
of mixed sizes reach a network of one input size. ``image_size=None`` leaves images as the source gives them.

Unreadable files (`images.UnreadableImageError`: an empty, truncated or non-image file of a folder
source, which records it in its ``unreadable`` log) never stop a run: in training the example is replaced
by another example of the stream drawn with the element's own random generator (so the batches stay the
same for any process, worker or thread count and resume exactly); in evaluation it is masked out like
padding, so it is excluded from every metric.

``imagenet_swin`` is mmclassification's ``swin-base_16xb64_in1k`` data pipeline
(``imagenet_bs64_swin_224.py``): RandomResizedCrop(224, bicubic, pillow), RandomFlip(0.5),
RandAugment(rand_increasing, 2 policies, level 9, std 0.5; `randaugment`) filling with the mean pixel,
RandomErasing(0.25, mode 'rand', area 0.02-1/3) with N(mean, std) pixels; the mean and std are those of
the normalisation the model sees. Mixup / CutMix and label smoothing act on batches (`lgmm_jax.method.mixing`).
The presets that resize (`resizes_to_network_input`) accept images of any size.

Normalisation: ``(x / 255 - mean) / std`` per channel, from `NORMALIZATION` keyed by dataset name
(``normalization=None`` uses the source's own name; datasets not in the table get mean 0.5, std 0.5).
When scoring out-of-distribution data pass the TRAINING dataset's name (e.g. ``normalization=
"fashion_mnist"`` for MNIST images fed to a Fashion-MNIST model): the model must see every input
through the same normalisation it was trained with.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import grain
import numpy as np

from lgmm_jax.data import augment
from lgmm_jax.data import protocols
from lgmm_jax.data import randaugment
from lgmm_jax.data import reading
from lgmm_jax.data.images import UnreadableImageError
from lgmm_jax.data.sources import Source

IMAGENET_TRAIN_SIZE = 224
IMAGENET_EVAL_RESIZE = 256
CIFAR_PADDING = 4
SWIN_ERASE_PROBABILITY = 0.25
PREPROCESS_PRESETS = ("none", "shift", "cifar", "imagenet", "imagenet_swin")
# The presets that resize and crop every image to IMAGENET_TRAIN_SIZE, with their resampling filter.
RESIZE_RESAMPLING = {"imagenet": augment.BILINEAR, "imagenet_swin": augment.BICUBIC}


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel mean and standard deviation of pixel values scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


# Per-channel statistics of the training images in [0, 1].
NORMALIZATION = {
    # Population statistics of the 50k CIFAR training images (the often-copied std 0.2023, 0.1994,
    # 0.2010 is a per-image average, not the dataset std).
    "cifar10": Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Normalization((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": Normalization((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    # The standard ImageNet values (torchvision).
    "imagenet2012": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mnist": Normalization((0.1307,), (0.3081,)),
    "mnist_5k": Normalization((0.1307,), (0.3081,)),
    # Computed here on the bundled training splits (tests recompute them).
    "fashion_mnist": Normalization((0.2858,), (0.3529,)),
    "digits": Normalization((0.3065,), (0.3763,)),
    # The segmentation testbed's garments are normalised as its scenes are (ImageNet's values), so that an
    # encoder trained on them sees the segmenter's inputs.
    "scenes_garments": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
DEFAULT_NORMALIZATION = Normalization((0.5,), (0.5,))


def get_normalization(spec: str | Normalization | None, source: Source) -> Normalization:
    """Resolves ``spec`` (a dataset name, explicit statistics, or None = the source's own dataset)."""
    if isinstance(spec, Normalization):
        return spec
    name = source.name if spec is None else spec
    base_name = name.split("/")[0].split(":")[0]  # TFDS "name/config:version"
    return NORMALIZATION.get(base_name, DEFAULT_NORMALIZATION)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full global batches per epoch (training drops the remainder)."""
    return num_examples // batch_size


def num_eval_batches(num_examples: int, batch_size: int) -> int:
    """Global evaluation batches needed to see every example once (the last one padded)."""
    return math.ceil(num_examples / batch_size)


def indices_of_classes(labels: np.ndarray, classes: Sequence[int] | None) -> np.ndarray:
    """Sorted indices of the examples whose label is in ``classes`` (all indices when None)."""
    if classes is None:
        return np.arange(len(labels))
    return np.flatnonzero(np.isin(labels, np.asarray(classes, dtype=np.int64)))


def count_examples(source: Source, classes: Sequence[int] | None = None) -> int:
    """Number of examples of ``source`` whose label is in ``classes`` (all when None)."""
    return len(source) if classes is None else len(indices_of_classes(source.labels, classes))


def _check_preprocess(preprocess: str) -> None:
    if preprocess not in PREPROCESS_PRESETS:
        raise ValueError(f"unknown preprocess preset {preprocess!r}: use one of {', '.join(PREPROCESS_PRESETS)}")


def resizes_to_network_input(preset: str) -> bool:
    """Whether ``preset`` resizes and crops every image to ``IMAGENET_TRAIN_SIZE`` (any image size goes in)."""
    _check_preprocess(preset)
    return preset in RESIZE_RESAMPLING


def _check_processes(batch_size: int, process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in 0..process_count-1 ({process_count})")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of process_count {process_count}")


def _pixels(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(255.0 * value for value in values)


def swin_after_crop(image: np.ndarray, rng: np.random.Generator, normalization: Normalization) -> np.ndarray:
    """mmcls's Swin training pipeline after its crop and flip (``imagenet_swin``, the module docstring):
    RandAugment, then random erasing."""
    mean_pixel = tuple(round(value) for value in _pixels(normalization.mean))
    image = randaugment.rand_augment(image, rng, fill=mean_pixel)
    return augment.random_erasing(image, rng, _pixels(normalization.mean), _pixels(normalization.std),
                                  probability=SWIN_ERASE_PROBABILITY)


def augment_train(image: np.ndarray, preprocess: str, rng: np.random.Generator,
                  normalization: Normalization = NORMALIZATION["imagenet2012"], window: bool = False) -> np.ndarray:
    """The training augmentation of preset ``preprocess`` (uint8 in, uint8 out).

    ``normalization``: the statistics the model sees; ``imagenet_swin`` fills and erases with them.
    ``window``: ``image`` is already the random resized crop (`images.read_image_window`, its window
    drawn with the same generator): the ImageNet presets go on from there.
    """
    if preprocess == "none":
        return image
    if preprocess == "shift":
        return augment.random_crop_with_padding(image, max(1, image.shape[0] // 8), rng)
    if preprocess == "cifar":
        image = augment.random_crop_with_padding(image, CIFAR_PADDING, rng)
        return augment.random_horizontal_flip(image, rng)
    if preprocess in RESIZE_RESAMPLING:
        resample = RESIZE_RESAMPLING[preprocess]
        if not window:
            image = augment.random_resized_crop(image, IMAGENET_TRAIN_SIZE, rng, resample=resample)
        image = augment.random_horizontal_flip(image, rng)
        return swin_after_crop(image, rng, normalization) if preprocess == "imagenet_swin" else image
    raise ValueError(f"unknown preprocess preset {preprocess!r}: use one of {', '.join(PREPROCESS_PRESETS)}")


def to_image_size(image: np.ndarray, image_size: Sequence[int] | None) -> np.ndarray:
    """``image`` resized (bilinear) to ``image_size`` = (H, W); unchanged when None or of that size already."""
    if image_size is None or tuple(image.shape[:2]) == tuple(image_size):
        return image
    return augment.resize(image, int(image_size[0]), int(image_size[1]))


def preprocess_eval(image: np.ndarray, preprocess: str, image_size: Sequence[int] | None = None) -> np.ndarray:
    """The deterministic evaluation transform of preset ``preprocess`` (uint8 in, uint8 out): the resize to
    ``image_size`` where the preset does not resize itself, then the preset's own transform."""
    if not resizes_to_network_input(preprocess):
        return to_image_size(image, image_size)
    resized = augment.resize_shorter_side(image, IMAGENET_EVAL_RESIZE, RESIZE_RESAMPLING[preprocess])
    return augment.center_crop(resized, IMAGENET_TRAIN_SIZE)


def _image_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None or len(image_size) == 0:
        return None
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be (height, width) of positive sizes, got {tuple(image_size)}")
    return (int(image_size[0]), int(image_size[1]))


def eval_input_shape(source: Source, preprocess: str, image_size: Sequence[int] | None) -> tuple | None:
    """(H, W, C) of the images the evaluation transform gives, where it does not depend on the file."""
    channels = source.image_shape[-1]
    if channels is None:
        return None
    if resizes_to_network_input(preprocess):
        return (IMAGENET_TRAIN_SIZE, IMAGENET_TRAIN_SIZE, channels)
    if _image_size(image_size) is not None:
        return (*_image_size(image_size), channels)
    shape = tuple(source.image_shape)
    return shape if None not in shape else None


def _lookup_table(known_classes: Sequence[int] | None, source: Source) -> np.ndarray | None:
    if known_classes is None:
        return None
    num_labels = max(int(source.num_classes), int(np.max(known_classes, initial=-1)) + 1)
    return protocols.label_lookup(known_classes, num_labels)


MAX_REPLACEMENTS = 100  # unreadable examples replaced in a row before a training stream gives up


def readable_example(source, index: int, candidates, rng: np.random.Generator, read=None) -> tuple[dict, str]:
    """(``read(index)``, ''), or, when its file cannot be read, (the first readable of examples drawn
    from ``candidates`` with ``rng``, the element's own generator: the same replacement in every run, and
    the files replaced, a ``path<TAB>reason`` line each). Any other error names the example. ``read``:
    index -> example, ``source[index]`` by default."""
    read = read or source.__getitem__
    replaced = []
    for attempt in range(MAX_REPLACEMENTS + 1):
        if attempt and (candidates is None or len(candidates) == 0):
            break
        chosen = int(index) if attempt == 0 else int(candidates[rng.integers(len(candidates))])
        try:
            return reading.guarded(source, chosen, lambda: read(chosen)), "".join(replaced)
        except UnreadableImageError as error:
            replaced.append(f"{error.path}\t{error.reason}\n")
    raise reading.ExampleError(f"{len(replaced)} examples in a row of {source!r} could not be read (the first: "
                               f"{replaced[0].strip()}): check the data")


@dataclasses.dataclass(frozen=True, eq=False)
class TrainExample(grain.transforms.RandomMap):
    """Source index -> ``{"image": float32 [H, W, C], "label": int32, "replaced": str}`` with augmentation.

    ``image_size``: resize to it first (`to_image_size`). Where the preset takes a random resized crop
    and the source can read a window of its files (``read_window``, the labelled folders), pillow
    decodes, crops and resizes in one pass (`images.read_image_window`, which says what that changes in
    pixels). ``candidates``: the indices an unreadable
    example's replacement is drawn from (`readable_example`, whose list of replaced files ``replaced``
    carries); ``normalize=False`` leaves the image uint8, normalised on the device (`normalize_on_device`).
    """

    source: Any
    preprocess: str
    normalization: Normalization
    lookup: np.ndarray | None
    image_size: tuple[int, int] | None = None
    candidates: np.ndarray | None = None
    normalize: bool = True

    def random_map(self, index, rng: np.random.Generator) -> dict[str, np.ndarray]:
        windowed = resizes_to_network_input(self.preprocess) and hasattr(self.source, "read_window")
        choose = functools.partial(augment.random_resized_crop_window, rng=rng)
        resample = RESIZE_RESAMPLING.get(self.preprocess)
        read = (lambda i: self.source.read_window(i, choose, IMAGENET_TRAIN_SIZE, resample)) if windowed else None
        example, replaced = readable_example(self.source, index, self.candidates, rng, read)

        def transform():
            image = np.asarray(example["image"])
            if not resizes_to_network_input(self.preprocess):
                image = to_image_size(image, self.image_size)
            image = augment_train(image, self.preprocess, rng, self.normalization, window=windowed)
            if self.normalize:
                image = augment.normalize(image, self.normalization.mean, self.normalization.std)
            return image

        label = example["label"] if self.lookup is None else self.lookup[example["label"]]
        return {"image": reading.guarded(self.source, int(index), transform), "label": np.int32(label),
                "replaced": replaced}


@dataclasses.dataclass(frozen=True, eq=False)
class ContiguousShare(grain.transforms.Map):
    """Local position j -> this process's contiguous block of each global batch of the stream.

    Process p reads rows ``[p * b, (p + 1) * b)`` of every global batch of size B (b = B / P), so that
    `jax.make_array_from_process_local_data`, which lays the processes' parts end to end, rebuilds
    the global batch in its original order whatever the process count.
    """

    stream: Any
    global_batch_size: int
    offset: int
    local_batch_size: int

    def map(self, position):
        batch, row = divmod(int(position), self.local_batch_size)
        return self.stream[batch * self.global_batch_size + self.offset + row]


@dataclasses.dataclass(frozen=True, eq=False)
class EvalExample(grain.transforms.Map):
    """Source index (or -1 = padding) -> image, label, original_label, mask.

    An unreadable file is masked out as padding is. ``input_shape``: the shape of the transformed images
    when it is known beforehand (padding then reads no file); None reads ``padding_like_index``'s.
    """

    source: Any
    preprocess: str
    normalization: Normalization
    lookup: np.ndarray | None
    padding_like_index: int
    image_size: tuple[int, int] | None = None
    input_shape: tuple[int, int, int] | None = None

    def read(self, index: int) -> dict | None:
        """``source[index]``, or None for padding and unreadable files."""
        if index < 0:
            return None
        try:
            return reading.guarded(self.source, index, lambda: self.source[index])
        except UnreadableImageError:
            return None

    def map(self, index) -> dict[str, np.ndarray]:
        example = self.read(int(index))
        is_padding = example is None
        if is_padding and self.input_shape is not None:
            image = np.zeros(self.input_shape, np.float32)
        else:
            pixels = (example or self.source[self.padding_like_index])["image"]
            image = augment.normalize(preprocess_eval(np.asarray(pixels), self.preprocess, self.image_size),
                                      self.normalization.mean, self.normalization.std)
        original = -1 if is_padding else int(example["label"])
        label = original if (self.lookup is None or is_padding) else int(self.lookup[original])
        return {
            "image": np.zeros_like(image) if is_padding else image,
            "label": np.int32(label),
            "original_label": np.int32(original),
            "mask": np.bool_(not is_padding),
        }


def normalizes_on_device(preset: str) -> bool:
    """Whether a preset's training images stay uint8 to the devices (`normalize_on_device`): every preset but
    ``imagenet_swin``, whose random erasing draws float pixels. A quarter of float32's bytes cross to the
    devices, and the host skips the normalisation."""
    _check_preprocess(preset)
    return preset != "imagenet_swin"


def normalize_on_device(images, normalization: Normalization):
    """uint8 images -> ``(x / 255 - mean) / std`` in float32 on the devices (jax.numpy); others as they are."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top (the pipeline itself never needs jax)

    if images.dtype != jnp.uint8:
        return images
    mean = jnp.asarray(normalization.mean, jnp.float32)
    std = jnp.asarray(normalization.std, jnp.float32)
    return (images.astype(jnp.float32) / jnp.float32(255.0) - mean) / std


def train_iterator(source: Source, *, batch_size: int, seed: int, preprocess: str,
                   known_classes: Sequence[int] | None = None, process_index: int = 0, process_count: int = 1,
                   num_epochs: int | None = None, normalization: str | Normalization | None = None,
                   example: grain.transforms.RandomMap | None = None,
                   image_size: Sequence[int] | None = None, workers: int = 0,
                   threads: int = reading.DEFAULT_THREADS, normalize: bool = True) -> reading.BatchStream:
    """Infinite (or ``num_epochs``-long) iterator of this process's part of each global training batch.

    Args:
      source: a `sources.Source`.
      batch_size: global batch size, a multiple of ``process_count``.
      seed: shuffle and augmentation seed (0 <= seed < 2**32).
      preprocess: a preset of `PREPROCESS_PRESETS`.
      known_classes: train only on these original classes, relabelled ``0..len-1`` in this order.
      process_index, process_count: this process's contiguous share of every global batch.
      num_epochs: None repeats forever; otherwise the stream ends after the last full global batch.
      normalization: dataset name or `Normalization`; None = the source's dataset.
      example: the source index -> training example transform (default `TrainExample` with
        ``preprocess`` and ``normalization``); segmentation passes `seg_augment.SegmentationTrainExample`.
      image_size: (H, W) every image is resized to before a preset that does not resize (None = as is).
      workers, threads: worker processes (0: this process) and reading threads in each (`reading`).
      normalize: False keeps the images uint8 (`normalizes_on_device` presets; `normalize_on_device`).
    Returns:
      A `reading.BatchStream` of ``{"image": float32 (or uint8) [b, H, W, C], "label": int32 [b],
      "replaced": str [b]}`` (``replaced``: the unreadable files each example stands in for, see
      `readable_example`) with ``b = batch_size // process_count``; its ``get_state()`` / ``set_state()``
      resume exactly, and the batches are the same for any worker, thread and process count.
    """
    _check_preprocess(preprocess)
    _check_processes(batch_size, process_index, process_count)
    if known_classes is not None and len(known_classes) == 0:
        raise ValueError("known_classes is empty: training needs at least one known class")
    indices = np.arange(len(source)) if known_classes is None else indices_of_classes(source.labels, known_classes)
    if len(indices) < batch_size:
        raise ValueError(f"only {len(indices)} training examples for a global batch of {batch_size}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None or >= 1, got {num_epochs}")

    stream = grain.MapDataset.source(indices).shuffle(seed=seed).repeat(num_epochs)
    if num_epochs is not None:
        stream = stream[: steps_per_epoch(len(stream), batch_size) * batch_size]
    if example is None:
        example = TrainExample(source, preprocess, get_normalization(normalization, source),
                               _lookup_table(known_classes, source), _image_size(image_size), indices,
                               normalize)
    stream = stream.random_map(example, seed=seed)
    local_batch_size = batch_size // process_count
    share = ContiguousShare(stream, batch_size, local_batch_size * process_index, local_batch_size)
    batches = grain.MapDataset.range(len(stream) // process_count).map(share).batch(
        local_batch_size, drop_remainder=True)
    return reading.BatchStream(batches, workers=workers, threads=threads, examples_per_batch=local_batch_size)


def eval_batches(source: Source, *, batch_size: int, preprocess: str,
                 known_classes: Sequence[int] | None = None, classes: Sequence[int] | None = None,
                 process_index: int = 0, process_count: int = 1,
                 normalization: str | Normalization | None = None,
                 image_size: Sequence[int] | None = None, workers: int = 0,
                 threads: int = reading.DEFAULT_THREADS) -> grain.IterDataset:
    """Ordered evaluation batches: every selected example once over all processes, padding masked.

    Every process gets ``num_eval_batches(n, batch_size)`` batches of ``batch_size // process_count``
    examples (n = number of selected examples); padding examples have ``mask`` False, ``label`` and
    ``original_label`` -1 and a zero image.

    Args:
      source: a `sources.Source`.
      batch_size: global batch size, a multiple of ``process_count``.
      preprocess: a preset of `PREPROCESS_PRESETS` (its evaluation transform is used).
      known_classes: relabel these original classes ``0..len-1``; other classes get ``label`` -1.
        None keeps the original labels; ``()`` marks every example unknown (out-of-distribution data).
      classes: evaluate only examples whose original label is in ``classes`` (None = all).
      process_index, process_count: this process's share ``[process_index::process_count]``.
      normalization: dataset name or `Normalization`; None = the source's dataset. For OOD data pass
        the training dataset's name.
      image_size: (H, W) every image is resized to before a preset that does not resize (None = as is).
      workers, threads: worker processes (0: this process) and reading threads in each (`reading`).
    Returns:
      A re-iterable grain ``IterDataset`` of ``{"image": float32 [b, H, W, C], "label": int32 [b],
      "original_label": int32 [b], "mask": bool [b]}``.
    """
    _check_preprocess(preprocess)
    _check_processes(batch_size, process_index, process_count)
    indices = indices_of_classes(source.labels, classes) if classes is not None else np.arange(len(source))
    if len(indices) == 0:
        raise ValueError(f"no examples to evaluate in {source!r} for classes {classes}")
    padded = np.full(num_eval_batches(len(indices), batch_size) * batch_size, -1, dtype=np.int64)
    padded[: len(indices)] = indices
    examples = grain.MapDataset.source(padded).map(
        EvalExample(source, preprocess, get_normalization(normalization, source),
                    _lookup_table(known_classes, source), int(indices[0]), _image_size(image_size),
                    eval_input_shape(source, preprocess, image_size)))
    local = examples[process_index::process_count].batch(batch_size // process_count, drop_remainder=True)
    return reading.read(local, workers, threads)
