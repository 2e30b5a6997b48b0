"""The input pipeline's throughput (images/s) against torchvision's, on the same files, in one run.

The script writes its own data into a work folder (a temporary one unless `--workdir`; a `--workdir`
that already holds data written with the same settings is reused):

- ImageNet-like JPEGs (quality 90, 400-500 x 300-375 px) cut from real photographs (scikit-image's
  astronaut, coffee, chelsea, rocket and hubble_deep_field, scikit-learn's china and flower), in an
  ImageFolder layout of `NUM_CLASSES` classes (read as ``imagefolder=PATH``);
- CIFAR-like 32x32 PNGs of the same photographs in the same layout;
- ADE20K-like pairs (JPEG, 512x683 by default, and a label PNG of raw ADE values 0..150) in
  ``ADEChallengeData2016/`` (read by `segmentation.Ade20kSource`);
- Cityscapes-like pairs (PNG, 1024x2048 by default, and a 19-class label PNG of train ids and void) in
  mmseg's ``img_dir/ann_dir`` layout with Cityscapes' file names (read as ``segfolder=PATH``).

Label maps follow the photographs' colour regions (pillow's median-cut quantisation), so that mmseg's crop
test (`cat_max_ratio`) sees regions of several classes. Every image gets a little Gaussian noise
(sigma 2), so that upscaled views compress like photographs do.

Paths measured (`PATHS`), each at every worker count of `--workers` (0 = in the main process):

- lgmm_jax: `pipeline.train_iterator(..., workers=N, threads=T)` per preset (cifar, imagenet, imagenet_swin)
  with ``normalize=`` as the classification task passes it (``not pipeline.normalizes_on_device(preset)``:
  uint8 batches for cifar and imagenet, normalised on the devices; float32 for imagenet_swin), where the
  imagenet presets decode, crop and resize each file in one pass of pillow (`images.read_image_window`);
  `pipeline.eval_batches(..., workers=N, threads=T)` (imagenet preset); and the segmentation training crops
  (mmseg's augmentation, as `SegmentationTask.train_stream` builds them) on the ADE20K-like (512x512) and
  Cityscapes-like (769x769; 1024x1024 with `--paths`) data. T is `--threads`, by default the library's
  (`settings.threads_of`: 4). Every stream is closed after its measurement (worker processes stop).
- torchvision: `datasets.ImageFolder` under `torch.utils.data.DataLoader(num_workers=N,
  persistent_workers=N > 0)` with the recipes' transforms (`torch_transform`); there is no torchvision
  counterpart of the segmentation crops. torch's main process gets one intra-op thread, as each DataLoader
  worker has (`--torch_threads`; 0 keeps torch's default of one per core, whose spinning threads made
  every small tensor operation 10-30x slower on a 2-core machine that other work kept busy).

A measurement takes one batch as warm-up (workers started, buffers filled), then counts the images of the
batches that arrive in the next `--seconds` (or `--batches` batches); images/s is counted whatever the
batch's dtype. The batches the workers had ready when the warm-up batch arrived count in the window (at
most about N - 1 of them: a few percent over 10 s). The evaluation pass lists the training files again
and again (`eval_repeats`), so that it outlasts the window. "One example on one thread" calls the
per-example transform (decode and the preset's transform: the library's `TrainExample` as its stream uses
it, `EvalExample` or `SegmentationTrainExample`, torchvision's dataset item) in a loop, torch limited to one
thread; for imagenet and imagenet_swin a second row, "lgmm_jax before", times what `TrainExample` computed
before issue 41's change (`before_example`: the whole file decoded as `images.read_image` did then, `decoded_before`,
`augment.random_resized_crop` of that array, the flip, imagenet_swin's RandAugment and erasing, and the
normalisation to float32 on the host), measured beside it in each repeat, with now / before.

The paths of `--one_core` (imagenet, eval_imagenet) are also measured in a fresh process pinned to one CPU
(`os.sched_setaffinity` before anything is imported; its worker processes inherit it) with the library's
defaults there: `settings.workers_for` gives one worker on a one-core host for training, evaluation keeps
`data.eval_workers`' 0 (threads only). The library's default on this host (`default_workers_of`: one worker
per core for training, 0 for evaluation) is marked in the table. `--repeats` runs every measurement that
many times, lgmm_jax and torchvision interleaved (their order alternating per repeat), and reports each.

The printed table gives, per path, side and worker count: img/s of each repeat and their median, img/s
per core used (the worker count, 1 for 0 workers), the scaling efficiency (rate at N / (N x rate at 1
worker); for 0 workers: rate / the one-example-one-thread rate) and ours / torchvision (of the medians;
the JSON also has the per-repeat ratios); "1 cpu" rows are the one-core measurements. Then issue 41's
ratios (`ISSUE_GOALS`), each of this run's medians with the per-repeat ratios and its goal: one example
now / before (imagenet, imagenet_swin), the default imagenet training stream on this host / pinned to one
CPU and / torchvision's ImageFolder + DataLoader with as many workers, imagenet_swin / torchvision's
RandAugment pipeline, the default evaluation stream / pinned to one CPU. Then the CPU cores one accelerator
needs (`CONSUMERS`: published training consumption / measured img/s per core of the matching path, at the
largest worker count measured and at the one-example-one-thread rate), and as the last line one JSON
object with every number.

    python bench/input.py                                  # defaults: 256 images, 10 s per measurement
    python bench/input.py --workdir /tmp/input_bench --workers 0,1,2 --repeats 3
    python bench/input.py --no-torch --paths imagenet,eval_imagenet --seconds 3

torch and torchvision come with the ``bench`` extra (``pip install -e .[bench]``); without them (or with
`--no-torch`) the torchvision side is skipped.
"""

# No `from __future__ import annotations`: tests load this script as a module that is not in sys.modules,
# where dataclasses cannot resolve string annotations.
import argparse
import contextlib
import dataclasses
import gc
import importlib
import json
import math
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterator

import ml_collections
import numpy as np
from PIL import Image, ImageOps

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # configs/ is not an installed package (as bench/speed.py)
    sys.path.insert(0, str(REPOSITORY))

from lgmm_jax.data import augment, catalog, labelled, pipeline, settings  # noqa: E402
from lgmm_jax.data.seg_augment import NORMALIZATION as SEGMENTATION_NORMALIZATION  # noqa: E402
from lgmm_jax.data.seg_augment import SegmentationTrainExample  # noqa: E402
from lgmm_jax.data.catalog import get_segmentation_source  # noqa: E402
from lgmm_jax.data.segmentation import ADE20K_ROOT, CITYSCAPES_CLASSES  # noqa: E402

NUM_CLASSES = 4
JPEG_QUALITY = 90
NOISE_SIGMA = 2.0
IMAGENET_WIDTHS, IMAGENET_HEIGHTS = (400, 500), (300, 375)
CIFAR_SIDE = 32
LABEL_REGIONS = 8  # colour regions per label map
ADE20K_RAW_CLASSES = 150  # raw values 1..150 (0 = "other", void after reduce_zero_label)
CITYSCAPES_IMAGE_SUFFIX, CITYSCAPES_LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelTrainIds.png"
CITY = "benchcity"
EVAL_MIN_IMAGES = 16_384  # the evaluation pass: the training files listed again and again
SEED = 0
SIDES = ("lgmm_jax", "torchvision")


@dataclasses.dataclass(frozen=True)
class InputPath:
    """One measured input path: what it reads, which transform, and the image shape it gives."""

    name: str
    data: str  # "imagenet", "cifar", "ade20k" or "cityscapes"
    kind: str  # "train", "eval" or "segmentation"
    preset: str  # the pipeline preset ("none" for the segmentation crops)
    shape: tuple[int, int, int]  # (H, W, C) of each image of a batch
    normalization: str = "imagenet2012"
    config: str = ""  # segmentation: the configs/ module whose scale, ratio range and crop test it takes
    crop: tuple[int, int] = ()  # segmentation: the crop (overrides the config's)
    scale: tuple[int, int] = ()  # segmentation: the (long, short) scale (overrides the config's)
    torchvision: bool = True  # whether torchvision has a counterpart


PATHS = {
    "cifar": InputPath("cifar", "cifar", "train", "cifar", (32, 32, 3), normalization="cifar10"),
    "imagenet": InputPath("imagenet", "imagenet", "train", "imagenet", (224, 224, 3)),
    "imagenet_swin": InputPath("imagenet_swin", "imagenet", "train", "imagenet_swin", (224, 224, 3)),
    "eval_imagenet": InputPath("eval_imagenet", "imagenet", "eval", "imagenet", (224, 224, 3)),
    "ade20k_512": InputPath("ade20k_512", "ade20k", "segmentation", "none", (512, 512, 3),
                       config="ade20k_segformer_b5", torchvision=False),
    "cityscapes_769": InputPath("cityscapes_769", "cityscapes", "segmentation", "none", (769, 769, 3),
                           config="cityscapes_deeplabv3plus_r101", torchvision=False),
    # mmseg's own SegFormer Cityscapes recipe (the paper's protocol is 769x769).
    "cityscapes_1024": InputPath("cityscapes_1024", "cityscapes", "segmentation", "none", (1024, 1024, 3),
                            config="cityscapes_segformer_b5", crop=(1024, 1024), scale=(2048, 1024),
                            torchvision=False),
}
DEFAULT_PATHS = ("cifar", "imagenet", "imagenet_swin", "eval_imagenet", "ade20k_512", "cityscapes_769")
DEFAULT_ONE_CORE = ("imagenet", "eval_imagenet")  # measured pinned to one CPU too (`measure_one_core`)


@dataclasses.dataclass(frozen=True)
class Consumer:
    """One accelerator configuration's published training consumption, and the path that feeds it."""

    name: str
    images_per_s: tuple[float, ...]  # one value, or the low and high ends of a published range
    path: str


CONSUMERS = (
    Consumer("ResNet-50, 1 A100, AMP (NVIDIA DeepLearningExamples)", (2470,), "imagenet"),
    Consumer("ResNet-50, 1 V100, AMP (NVIDIA DeepLearningExamples)", (1200,), "imagenet"),
    Consumer("ResNet-50, flax ImageNet example, one TPU v3-8 host", (8100,), "imagenet"),
    Consumer("ViT-S/16 + RandAugment, big_vision, one host", (4500, 5300), "imagenet_swin"),
)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def default_workers(cpu_count: int) -> list[int]:
    """0, 1, 2, 4, ... up to the CPU count, and the CPU count itself."""
    counts, count = [0], 1
    while count < cpu_count:
        counts.append(count)
        count *= 2
    return counts + [cpu_count]


def parse_size(text: str, name: str) -> tuple[int, int]:
    """'HEIGHTxWIDTH' as (height, width)."""
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}={text!r} is not HEIGHTxWIDTH, e.g. 512x683") from None
    if min(height, width) < 8:
        raise argparse.ArgumentTypeError(f"{name}={text!r}: both sides must be at least 8 pixels")
    return height, width


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="", help="folder for the data (default: a temporary one, removed)")
    parser.add_argument("--num_images", "--num-images", type=int, default=256,
                        help="ImageNet-like and CIFAR-like images written")
    parser.add_argument("--num_seg_images", "--num-seg-images", type=int, default=0,
                        help="ADE20K-like and Cityscapes-like pairs written (0: min(num_images, 32), at least "
                             "the batch size)")
    parser.add_argument("--ade20k_size", "--ade20k-size", default="512x683", help="ADE20K-like images, HxW")
    parser.add_argument("--cityscapes_size", "--cityscapes-size", default="1024x2048",
                        help="Cityscapes-like images, HxW (smaller: a scaled stand-in)")
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS), help=f"comma-separated, from {list(PATHS)}")
    parser.add_argument("--workers", default="", help="comma-separated worker counts (default: 0, 1, 2, 4, ... "
                                                      "up to os.cpu_count())")
    parser.add_argument("--threads", type=int, default=0,
                        help="lgmm_jax's reading threads per process (0: the pipeline's default)")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window of each measurement")
    parser.add_argument("--batches", type=int, default=0,
                        help="timed batches of each measurement instead of --seconds (0: use --seconds)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of every measurement, the sides interleaved")
    parser.add_argument("--torch_threads", "--torch-threads", type=int, default=1,
                        help="torch's intra-op threads in the main process (0: torch's default); DataLoader "
                             "workers have one each")
    parser.add_argument("--no-torch", "--no_torch", dest="no_torch", action="store_true",
                        help="skip the torchvision side")
    parser.add_argument("--one_core", "--one-core", default=",".join(DEFAULT_ONE_CORE),
                        help="comma-separated paths whose default stream is also measured in a process pinned "
                             "to one CPU ('' for none)")
    parser.add_argument("--measure_one_core", default="", help=argparse.SUPPRESS)  # one_core_child
    args = parser.parse_args(argv)
    args.one_core = [name.strip() for name in args.one_core.split(",") if name.strip()]
    if any(name not in PATHS for name in args.one_core):
        parser.error(f"--one_core: unknown paths {[n for n in args.one_core if n not in PATHS]}; choose from "
                     f"{list(PATHS)}")
    args.paths = [name.strip() for name in args.paths.split(",") if name.strip()]
    unknown = [name for name in args.paths if name not in PATHS]
    if unknown or not args.paths:
        parser.error(f"--paths: unknown {unknown}; choose from {list(PATHS)}")
    try:
        args.workers = ([int(count) for count in args.workers.split(",") if count.strip()]
                        if args.workers else default_workers(os.cpu_count() or 1))
    except ValueError:
        parser.error(f"--workers={args.workers!r} is not a comma-separated list of integers")
    if not args.workers or min(args.workers) < 0:
        parser.error("--workers needs worker counts of 0 or more")
    try:
        args.ade20k_size = parse_size(args.ade20k_size, "--ade20k_size")
        args.cityscapes_size = parse_size(args.cityscapes_size, "--cityscapes_size")
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    # a segmentation stream needs a batch of pairs (the default 32 are fewer than the default batch of 64)
    args.num_seg_images = args.num_seg_images or max(min(args.num_images, 32), args.batch_size)
    if min(args.num_images, args.num_seg_images, args.batch_size, args.repeats) < 1:
        parser.error("--num_images, --num_seg_images, --batch_size and --repeats must be at least 1")
    if args.num_images < max(args.batch_size, NUM_CLASSES) or args.num_seg_images < args.batch_size:
        parser.error(f"--num_images must be at least the batch size and {NUM_CLASSES}, --num_seg_images at least "
                     "the batch size")
    if args.seconds <= 0 or min(args.batches, args.threads, args.torch_threads) < 0:
        parser.error("--seconds must be positive, --batches, --threads and --torch_threads not negative")
    return args


# ----------------------------------------------------------------------------------------------------------
# The data
# ----------------------------------------------------------------------------------------------------------


def photographs() -> list[np.ndarray]:
    """The real photographs the data is cut from: uint8 RGB arrays of 300x451 to 872x1000 px."""
    from skimage import data as skimage_data
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")
    photos = [np.asarray(getattr(skimage_data, name)())[..., :3] for name in names]
    return photos + [np.asarray(image) for image in load_sample_images().images]


def random_view(photo: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random window of ``photo`` with the aspect ratio of ``height x width`` (50-100% of the largest
    such window), resized to that size, with Gaussian noise of `NOISE_SIGMA`."""
    photo_height, photo_width = photo.shape[:2]
    largest = min(photo_height / height, photo_width / width)
    factor = largest * math.sqrt(rng.uniform(0.5, 1.0))
    window_height, window_width = max(1, int(height * factor)), max(1, int(width * factor))
    top = int(rng.integers(0, photo_height - window_height + 1))
    left = int(rng.integers(0, photo_width - window_width + 1))
    window = Image.fromarray(photo[top:top + window_height, left:left + window_width])
    view = np.asarray(window.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32)
    return np.clip(np.rint(view + rng.normal(0.0, NOISE_SIGMA, view.shape)), 0, 255).astype(np.uint8)


def region_labels(image: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A label map that follows the image's colour regions: pillow's median-cut palette index of each pixel
    (`LABEL_REGIONS` colours), sent to ``values[index]``."""
    indices = np.asarray(Image.fromarray(image).quantize(colors=LABEL_REGIONS, method=Image.Quantize.MEDIANCUT))
    return values[np.minimum(indices, len(values) - 1)].astype(np.uint8)


def link_or_copy(source: pathlib.Path, target: pathlib.Path) -> None:
    """A hard link of ``source`` at ``target`` (a copy where the file system has no hard links)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_classification(root: pathlib.Path, count: int, photos: list, size: Callable, suffix: str,
                         save: Callable, rng: np.random.Generator) -> None:
    """``count`` images in ``root/train/<class>/``, image i in class i mod `NUM_CLASSES`, cut from photograph
    i mod len(photos) at ``size(rng)`` = (height, width); ``val/`` and ``test/`` get a hard link of each
    class's first image (so that the library's ``imagefolder=`` source carves nothing from train)."""
    for index in range(count):
        height, width = size(rng)
        image = random_view(photos[index % len(photos)], height, width, rng)
        path = root / "train" / f"class_{index % NUM_CLASSES}" / f"{index:06d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        save(Image.fromarray(image), path)
    for label in range(NUM_CLASSES):
        first = sorted((root / "train" / f"class_{label}").iterdir())[0]
        for split in ("val", "test"):
            link_or_copy(first, root / split / f"class_{label}" / first.name)


def imagenet_size(rng: np.random.Generator) -> tuple[int, int]:
    return (int(rng.integers(IMAGENET_HEIGHTS[0], IMAGENET_HEIGHTS[1] + 1)),
            int(rng.integers(IMAGENET_WIDTHS[0], IMAGENET_WIDTHS[1] + 1)))


def save_jpeg(image: Image.Image, path: pathlib.Path) -> None:
    image.save(path, quality=JPEG_QUALITY)


def save_png(image: Image.Image, path: pathlib.Path) -> None:
    image.save(path)


def write_ade20k(root: pathlib.Path, count: int, size: tuple[int, int], photos: list,
                 rng: np.random.Generator) -> None:
    """ADEChallengeData2016/images/training/*.jpg with annotations/training/*.png (raw values 0..150)."""
    images_dir = root / ADE20K_ROOT / "images" / "training"
    labels_dir = root / ADE20K_ROOT / "annotations" / "training"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = random_view(photos[index % len(photos)], *size, rng)
        values = np.concatenate([[0], rng.choice(np.arange(1, ADE20K_RAW_CLASSES + 1), LABEL_REGIONS - 1)])
        stem = f"ADE_train_{index + 1:08d}"
        save_jpeg(Image.fromarray(image), images_dir / f"{stem}.jpg")
        Image.fromarray(region_labels(image, rng.permutation(values))).save(labels_dir / f"{stem}.png")


def write_cityscapes(root: pathlib.Path, count: int, size: tuple[int, int], photos: list,
                     rng: np.random.Generator) -> None:
    """mmseg's img_dir/{train,val}/<city>/*_leftImg8bit.png with ann_dir/.../*_gtFine_labelTrainIds.png
    (train ids 0..18 and 255), and classes.txt; val/ holds a hard link of the first pair."""
    for index in range(count):
        image = random_view(photos[index % len(photos)], *size, rng)
        values = np.concatenate([[255], rng.choice(len(CITYSCAPES_CLASSES), LABEL_REGIONS - 1)])
        names = {"img_dir": f"{CITY}_000000_{index:06d}{CITYSCAPES_IMAGE_SUFFIX}",
                 "ann_dir": f"{CITY}_000000_{index:06d}{CITYSCAPES_LABEL_SUFFIX}"}
        paths = {folder: root / folder / "train" / CITY / name for folder, name in names.items()}
        for path in paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        save_png(Image.fromarray(image), paths["img_dir"])
        Image.fromarray(region_labels(image, rng.permutation(values))).save(paths["ann_dir"])
        if index == 0:
            for folder, name in names.items():
                link_or_copy(paths[folder], root / folder / "val" / CITY / name)
    (root / "classes.txt").write_text("".join(name + "\n" for name in CITYSCAPES_CLASSES))


def data_settings(args) -> dict:
    """What the written data depends on (a work folder with the same settings is reused)."""
    return {"version": 1, "num_images": args.num_images, "num_seg_images": args.num_seg_images,
            "ade20k_size": list(args.ade20k_size), "cityscapes_size": list(args.cityscapes_size),
            "num_classes": NUM_CLASSES, "seed": SEED}


def needed_data(paths: list[str]) -> list[str]:
    return sorted({PATHS[name].data for name in paths})


def prepare_data(workdir: pathlib.Path, args, log) -> None:
    """Writes the data sets the chosen paths read into ``workdir`` unless it holds them already."""
    settings = data_settings(args)
    manifest = workdir / "manifest.json"
    done = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if done.get("settings") != settings:
        done = {"settings": settings, "written": []}
    todo = [name for name in needed_data(args.paths) if name not in done["written"]]
    if not todo:
        return
    photos = photographs()
    for name in todo:
        shutil.rmtree(workdir / name, ignore_errors=True)
        rng = np.random.default_rng([SEED, ["imagenet", "cifar", "ade20k", "cityscapes"].index(name)])
        started = time.perf_counter()
        if name == "imagenet":
            write_classification(workdir / name, args.num_images, photos, imagenet_size, ".JPEG", save_jpeg, rng)
        elif name == "cifar":
            write_classification(workdir / name, args.num_images, photos, lambda _: (CIFAR_SIDE, CIFAR_SIDE),
                                 ".png", save_png, rng)
        elif name == "ade20k":
            write_ade20k(workdir / name, args.num_seg_images, args.ade20k_size, photos, rng)
        else:
            write_cityscapes(workdir / name, args.num_seg_images, args.cityscapes_size, photos, rng)
        done["written"].append(name)
        manifest.write_text(json.dumps(done))
        log(f"wrote the {name}-like data in {time.perf_counter() - started:.1f} s")


def file_statistics(folder: pathlib.Path, suffix: str) -> dict:
    """Count, mean size in KiB and the (H, W) range of the files under ``folder`` ending in ``suffix``."""
    files = sorted(path for path in folder.rglob(f"*{suffix}") if path.is_file())
    sizes = []
    for path in files:
        with Image.open(path) as image:
            sizes.append((image.height, image.width))
    heights, widths = [h for h, _ in sizes], [w for _, w in sizes]
    return {"files": len(files), "mean_kib": round(sum(p.stat().st_size for p in files) / len(files) / 1024, 1),
            "height": [min(heights), max(heights)], "width": [min(widths), max(widths)]}


def describe_data(workdir: pathlib.Path, args) -> dict:
    """What each data set holds: files, encoding, sizes (the printed header and the JSON's ``data``)."""
    described = {}
    data = needed_data(args.paths)
    if "imagenet" in data:
        described["imagenet"] = {"encoding": f"JPEG quality {JPEG_QUALITY}", "layout": "imagefolder=",
                                 **file_statistics(workdir / "imagenet" / "train", ".JPEG")}
    if "cifar" in data:
        described["cifar"] = {"encoding": "PNG", "layout": "imagefolder=",
                              **file_statistics(workdir / "cifar" / "train", ".png")}
    if "ade20k" in data:
        described["ade20k"] = {"encoding": f"JPEG quality {JPEG_QUALITY} + label PNG", "layout": "ade20k",
                               **file_statistics(workdir / "ade20k", ".jpg")}
    if "cityscapes" in data:
        full = tuple(args.cityscapes_size) == (1024, 2048)
        described["cityscapes"] = {
            "encoding": "PNG + label PNG", "layout": "segfolder= (mmseg's img_dir/ann_dir)",
            "stand_in": "full size" if full else "scaled stand-in of Cityscapes' 1024x2048",
            **file_statistics(workdir / "cityscapes" / "img_dir" / "train", CITYSCAPES_IMAGE_SUFFIX)}
    return described


# ----------------------------------------------------------------------------------------------------------
# lgmm_jax's side
# ----------------------------------------------------------------------------------------------------------


def eval_repeats(args) -> int:
    """How many times the evaluation pass lists the training files (a pass long enough to time)."""
    wanted = max(EVAL_MIN_IMAGES, (args.batches + 2) * args.batch_size)
    return math.ceil(wanted / args.num_images)


def write_eval_lists(workdir: pathlib.Path, args) -> pathlib.Path:
    """An ``imagelist=`` of the ImageNet-like training files repeated `eval_repeats` times (with one-line
    validation and test lists, so that nothing is carved from it); returns the training list."""
    root = workdir / "imagenet"
    entries = [f"{path.relative_to(root).as_posix()} {int(path.parent.name.split('_')[1])}\n"
               for path in sorted((root / "train").rglob("*.JPEG"))]
    lists = {"eval_pass.txt": "".join(entries) * eval_repeats(args), "eval_small.txt": entries[0]}
    for name, text in lists.items():
        (root / name).write_text(text)
    return root / "eval_pass.txt"


def library_source(path: InputPath, workdir: pathlib.Path, args):
    """The library's own source of the files the path reads."""
    if path.data in ("imagenet", "cifar") and path.kind == "train":
        return catalog.get_source(f"imagefolder={workdir / path.data}", "train")
    if path.kind == "eval":
        small = str(workdir / "imagenet" / "eval_small.txt")
        options = labelled.LabelledOptions(validation_list=small, test_list=small)
        return catalog.get_source(f"imagelist={write_eval_lists(workdir, args)}", "train", options=options)
    if path.data == "ade20k":
        return get_segmentation_source("ade20k", "train", str(workdir / "ade20k"))
    return get_segmentation_source(f"segfolder={workdir / 'cityscapes'}", "train", options={
        "img_suffix": CITYSCAPES_IMAGE_SUFFIX, "seg_map_suffix": CITYSCAPES_LABEL_SUFFIX})


def load_config(name: str):
    """configs/<name>.py's get_config()."""
    return importlib.import_module(f"configs.{name}").get_config()


def segmentation_config(path: InputPath, batch_size: int):
    """The path's paper config with the batch size (and the path's crop and scale, where it sets them)."""
    config = load_config(path.config)
    config.batch_size = batch_size
    if path.crop:
        config.segmentation.crop_size = path.crop
    if path.scale:
        config.segmentation.scale = path.scale
    return config


def segmentation_example(config, source) -> SegmentationTrainExample:
    """The training example transform `SegmentationTask.train_stream` builds from ``config``."""
    seg = config.segmentation
    return SegmentationTrainExample(
        source,
        scale=tuple(int(v) for v in seg.scale),
        crop_size=tuple(int(v) for v in seg.crop_size),
        normalization=SEGMENTATION_NORMALIZATION,
        ratio_range=tuple(float(v) for v in seg.ratio_range),
        cat_max_ratio=float(seg.cat_max_ratio),
    )


def stream_threads(args) -> int:
    """lgmm_jax's reading threads per process: ``--threads``, or the library's default (`settings.threads_of`
    of a config without ``data.threads``)."""
    return args.threads or settings.threads_of(ml_collections.ConfigDict())


def library_batches(path: InputPath, source, args, workers: int) -> Iterator:
    """The library's batches of this path with ``workers`` processes and `stream_threads` threads in each,
    built as the tasks build them: the training streams of the classification presets normalise on the
    host only where the task does (``normalize=not pipeline.normalizes_on_device(preset)``: uint8 images
    for cifar and imagenet, float32 for imagenet_swin). Close it (`close`) when done."""
    threads = stream_threads(args)
    if path.kind == "eval":
        return iter(pipeline.eval_batches(source, batch_size=args.batch_size, preprocess=path.preset,
                                          normalization=path.normalization, workers=workers, threads=threads))
    if path.kind == "segmentation":
        config = segmentation_config(path, args.batch_size)
        return pipeline.train_iterator(source, batch_size=config.batch_size, seed=config.seed, preprocess="none",
                                       example=segmentation_example(config, source), workers=workers,
                                       threads=threads)
    return pipeline.train_iterator(source, batch_size=args.batch_size, seed=SEED, preprocess=path.preset,
                                   normalization=path.normalization, workers=workers, threads=threads,
                                   normalize=not pipeline.normalizes_on_device(path.preset))


def default_workers_of(path: InputPath, source) -> int:
    """The worker count the library gives this path's stream on this host by default: `settings.workers_for`
    of a config without ``data.workers`` for training (one per core this process may run on, for a source
    that decodes files), `settings.eval_workers_of` (0: threads only) for evaluation."""
    config = ml_collections.ConfigDict()
    return settings.eval_workers_of(config) if path.kind == "eval" else settings.workers_for(config, source)


def library_example(path: InputPath, source, args) -> Callable[[int, np.random.Generator], object]:
    """The library's per-example transform of this path as its stream uses it: source index and generator ->
    one example (the classification presets: `TrainExample` with the stream's ``normalize``; from a labelled
    folder the imagenet presets decode, crop and resize in one pass of pillow, `images.read_image_window`)."""
    normalization = pipeline.get_normalization(path.normalization, source)
    if path.kind == "segmentation":
        return segmentation_example(segmentation_config(path, args.batch_size), source).random_map
    if path.kind == "eval":
        transform = pipeline.EvalExample(source=source, preprocess=path.preset, normalization=normalization,
                                         lookup=None, padding_like_index=0)
        return lambda index, rng: transform.map(index)
    return pipeline.TrainExample(source=source, preprocess=path.preset, normalization=normalization,
                                 lookup=None, normalize=not pipeline.normalizes_on_device(path.preset)).random_map


def has_before(path: InputPath) -> bool:
    """Whether the path gets a "lgmm_jax before" row: the training presets that take a random resized crop."""
    return path.kind == "train" and pipeline.resizes_to_network_input(path.preset)


def decoded_before(path: str) -> np.ndarray:
    """`images.read_image` as it was before issue 41 (RGB files): pillow's ``exif_transpose`` and ``convert``,
    each a copy of the whole picture, then the array."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)


def before_example(path: InputPath, source) -> Callable[[int, np.random.Generator], dict]:
    """What the library's training transform computed per example before issue 41's change (commit 863dd68):
    the whole file decoded as it was then (`decoded_before`), the random resized crop of that array
    (`augment.random_resized_crop`, the preset's resampling), the flip, imagenet_swin's RandAugment and
    erasing (`pipeline.swin_after_crop`), then the normalisation to float32 on the host."""
    normalization = pipeline.get_normalization(path.normalization, source)
    resample = pipeline.RESIZE_RESAMPLING[path.preset]

    def transform(index: int, rng: np.random.Generator) -> dict:
        image = decoded_before(source.path(index))
        image = augment.random_resized_crop(image, pipeline.IMAGENET_TRAIN_SIZE, rng, resample=resample)
        image = augment.random_horizontal_flip(image, rng)
        if path.preset == "imagenet_swin":
            image = pipeline.swin_after_crop(image, rng, normalization)
        return {"image": augment.normalize(image, normalization.mean, normalization.std),
                "label": np.int32(source.labels[index])}

    return transform


# ----------------------------------------------------------------------------------------------------------
# torchvision's side
# ----------------------------------------------------------------------------------------------------------


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads in this process (0: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def torch_available() -> str:
    """'' when torch and torchvision import, else why not."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as error:
        return f"{error} (install the bench extra: pip install -e .[bench])"
    return ""


def torch_transform(path: InputPath):
    """torchvision's counterpart of the path's transform (v1 transforms, on pillow images).

    imagenet_swin: torchvision's RandAugment (14 operations, fixed magnitude 9) and RandomErasing with random
    values stand in for mmcls's RandAugment policies (magnitude std 0.5) and erasing: the operations differ.
    """
    from torchvision import transforms

    statistics_ = pipeline.NORMALIZATION[path.normalization]
    tensor = [transforms.ToTensor(), transforms.Normalize(statistics_.mean, statistics_.std)]
    if path.kind == "eval":
        return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), *tensor])
    if path.preset == "cifar":
        return transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), *tensor])
    if path.preset == "imagenet":
        return transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), *tensor])
    bicubic = transforms.InterpolationMode.BICUBIC
    return transforms.Compose([
        transforms.RandomResizedCrop(224, interpolation=bicubic), transforms.RandomHorizontalFlip(),
        transforms.RandAugment(num_ops=2, magnitude=9), *tensor,
        transforms.RandomErasing(0.25, value="random")])


def torch_dataset(path: InputPath, workdir: pathlib.Path, args):
    """ImageFolder over the same training files (the evaluation pass: them repeated `eval_repeats` times)."""
    import torch
    from torchvision import datasets

    dataset = datasets.ImageFolder(str(workdir / path.data / "train"), transform=torch_transform(path))
    if path.kind == "eval":
        dataset = torch.utils.data.Subset(dataset, list(range(len(dataset))) * eval_repeats(args))
    return dataset


def torch_batches(path: InputPath, dataset, args, workers: int) -> Iterator:
    """A DataLoader's batches: shuffled for training (as many epochs as a measurement needs), in order for
    evaluation; ``persistent_workers`` when there are workers."""
    import torch

    sampler = None
    if path.kind == "train":
        generator = torch.Generator().manual_seed(SEED)
        sampler = torch.utils.data.RandomSampler(dataset, num_samples=len(dataset) * 10_000, generator=generator)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                                         persistent_workers=workers > 0, drop_last=path.kind == "train")
    return iter(loader)


def torch_example(dataset) -> Callable[[int, np.random.Generator], object]:
    return lambda index, rng: dataset[index]


@contextlib.contextmanager
def one_torch_thread():
    """torch's intra-op threads limited to one inside the block."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------


def images_of(batch):
    """The image array of a batch (a dict's ``image``, a DataLoader's first element)."""
    return batch["image"] if isinstance(batch, dict) else batch[0]


def stream_rate(batches: Iterator, seconds: float, max_batches: int) -> dict:
    """Images/s of ``batches`` after one warm-up batch, over ``seconds`` (or ``max_batches`` batches), and
    the shape and dtype of the warm-up batch's images."""
    first = images_of(next(batches))
    count, counted, start = 0, 0, time.perf_counter()
    while (count < max_batches) if max_batches else (count == 0 or time.perf_counter() - start < seconds):
        try:
            counted += len(images_of(next(batches)))
        except StopIteration:
            break
        count += 1
    elapsed = time.perf_counter() - start
    return {"images_per_s": round(counted / elapsed, 1) if counted else None, "batches": count,
            "seconds": round(elapsed, 2), "shape": list(first.shape), "dtype": str(first.dtype)}


def example_rate(transform: Callable, size: int, seconds: float, max_examples: int) -> dict:
    """ms/example and images/s of ``transform(index, rng)`` called in a loop on this thread (one warm-up call)."""
    transform(0, np.random.default_rng(0))
    count, start = 0, time.perf_counter()
    while (count < max_examples) if max_examples else (count == 0 or time.perf_counter() - start < seconds):
        index = (count + 1) % size
        transform(index, np.random.default_rng(index))
        count += 1
    elapsed = time.perf_counter() - start
    return {"ms_per_example": round(1000 * elapsed / count, 2), "images_per_s": round(count / elapsed, 1)}


def close(iterator) -> None:
    """Lets go of an iterator and its worker processes."""
    closer = getattr(iterator, "close", None)
    if callable(closer):
        with contextlib.suppress(Exception):
            closer()
    del iterator
    gc.collect()


# The one-core measurement: a fresh interpreter pinned to one CPU before anything is imported, which then
# runs this script (`one_core_child`). Its worker processes inherit the affinity.
PIN_AND_RUN = ("import os, runpy, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); sys.argv = sys.argv[2:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
ONE_CORE_TIMEOUT_S = 900


def one_core_argv(path: InputPath, workdir: pathlib.Path, args) -> list[str]:
    """The command line of the one-core measurement of ``path`` (the same data and measurement settings)."""
    size = "{}x{}".format
    return [f"--workdir={workdir}", f"--num_images={args.num_images}", f"--num_seg_images={args.num_seg_images}",
            f"--ade20k_size={size(*args.ade20k_size)}", f"--cityscapes_size={size(*args.cityscapes_size)}",
            f"--batch_size={args.batch_size}", f"--seconds={args.seconds}", f"--batches={args.batches}",
            f"--threads={args.threads}", f"--paths={path.name}", f"--measure_one_core={path.name}", "--no-torch"]


def measure_one_core(path: InputPath, workdir: pathlib.Path, args) -> dict:
    """The library's default stream of ``path`` in a process pinned to one CPU (the first this process may
    run on), where `default_workers_of` gives what the library gives a one-core host: ``{"images_per_s",
    ..., "workers", "threads", "cpus"}``."""
    if not hasattr(os, "sched_setaffinity"):
        return {"images_per_s": None, "skipped": "no os.sched_setaffinity here (not Linux)"}
    cpu = min(os.sched_getaffinity(0))
    command = [sys.executable, "-c", PIN_AND_RUN, str(cpu), str(pathlib.Path(__file__).resolve()),
               *one_core_argv(path, workdir, args)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=ONE_CORE_TIMEOUT_S + args.seconds,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"images_per_s": None, "error": f"the one-core measurement took over {ONE_CORE_TIMEOUT_S} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return {"images_per_s": None, "error": f"the one-core measurement exited with {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def one_core_child(args) -> dict:
    """This process's part of `measure_one_core`: the path's default stream measured once, one JSON line."""
    path = PATHS[args.measure_one_core]
    source = library_source(path, pathlib.Path(args.workdir), args)
    workers = default_workers_of(path, source)
    batches = library_batches(path, source, args, workers)
    try:
        result = stream_rate(batches, args.seconds, args.batches)
    finally:
        close(batches)
    result.update(workers=workers, threads=stream_threads(args), cpus=sorted(os.sched_getaffinity(0)))
    print(json.dumps(result), flush=True)
    return result


@dataclasses.dataclass
class Side:
    """One side's way to make a path's batches and its per-example transform; the library's side also has
    the transform before issue 41 (``before``), the one-core measurement and the default worker count."""

    name: str
    batches: Callable[[InputPath, int], Iterator]
    example: Callable[[InputPath], tuple[Callable, int]]  # (transform, number of examples)
    one_thread: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    before: Callable[[InputPath], tuple[Callable, int]] | None = None
    one_core: Callable[[InputPath], dict] | None = None
    default_workers: Callable[[InputPath], int] | None = None


def library_side(workdir: pathlib.Path, args) -> Side:
    cache = {}

    def source(path: InputPath):
        if path.name not in cache:
            cache[path.name] = library_source(path, workdir, args)
        return cache[path.name]

    def example(path: InputPath):
        data_source = source(path)
        size = len(data_source) if path.kind != "eval" else args.num_images
        return library_example(path, data_source, args), size

    def before(path: InputPath):
        return before_example(path, source(path)), len(source(path))

    return Side("lgmm_jax", lambda path, workers: library_batches(path, source(path), args, workers), example,
                before=before, one_core=lambda path: measure_one_core(path, workdir, args),
                default_workers=lambda path: default_workers_of(path, source(path)))


def torchvision_side(workdir: pathlib.Path, args) -> Side:
    cache = {}

    def dataset(path: InputPath):
        if path.name not in cache:
            cache[path.name] = torch_dataset(path, workdir, args)
        return cache[path.name]

    def example(path: InputPath):
        return torch_example(dataset(path)), args.num_images

    return Side("torchvision", lambda path, workers: torch_batches(path, dataset(path), args, workers), example,
                one_torch_thread)


def measure_stream(side: Side, path: InputPath, workers: int, args) -> dict:
    """One measurement of a side's batches of a path at a worker count (the stream closed after it)."""
    batches = side.batches(path, workers)
    try:
        return stream_rate(batches, args.seconds, args.batches)
    finally:
        close(batches)


def measure_example(side: Side, path: InputPath, args, before: bool = False) -> dict:
    """One measurement of a side's per-example transform of a path on one thread (``before``: the library's
    transform before issue 41)."""
    transform, size = (side.before if before else side.example)(path)
    with side.one_thread():  # --batches: as many examples as those batches hold
        return example_rate(transform, size, args.seconds, args.batches * args.batch_size)


def new_side_runs(side: Side, path: InputPath, args) -> dict:
    runs = {"streams": {str(w): [] for w in args.workers}, "one_thread": []}
    if side.before is not None and has_before(path):
        runs["one_thread_before"] = []
    if side.one_core is not None and path.name in args.one_core:
        runs["one_core"] = []
    if side.default_workers is not None:
        runs["default_workers"] = side.default_workers(path)
    return runs


def run_measurements(sides: list[Side], args, log) -> dict:
    """Every path x worker count x side, `--repeats` times, the sides' order alternating per repeat:
    ``{path: {side: {"streams": {workers: [runs]}, "one_thread": [runs], ...}}}``; the library's side also
    has ``one_thread_before`` (`has_before` paths: measured beside ``one_thread``, their order alternating
    too), ``one_core`` (the paths of ``--one_core``: after the path's streams) and ``default_workers``."""
    runs = {name: {side.name: new_side_runs(side, PATHS[name], args)
                   for side in sides if side.name == "lgmm_jax" or PATHS[name].torchvision}
            for name in args.paths}
    for repeat in range(args.repeats):
        order = sides if repeat % 2 == 0 else sides[::-1]
        for name in args.paths:
            path = PATHS[name]
            for side in order:
                if side.name not in runs[name]:
                    continue
                side_runs = runs[name][side.name]
                kinds = ["one_thread"] + (["one_thread_before"] if "one_thread_before" in side_runs else [])
                for kind in kinds if repeat % 2 == 0 else kinds[::-1]:
                    result = measure_example(side, path, args, before=kind == "one_thread_before")
                    side_runs[kind].append(result)
                    log(f"repeat {repeat + 1}: {name} {side.name} {kind}: {result['images_per_s']} img/s")
            for workers in args.workers:
                for side in order:
                    if side.name not in runs[name]:
                        continue
                    result = measure_stream(side, path, workers, args)
                    runs[name][side.name]["streams"][str(workers)].append(result)
                    log(f"repeat {repeat + 1}: {name} {side.name} workers={workers}: "
                        f"{result['images_per_s']} img/s")
            for side in sides:
                if "one_core" in runs[name].get(side.name, {}):
                    result = side.one_core(path)
                    runs[name][side.name]["one_core"].append(result)
                    log(f"repeat {repeat + 1}: {name} {side.name} pinned to one CPU (workers="
                        f"{result.get('workers')}): {result['images_per_s']} img/s {result.get('error', '')}")
    return runs


# ----------------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------------


def median_rate(runs: list[dict]) -> float | None:
    rates = [run["images_per_s"] for run in runs if run.get("images_per_s")]
    return round(statistics.median(rates), 1) if rates else None


def paired(numerators: list, denominators: list, of_medians: tuple) -> dict:
    """A ratio of the medians ``of_medians`` = (numerator, denominator), and per repeat (the runs of one repeat
    paired)."""
    top, bottom = of_medians
    return {"of_medians": round(top / bottom, 3) if top and bottom else None,
            "per_repeat": [round(a / b, 3) for a, b in zip(numerators, denominators) if a and b]}


def one_thread_summary(runs: list[dict]) -> dict:
    return {"ms_per_example": [run["ms_per_example"] for run in runs],
            "images_per_s": [run["images_per_s"] for run in runs], "median": median_rate(runs)}


def summarise_side(side_runs: dict) -> dict:
    """Per worker count: each repeat's rate, the median, per core and scaling; the one-thread rate (and, where
    measured, the one before issue 41 with now / before, and the one-core stream)."""
    one_thread = median_rate(side_runs["one_thread"])
    one_worker = median_rate(side_runs["streams"].get("1", []))
    workers = {}
    for count, runs in side_runs["streams"].items():
        rate, cores = median_rate(runs), max(int(count), 1)
        reference = one_thread if int(count) == 0 else one_worker
        entry = {"images_per_s": [run["images_per_s"] for run in runs], "median": rate,
                 "per_core": round(rate / cores, 1) if rate else None,
                 "scaling": round(rate / (cores * reference), 3) if rate and reference else None}
        workers[count] = entry
    output = next((run for runs in side_runs["streams"].values() for run in runs if "shape" in run), {})
    summary = {"workers": workers, "one_thread": one_thread_summary(side_runs["one_thread"]),
               "output": {"shape": output.get("shape"), "dtype": output.get("dtype")}}
    if "one_thread_before" in side_runs:
        summary["one_thread_before"] = before = one_thread_summary(side_runs["one_thread_before"])
        now = summary["one_thread"]
        summary["now_over_before"] = paired(now["images_per_s"], before["images_per_s"],
                                            (now["median"], before["median"]))
    if "one_core" in side_runs:
        runs = side_runs["one_core"]
        first = next((run for run in runs if run.get("images_per_s")), runs[0] if runs else {})
        summary["one_core"] = {"images_per_s": [run["images_per_s"] for run in runs], "median": median_rate(runs),
                               "workers": first.get("workers"), "threads": first.get("threads"),
                               "cpus": first.get("cpus")}
        problems = sorted({run.get("error") or run.get("skipped") for run in runs} - {None})
        if problems:
            summary["one_core"]["problems"] = problems
    if "default_workers" in side_runs:
        summary["default_workers"] = side_runs["default_workers"]
    return summary


def ratios(ours: dict, theirs: dict) -> dict:
    """lgmm_jax / torchvision per worker count: of the medians, and per repeat (paired)."""
    result = {}
    for count, entry in ours["workers"].items():
        other = theirs["workers"].get(count, {})
        if entry["median"] and other.get("median"):
            paired = [round(a / b, 3) for a, b in zip(entry["images_per_s"], other["images_per_s"]) if a and b]
            result[count] = {"of_medians": round(entry["median"] / other["median"], 3), "per_repeat": paired}
    ones = ours["one_thread"]["median"], theirs["one_thread"]["median"]
    if all(ones):
        result["one_thread"] = {"of_medians": round(ones[0] / ones[1], 3)}
    return result


def summarise(runs: dict) -> dict:
    summary = {}
    for name, side_runs in runs.items():
        summary[name] = {side: summarise_side(side_runs[side]) for side in side_runs}
        if "torchvision" in summary[name]:
            summary[name]["ours_over_torchvision"] = ratios(summary[name]["lgmm_jax"], summary[name]["torchvision"])
    return summary


def best_per_core(side: dict) -> tuple[float | None, str]:
    """The per-core rate at the largest worker count measured (1 or more), and which."""
    measured = [(int(count), entry["per_core"]) for count, entry in side["workers"].items()
                if int(count) > 0 and entry["per_core"]]
    if not measured:
        return None, ""
    count, per_core = max(measured)
    return per_core, f"{count} worker{'s' if count > 1 else ''}"


def accelerator_cores(summary: dict) -> list[dict]:
    """CPU cores each `CONSUMERS` entry needs at the measured per-core rates of its path (per side: at the
    largest worker count measured, and at the one-example-one-thread rate)."""
    rows = []
    for consumer in CONSUMERS:
        if consumer.path not in summary:
            continue
        row = {"consumer": consumer.name, "published_images_per_s": list(consumer.images_per_s),
               "path": consumer.path}
        for side_name in SIDES:
            side = summary[consumer.path].get(side_name)
            if side is None:
                continue
            per_core, at = best_per_core(side)
            one = side["one_thread"]["median"]
            row[side_name] = {
                "cores": [round(rate / per_core, 1) for rate in consumer.images_per_s] if per_core else None,
                "at": at,
                "cores_one_thread": [round(rate / one, 1) for rate in consumer.images_per_s] if one else None}
        rows.append(row)
    return rows


# The ratios issue 41 asks for: (key, what, goal or None).
ISSUE_GOALS = (
    ("one_example_imagenet", "one example on one thread, imagenet: now / before", 2.0),
    ("one_example_imagenet_swin", "one example on one thread, imagenet_swin: now / before", None),
    ("train_cores_over_one_core", "imagenet training stream, defaults on this host / pinned to one CPU", 1.7),
    ("train_over_torchvision", "imagenet training stream, defaults / torchvision ImageFolder+DataLoader, "
                               "as many workers", 1.3),
    ("swin_over_torchvision", "imagenet_swin training stream, defaults / torchvision's RandAugment pipeline, "
                              "as many workers", 1.0),
    ("eval_cores_over_one_core", "evaluation stream (imagenet), defaults on this host / pinned to one CPU", 1.7),
)


def default_stream(sides: dict) -> tuple[str, dict]:
    """The worker count the library gives the path by default here, and the library's row at it ({} when
    --workers did not measure it)."""
    ours = sides["lgmm_jax"]
    count = str(ours.get("default_workers", ""))
    return count, ours["workers"].get(count, {})


def issue_ratios(summary: dict, threads: int) -> dict:
    """`ISSUE_GOALS`' ratios of this run: ``{key: {"what", "of_medians", "per_repeat", "goal", "met", "at"}}``
    (``of_medians`` None and a ``missing`` note where a path or row was not measured)."""
    result = {}
    for key, what, goal in ISSUE_GOALS:
        entry = {"what": what, "goal": goal, "of_medians": None, "per_repeat": []}
        if key.startswith("one_example"):
            name = key.removeprefix("one_example_")
            ours = summary.get(name, {}).get("lgmm_jax", {})
            ratio = ours.get("now_over_before")
            if ratio is None:
                entry["missing"] = f"path {name} not measured"
            else:
                entry.update(ratio, at="one example on one thread")
        else:
            name = {"swin_over_torchvision": "imagenet_swin",
                    "eval_cores_over_one_core": "eval_imagenet"}.get(key, "imagenet")
            sides = summary.get(name)
            count, row = default_stream(sides) if sides else ("", {})
            if not sides:
                entry["missing"] = f"path {name} not measured"
            elif not row:
                entry["missing"] = f"{name}: the default worker count here ({count}) is not in --workers"
            elif key.endswith("one_core"):
                one = sides["lgmm_jax"].get("one_core")
                if not one or not one["median"]:
                    entry["missing"] = f"{name}: no one-core rate (--one_core; {(one or {}).get('problems')})"
                else:
                    entry.update(paired(row["images_per_s"], one["images_per_s"], (row["median"], one["median"])),
                                 at=f"workers {count}, threads {threads} on {len(available_cpus())} cores / "
                                    f"workers {one['workers']}, threads {one['threads']} on CPU {one['cpus']}")
            else:
                theirs = sides.get("torchvision", {}).get("workers", {}).get(count)
                if not theirs or not theirs["median"]:
                    entry["missing"] = f"{name}: no torchvision rate at {count} workers"
                else:
                    entry.update(paired(row["images_per_s"], theirs["images_per_s"],
                                        (row["median"], theirs["median"])),
                                 at=f"workers {count}, threads {threads} / DataLoader(num_workers={count})")
        if entry.get("of_medians") is not None and goal is not None:
            entry["met"] = entry["of_medians"] >= goal
        result[key] = entry
    return result


def available_cpus() -> list[int]:
    """The CPUs this process may run on (all of os.cpu_count() where there is no affinity)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_header(args, described: dict, torch_note: str, versions: dict) -> None:
    print(f"CPU: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {', '.join(f'{k} {v}' for k, v in versions.items())}")
    print(f"batch {args.batch_size}, workers {args.workers}, threads {stream_threads(args)}"
          f"{'' if args.threads else ' (the library default)'}, "
          f"{'%d batches' % args.batches if args.batches else '%g s' % args.seconds} per measurement after one "
          f"warm-up batch, {args.repeats} repeats (sides interleaved)")
    for name, d in described.items():
        sizes = f"{d['height'][0]}-{d['height'][1]} x {d['width'][0]}-{d['width'][1]} px (HxW)"
        extra = f", {d['stand_in']}" if "stand_in" in d else ""
        print(f"data {name}: {d['files']} files, {d['encoding']}, {sizes}, mean {d['mean_kib']} KiB, "
              f"read as {d['layout']}{extra}")
    if args.one_core:
        print(f"pinned to one CPU too: {', '.join(args.one_core)} (this process may run on CPUs {available_cpus()})")
    if torch_note:
        print(f"torchvision side skipped: {torch_note}")
    if "imagenet_swin" in args.paths and not torch_note:
        print("imagenet_swin: torchvision's RandAugment(2, 9) and RandomErasing(0.25) stand in for mmcls's "
              "RandAugment policies and erasing: the operations differ")
    sys.stdout.flush()


TABLE_COLUMNS = (("path", "<16"), ("side", "<15"), ("workers", ">7"), ("img/s (each repeat)", ">24"),
                 ("median", ">8"), ("per core", ">9"), ("scaling", ">8"), ("ours/tv", ">8"))


def table_row(*cells: str, note: str = "") -> str:
    """One line of the table: ``cells`` in `TABLE_COLUMNS`' widths, then ``note``."""
    line = " ".join(f"{cell:{align}}" for cell, (_, align) in zip(cells, TABLE_COLUMNS))
    return f"{line}   {note}" if note else line


def rates_text(rates: list) -> str:
    return " ".join(fmt(rate) for rate in rates)


def print_table(summary: dict) -> None:
    """Per path and side: the one-example-one-thread row ('1 thr'; the library's transform before issue 41
    below the library's where measured), one row per worker count, and the one-core row ('1 cpu')."""
    print("\n" + table_row(*(title for title, _ in TABLE_COLUMNS)))
    for name, sides in summary.items():
        ratios_ = sides.get("ours_over_torchvision", {})
        for side_name in SIDES:
            side = sides.get(side_name)
            if side is None:
                continue
            ours = side_name == "lgmm_jax"
            one = side["one_thread"]
            ratio = fmt(ratios_.get("one_thread", {}).get("of_medians"), 3) if ours else ""
            print(table_row(name, side_name, "1 thr", rates_text(one["images_per_s"]), fmt(one["median"]),
                            fmt(one["median"]), "", ratio,
                            note=f"({' '.join(fmt(ms, 2) for ms in one['ms_per_example'])} ms/example)"))
            if "one_thread_before" in side:
                before, gain = side["one_thread_before"], side["now_over_before"]
                print(table_row(name, "lgmm_jax before", "1 thr", rates_text(before["images_per_s"]),
                                fmt(before["median"]), fmt(before["median"]), "", "",
                                note=f"({' '.join(fmt(ms, 2) for ms in before['ms_per_example'])} ms/example); "
                                     f"now/before {fmt(gain['of_medians'], 2)} "
                                     f"({' '.join(fmt(r, 2) for r in gain['per_repeat'])})"))
            for count, entry in side["workers"].items():
                ratio = fmt(ratios_.get(count, {}).get("of_medians"), 3) if ours else ""
                default = " default" if ours and str(side.get("default_workers")) == count else ""
                print(table_row(name, side_name, count, rates_text(entry["images_per_s"]), fmt(entry["median"]),
                                fmt(entry["per_core"]), fmt(entry["scaling"], 2), ratio,
                                note=f"(the library's{default} workers here)" if default else ""))
            if "one_core" in side:
                pinned = side["one_core"]
                note = (f"(pinned to CPU {pinned['cpus']}: the library's default workers={pinned['workers']}, "
                        f"threads={pinned['threads']})")
                if pinned.get("problems"):
                    note += f" {'; '.join(pinned['problems'])}"
                print(table_row(name, side_name, "1 cpu", rates_text(pinned["images_per_s"]), fmt(pinned["median"]),
                                fmt(pinned["median"]), "", "", note=note))
        shapes = [f"{side_name} {side['output']['shape']} {side['output']['dtype']}"
                  for side_name, side in sides.items() if side_name in SIDES]
        print(f"{'':16s} batches: {'; '.join(shapes)}")


def print_issue_ratios(ratios_: dict) -> None:
    """`issue_ratios`, one line each: the ratio of the medians, per repeat, and the goal."""
    print("\nIssue 41's ratios (this run's medians; each repeat's in brackets):")
    for entry in ratios_.values():
        if entry.get("of_medians") is None:
            print(f"  {entry['what']}: - ({entry.get('missing', 'not measured')})")
            continue
        goal = "" if entry["goal"] is None else (f"; goal >= {entry['goal']}: "
                                                 f"{'met' if entry['met'] else 'NOT met'}")
        print(f"  {entry['what']}: {entry['of_medians']:.2f} "
              f"({' '.join(f'{r:.2f}' for r in entry['per_repeat'])}) [{entry['at']}]{goal}")


def cores_text(cores: list | None) -> str:
    return "-" if not cores else "-".join(fmt(c) for c in cores)


def print_cores(rows: list[dict]) -> None:
    """One line per `CONSUMERS` entry: each side's cores at its largest worker count and at one thread."""
    if not rows:
        return
    print("\nCPU cores one accelerator needs (published img/s / measured img/s per core):")
    for row in rows:
        published = "-".join(f"{rate:,.0f}" for rate in row["published_images_per_s"])
        parts = [f"{side_name} {cores_text(row[side_name]['cores'])} "
                 f"({'at ' + row[side_name]['at'] if row[side_name]['at'] else 'no worker rate'}), "
                 f"{cores_text(row[side_name]['cores_one_thread'])} (one thread)"
                 for side_name in SIDES if side_name in row]
        print(f"  {row['consumer']}: {published} img/s, {row['path']}: {'; '.join(parts)}")


def versions(torch_note: str) -> dict:
    import grain
    import PIL

    found = {"python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__,
             "grain": getattr(grain, "__version__", "?")}
    if not torch_note:
        import torch
        import torchvision

        found.update(torch=torch.__version__, torchvision=torchvision.__version__,
                     torch_main_process_threads=torch.get_num_threads())
    return found


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.measure_one_core:
        return one_core_child(args)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    torch_note = "--no-torch" if args.no_torch else torch_available()
    temporary = not args.workdir
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="lgmm_input_bench_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    try:
        prepare_data(workdir, args, log)
        described = describe_data(workdir, args)
        if not torch_note:
            set_torch_threads(args.torch_threads)
        found_versions = versions(torch_note)
        print_header(args, described, torch_note, found_versions)
        sides = [library_side(workdir, args)] + ([] if torch_note else [torchvision_side(workdir, args)])
        summary = summarise(run_measurements(sides, args, log))
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    cores = accelerator_cores(summary)
    issue = issue_ratios(summary, stream_threads(args))
    print_table(summary)
    print_issue_ratios(issue)
    print_cores(cores)
    result = {
        "cpu_count": os.cpu_count(), "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "versions": found_versions, "torchvision_skipped": torch_note or None,
        "cpus": available_cpus(),
        "settings": {"batch_size": args.batch_size, "workers": args.workers, "threads": stream_threads(args),
                     "torch_threads": args.torch_threads, "seconds": args.seconds, "batches": args.batches,
                     "repeats": args.repeats, "paths": args.paths, "one_core": args.one_core},
        "data": described, "results": summary, "issue_ratios": issue, "accelerator_cores": cores,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
