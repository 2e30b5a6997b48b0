"""Train-step and eval-step time of L-GMM against its softmax counterpart, and data-pipeline throughput.

Everything is built the way training builds it: a config (`configs/default.py` with `model.encoder`,
`model.head`, `batch_size`, `model.dtype` overridden), `heads.create_model`, `state.create_optimizer`,
`state.create_sharded_train_state` and `train.make_train_step` (jitted, state donated, batch sharded over
the mesh); the eval step is `forward.make_forward` (what evaluation runs on every batch). Each step is
compiled once with `.lower(...).compile()`, which also gives XLA's FLOP count (`cost_analysis`).

For each encoder the two train steps (L-GMM, softmax) run round-robin, the order rotating every round,
then the two eval steps likewise (3x as many rounds: they are cheaper), all in one process, so that
machine noise hits both heads alike. Times are medians; a ratio is median(L-GMM) / median(softmax) (the
median of the per-round ratios and the ratio of the minima are reported beside it: on a shared machine
the minimum is the least disturbed run). Goal (issue 7): both ratios at most 1.02.
`--diagnose` adds L-GMM train steps with the memory bank cut to one slot per class and with no Sinkhorn
iterations to the same round-robin, to attribute L-GMM's extra time.

Data pipeline: `lgmm_jax.data.pipeline.train_iterator` (grain, default read options) over a synthetic
in-memory `ArraySource` of uint8 images (CIFAR: 32x32 with the `cifar` preset; ImageNet: square source
images of `--imagenet-source-size` px with the `imagenet` preset, i.e. random resized crop to 224 and flip),
timed alone and compared with the images/s the L-GMM train step consumes. No JPEG decoding is included (a
TFDS ImageNet source also decodes JPEGs, which costs more than the augmentation).

    python bench/speed.py --quick                       # both encoders, ~3 min on 2 CPU cores
    python bench/speed.py --diagnose                    # more rounds, CPU batches 16/8, cost attribution
    python bench/speed.py --batch 256 --dtype bfloat16  # on a GPU: images/s and model FLOPs utilisation

Prints the device, one table per encoder, then a JSON object as the last line with `train_step_ratio`
and `eval_step_ratio` (per encoder and overall: the geometric mean over encoders).

Segmenters (`--segmenters segformer_b0,deeplabv3plus_r50`, issue 14; goal 1.05): the same round-robin
on a segmenter at a CPU-sized crop, built as segmentation training builds it: the paper config of the
segmenter's family (SegFormer: `configs/ade20k_segformer_b5.py`, 150 classes, K = 8; DeepLabv3+:
`configs/cityscapes_deeplabv3plus_r101.py`, 19 classes, K = 5) with `model.encoder`, `model.head`,
`batch_size` and the crop overridden, its optimiser, `state.create_sharded_train_state` and
`train.make_train_step` (L-GMM: `objective.pixel_lgmm_objective`, the counted weights and the
moment-matched Gaussians; softmax: mmseg's per-pixel cross-entropy; DeepLabv3+'s auxiliary head for both).
The eval step is the forward, scores upsampled to the image, argmax and max. `--components` overrides K;
`segformer_b5` is the paper's SegFormer.

    python bench/speed.py --encoders '' --segmenters segformer_b0,deeplabv3plus_r50 --quick
    python bench/speed.py --encoders '' --segmenters segformer_b0 --components 3 --crop 512x512 --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import math
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lgmm_jax.deploy import forward as forward_lib
from lgmm_jax.training import state as state_lib, train
from lgmm_jax.heads import create_model
from lgmm_jax.models.configured import DTYPES
from lgmm_jax.models.resize import resize_bilinear
from lgmm_jax.data import pipeline
from lgmm_jax.data.sources import ArraySource
from lgmm_jax.runtime.sharding import check_batch_size, global_batch, make_mesh

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
GOAL_RATIO = 1.02
HEADS = ("lgmm", "softmax")
STEPS_PER_EPOCH = 1000  # only shapes the learning-rate schedule, which costs nothing here
TOTAL_STEPS = 100_000
# --diagnose: L-GMM train steps with one part of the head's work switched off, to attribute its cost.
DIAGNOSTIC_VARIANTS = {
    "lgmm_bank_M1": {"memory_size": 1},  # the memory bank almost free (one slot per class)
    "lgmm_sinkhorn0": {"sinkhorn_iterations": 0},  # no Sinkhorn iterations
}

# Dense peak FLOP/s per chip (no sparsity), from the vendors' data sheets, matched by substring of
# device_kind in this order. float32 on NVIDIA GPUs: XLA's default matmul precision uses TF32 tensor cores
# (SXM parts listed; a PCIe card is slower: pass --peak-tflops). On TPUs the default precision runs float32
# matmuls as bfloat16 passes.
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 495e12},
    "H100": {"bfloat16": 989e12, "float32": 495e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12},
}


@dataclasses.dataclass(frozen=True)
class EncoderCase:
    """One encoder as its experiment uses it."""

    encoder: str
    num_classes: int
    image_size: int
    preset: str
    dataset: str  # only names the normalisation statistics of the synthetic source
    cpu_batch: int
    quick_batch: int


CASES = {
    "cifar_resnet18": EncoderCase("cifar_resnet18", 100, 32, "cifar", "cifar100", 16, 8),
    "resnet50": EncoderCase("resnet50", 1000, 224, "imagenet", "imagenet2012", 8, 2),
}


@dataclasses.dataclass(frozen=True)
class SegmenterCase:
    """One segmenter at a CPU-sized crop, with the settings of its family's paper config."""

    name: str
    config: str  # a module of configs/: its optimiser, loss and L-GMM settings
    num_classes: int
    crop: tuple[int, int]
    cpu_batch: int
    quick_batch: int


SEGMENTER_CASES = {
    "segformer_b0": SegmenterCase("segformer_b0", "ade20k_segformer_b5", 150, (128, 128), 4, 2),
    "deeplabv3plus_r50": SegmenterCase("deeplabv3plus_r50", "cityscapes_deeplabv3plus_r101", 19, (128, 128), 2, 2),
    "segformer_b5": SegmenterCase("segformer_b5", "ade20k_segformer_b5", 150, (128, 128), 2, 2),
}
SEGMENTATION_GOAL_RATIO = 1.05


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default=",".join(CASES), help=f"comma-separated, from {list(CASES)}")
    parser.add_argument("--segmenters", default="",
                        help=f"comma-separated, from {list(SEGMENTER_CASES)} (issue 14; none by default)")
    parser.add_argument("--crop", default="",
                        help="segmenters' crop as HEIGHTxWIDTH, e.g. 256x256 (default: each case's)")
    parser.add_argument("--components", type=int, default=0,
                        help="segmenters' model.num_components (0: the paper config's, 8 on ADE20K, 5 on Cityscapes)")
    parser.add_argument("--batch", type=int, default=0,
                        help="global batch for every encoder (0: per-encoder CPU default)")
    parser.add_argument("--reps", type=int, default=0,
                        help="timed train rounds per encoder, eval gets 3x (0: 10/6 quick, 15 otherwise)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="encoder compute dtype (model.dtype)")
    parser.add_argument("--memory-size", type=int, default=0,
                        help="memory bank slots per class (0: the default config's)")
    parser.add_argument("--sinkhorn-iterations", type=int, default=-1,
                        help="loss.sinkhorn_iterations override, for diagnosis (-1: the config's)")
    parser.add_argument("--imagenet-source-size", type=int, default=256, help="synthetic ImageNet image side")
    parser.add_argument("--pipeline-seconds", type=float, default=0.0,
                        help="time to read the pipeline for (0: 2 s quick, 5 s otherwise)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="peak TFLOP/s of one device for the utilisation estimate (0: look it up)")
    parser.add_argument("--diagnose", action="store_true",
                        help=f"also time L-GMM train steps {list(DIAGNOSTIC_VARIANTS)} to attribute its cost")
    parser.add_argument("--quick", action="store_true",
                        help="small batches, few rounds (under 5 min on 2 CPUs)")
    args = parser.parse_args(argv)
    args.encoders = [name.strip() for name in args.encoders.split(",") if name.strip()]
    args.segmenters = [name.strip() for name in args.segmenters.split(",") if name.strip()]
    unknown = [name for name in args.encoders if name not in CASES]
    unknown += [name for name in args.segmenters if name not in SEGMENTER_CASES]
    if unknown:
        parser.error(f"unknown encoders {unknown}; choose from {list(CASES)} / {list(SEGMENTER_CASES)}")
    if min(args.batch, args.reps, args.memory_size, args.pipeline_seconds, args.components) < 0:
        parser.error("--batch, --reps, --memory-size, --pipeline-seconds and --components must not be negative")
    args.pipeline_seconds = args.pipeline_seconds or (2.0 if args.quick else 5.0)
    if args.crop:
        try:
            args.crop = tuple(int(side) for side in args.crop.lower().split("x"))
        except ValueError:
            parser.error(f"--crop={args.crop!r} is not HEIGHTxWIDTH, e.g. 256x256")
        if len(args.crop) != 2 or min(args.crop) < 32:
            parser.error(f"--crop={args.crop} needs two sides of at least 32 pixels")
    return args


def load_config(name: str = "default"):
    """configs/<name>.py's get_config() (configs/ is not an installed package: the checkout's root goes on
    sys.path, as `python -m lgmm_jax.main` run from it has it)."""
    if str(REPOSITORY) not in sys.path:
        sys.path.insert(0, str(REPOSITORY))
    return importlib.import_module(f"configs.{name}").get_config()


def build_config(case: EncoderCase, head: str, batch: int, dtype: str, memory_size: int, sinkhorn: int):
    """The default config with this case's encoder, the head, batch, dtype (and diagnosis overrides)."""
    config = load_config()
    config.model.encoder = case.encoder
    config.model.head = head
    config.model.dtype = dtype
    config.batch_size = batch
    if memory_size:
        config.memory_size = memory_size
    if sinkhorn >= 0:
        config.loss.sinkhorn_iterations = sinkhorn
    return config


@dataclasses.dataclass
class Timed:
    """A compiled step, what it is called with, and its timings."""

    name: str
    compiled: object
    args: list
    carries_state: bool
    times: list = dataclasses.field(default_factory=list)

    def run(self) -> float:
        start = time.perf_counter()
        outputs = self.compiled(*self.args)
        jax.block_until_ready(outputs)
        elapsed = time.perf_counter() - start
        if self.carries_state:  # the train step donates its state: continue from the new one
            self.args[0] = outputs[0]
        return elapsed

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def flops(self) -> float:
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", float("nan")))


def synthetic_batch(case: EncoderCase, batch: int, mesh, seed: int = 0) -> dict:
    """A global batch of random standardised images, labels and an all-true mask, sharded as training's."""
    rng = np.random.default_rng(seed)
    local = {
        "image": rng.normal(size=(batch, case.image_size, case.image_size, 3)).astype(np.float32),
        "label": rng.integers(0, case.num_classes, size=batch).astype(np.int32),
        "mask": np.ones((batch,), bool),
    }
    return global_batch(local, mesh)


def build_steps(case: EncoderCase, head: str, batch: dict, args, batch_size: int, mesh, *,
                memory_size: int = 0, sinkhorn_iterations: int = -1, name: str = "", with_eval: bool = True):
    """(train step, eval step or None, compile seconds) of one head, built and compiled as training does.

    memory_size / sinkhorn_iterations override the config (0 / -1: the command line's, else the default
    config's); `name` prefixes the steps' names (default: the head).
    """
    config = build_config(case, head, batch_size, args.dtype, memory_size or args.memory_size,
                          sinkhorn_iterations if sinkhorn_iterations >= 0 else args.sinkhorn_iterations)
    name = name or head
    image_shape = (case.image_size, case.image_size, 3)
    model = create_model(config.model, case.num_classes)
    optimizer, _ = state_lib.create_optimizer(config, STEPS_PER_EPOCH, TOTAL_STEPS)
    train_state, shardings = state_lib.create_sharded_train_state(
        config, model, optimizer, image_shape, case.num_classes, mesh
    )
    start = time.perf_counter()
    train_step = train.make_train_step(config, model, optimizer, shardings, mesh, case.num_classes)
    compiled_train = train_step.lower(train_state, batch).compile()
    timed_eval = None
    if with_eval:
        forward = forward_lib.make_forward(model, head, mesh)
        # A copy: the train step donates (deletes) the state's buffers, the eval step keeps its own.
        variables = jax.tree.map(jnp.copy, forward_lib.model_variables(train_state))
        compiled_eval = forward.lower(variables, batch["image"]).compile()
        timed_eval = Timed(f"{name}_eval", compiled_eval, [variables, batch["image"]], carries_state=False)
    compile_s = time.perf_counter() - start
    timed_train = Timed(f"{name}_train", compiled_train, [train_state, batch], carries_state=True)
    return timed_train, timed_eval, compile_s


def time_round_robin(steps: list[Timed], reps: int) -> None:
    """One warm-up call of each, then `reps` rounds with the order rotating every round."""
    for step in steps:
        step.run()
    for rep in range(reps):
        shift = rep % len(steps)
        for step in steps[shift:] + steps[:shift]:
            step.times.append(step.run())


def pipeline_throughput(case: EncoderCase, batch_size: int, source_size: int, seconds: float) -> dict:
    """Images/s of the grain training pipeline over a synthetic in-memory source (read alone)."""
    side = case.image_size if case.preset == "cifar" else source_size
    num_images = max(4 * batch_size, 256)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(num_images, side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, case.num_classes, size=num_images)
    source = ArraySource(case.dataset, images, labels, [str(i) for i in range(case.num_classes)])
    iterator = pipeline.train_iterator(source, batch_size=batch_size, seed=0, preprocess=case.preset)
    for _ in range(2):  # warm-up: threads started, prefetch buffer filled once
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 2:
        batch = next(iterator)
        count += 1
    elapsed = time.perf_counter() - start
    assert batch["image"].shape == (batch_size, case.image_size, case.image_size, 3), batch["image"].shape
    return {
        "source_image_side": side,
        "batches": count,
        "images_per_s": round(count * batch_size / elapsed, 1),
    }


def peak_flops(device, dtype: str, override_tflops: float) -> float | None:
    """Peak FLOP/s of one device: the flag, else the table, else None (no utilisation estimate).

    XLA's cost analysis counts the FLOPs of the per-device program, so utilisation is per device.
    """
    if override_tflops > 0:
        return override_tflops * 1e12
    for name, peaks in PEAK_FLOPS.items():
        if name.lower() in device.device_kind.lower():
            return peaks[dtype]
    return None


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def default_rounds(case: EncoderCase, quick: bool) -> int:
    """Timed train rounds: as many as fit the quick budget (an eval step is ~5x cheaper: 3x its rounds)."""
    if quick:
        return 6 if case.image_size > 64 else 10
    return 15


def step_entry(step: Timed, batch_size: int, peak: float | None) -> dict:
    entry = {
        "median_ms": round(1000 * step.median_s, 2),
        "min_ms": round(1000 * min(step.times), 2),
        "images_per_s": round(batch_size / step.median_s, 1),
        "gflop_per_step": round(step.flops / 1e9, 3),
    }
    if peak:
        entry["model_flops_utilisation"] = round(step.flops / step.median_s / peak, 4)
    return entry


def head_ratios(built: dict[str, Timed]) -> dict:
    """L-GMM / softmax for the train and eval steps: ratio of medians, median of the per-round ratios,
    ratio of the minima, FLOP ratio."""
    ratios = {}
    for kind in ("train", "eval"):
        lgmm, softmax = built[f"lgmm_{kind}"], built[f"softmax_{kind}"]
        ratios[f"{kind}_step_ratio"] = round(lgmm.median_s / softmax.median_s, 4)
        paired = [a / b for a, b in zip(lgmm.times, softmax.times)]
        ratios[f"{kind}_step_ratio_paired_median"] = round(statistics.median(paired), 4)
        ratios[f"{kind}_step_ratio_of_minima"] = round(min(lgmm.times) / min(softmax.times), 4)
        ratios[f"{kind}_flop_ratio"] = round(lgmm.flops / softmax.flops, 4)
    return ratios


def print_ratios(r: dict, goal: float) -> None:
    for kind in ("train", "eval"):
        ratio = r[f"{kind}_step_ratio"]
        verdict = "meets" if ratio <= goal else f"misses by {100 * (ratio / goal - 1):.1f}%"
        print(f"{kind} ratio L-GMM/softmax {ratio:.3f} "
              f"(paired median {r[f'{kind}_step_ratio_paired_median']:.3f}, "
              f"of minima {r[f'{kind}_step_ratio_of_minima']:.3f}, "
              f"FLOP ratio {r[f'{kind}_flop_ratio']:.3f}): {verdict} the {goal} goal", flush=True)


def benchmark_encoder(case: EncoderCase, args, mesh, peak: float | None, log) -> dict:
    """Both heads' train and eval steps (and with --diagnose, L-GMM variants), interleaved; the pipeline."""
    batch_size = args.batch or (case.quick_batch if args.quick else case.cpu_batch)
    check_batch_size(batch_size, mesh.devices.size)
    reps = args.reps or default_rounds(case, args.quick)
    batch = synthetic_batch(case, batch_size, mesh)
    built, compile_s = {}, {}
    for head in HEADS:
        train_step, eval_step, compile_s[head] = build_steps(case, head, batch, args, batch_size, mesh)
        built[f"{head}_train"], built[f"{head}_eval"] = train_step, eval_step
        log(f"{case.encoder}: {head} state built and steps compiled ({compile_s[head]:.0f} s compiling)")
    diagnostics = []
    if args.diagnose:
        for name, overrides in DIAGNOSTIC_VARIANTS.items():
            train_step, _, compile_s[name] = build_steps(
                case, "lgmm", batch, args, batch_size, mesh, name=name, with_eval=False, **overrides
            )
            diagnostics.append(train_step)
            log(f"{case.encoder}: diagnostic {name} built ({overrides})")
    train_steps = [built["lgmm_train"], built["softmax_train"], *diagnostics]
    eval_steps = [built["lgmm_eval"], built["softmax_eval"]]
    time_round_robin(train_steps, reps)
    log(f"{case.encoder}: {reps} train rounds timed")
    time_round_robin(eval_steps, 3 * reps)
    log(f"{case.encoder}: {3 * reps} eval rounds timed")

    result = {"num_classes": case.num_classes, "image_size": case.image_size, "batch": batch_size,
              "train_rounds": reps, "eval_rounds": 3 * reps,
              "compile_s": {name: round(seconds, 1) for name, seconds in compile_s.items()},
              "steps": {step.name: step_entry(step, batch_size, peak) for step in train_steps + eval_steps}}
    result.update(head_ratios(built))
    if diagnostics:
        softmax_s = built["softmax_train"].median_s
        overhead_s = built["lgmm_train"].median_s - softmax_s
        result["diagnosis"] = {
            step.name: {
                "ratio_to_softmax": round(step.median_s / softmax_s, 4),
                "paired_median_ratio": round(statistics.median(
                    [a / b for a, b in zip(step.times, built["softmax_train"].times)]), 4),
                "removes_ms": round(1000 * (built["lgmm_train"].median_s - step.median_s), 1),
                "share_of_lgmm_overhead": (
                    round((built["lgmm_train"].median_s - step.median_s) / overhead_s, 3)
                    if overhead_s > 0 else None
                ),
            }
            for step in diagnostics
        }
    result["pipeline"] = pipeline_throughput(
        case, batch_size, args.imagenet_source_size, args.pipeline_seconds
    )
    log(f"{case.encoder}: pipeline read for {args.pipeline_seconds:.0f} s")
    consumed = max(result["steps"][f"{head}_train"]["images_per_s"] for head in HEADS)
    result["pipeline"]["train_step_images_per_s"] = consumed
    result["pipeline"]["headroom"] = round(result["pipeline"]["images_per_s"] / consumed, 2)
    return result


def print_encoder(name: str, r: dict) -> None:
    print(f"\n{name}: C={r['num_classes']} {r['image_size']}x{r['image_size']} batch {r['batch']}, "
          f"{r['train_rounds']}/{r['eval_rounds']} train/eval rounds, compile s {r['compile_s']}")
    print(f"{'step':22s} {'median ms':>10s} {'min ms':>9s} {'img/s':>9s} {'GFLOP':>9s} {'MFU':>7s}")
    for step, e in r["steps"].items():
        mfu = f"{e['model_flops_utilisation']:.1%}" if "model_flops_utilisation" in e else "n/a"
        print(f"{step:22s} {e['median_ms']:10.1f} {e['min_ms']:9.1f} {e['images_per_s']:9.1f} "
              f"{e['gflop_per_step']:9.2f} {mfu:>7s}")
    print_ratios(r, GOAL_RATIO)
    for name, d in r.get("diagnosis", {}).items():
        print(f"diagnosis {name}: x{d['ratio_to_softmax']:.3f} of softmax "
              f"(paired {d['paired_median_ratio']:.3f}), "
              f"removes {d['removes_ms']} ms = {d['share_of_lgmm_overhead']} of L-GMM's extra time")
    p = r["pipeline"]
    print(f"pipeline ({p['source_image_side']}px source): {p['images_per_s']:.0f} img/s vs train step "
          f"{p['train_step_images_per_s']:.0f} img/s: headroom x{p['headroom']}", flush=True)


# --- Segmenters (issue 14) -----------------------------------------------------------------------------


def segmentation_batch(case: SegmenterCase, batch: int, mesh, seed: int = 0) -> dict:
    """Random standardised images and labels with a tenth of the pixels void (255), sharded."""
    rng = np.random.default_rng(seed)
    shape = (batch, *case.crop)
    labels = rng.integers(0, case.num_classes, size=shape)
    labels = np.where(rng.random(shape) < 0.1, 255, labels).astype(np.int32)
    local = {"image": rng.normal(size=(*shape, 3)).astype(np.float32), "label": labels,
             "mask": np.ones((batch,), bool)}  # as training's batches (never padded)
    return global_batch(local, mesh)


def segmentation_eval_step(variables, images, *, model):
    """Scores at 1/4, upsampled to the image, argmax (prediction) and max (confidence or likelihood)."""
    scores = resize_bilinear(model.apply(variables, images, train=False), images.shape[1:3])
    return jnp.argmax(scores, axis=-1), jnp.max(scores, axis=-1)


def segmentation_config(case: SegmenterCase, head: str, batch: int, dtype: str, components: int = 0):
    """The case's paper config with its segmenter, the head, batch, dtype, crop (and K when not 0)."""
    config = load_config(case.config)
    config.model.encoder = case.name
    config.model.head = head
    config.model.dtype = dtype
    config.batch_size = batch
    config.segmentation.crop_size = case.crop
    if components:
        config.model.num_components = components
    return config


def build_segmentation_steps(case: SegmenterCase, head: str, batch: dict, args, batch_size: int, mesh):
    """(train step, eval step, compile seconds) of one head, built and compiled as segmentation training does."""
    config = segmentation_config(case, head, batch_size, args.dtype, args.components)
    model = create_model(config.model, case.num_classes)
    optimizer, _ = state_lib.create_optimizer(config, STEPS_PER_EPOCH, TOTAL_STEPS)
    train_state, shardings = state_lib.create_sharded_train_state(
        config, model, optimizer, (*case.crop, 3), case.num_classes, mesh
    )
    start = time.perf_counter()
    train_step = train.make_train_step(config, model, optimizer, shardings, mesh, case.num_classes)
    compiled_train = train_step.lower(train_state, batch).compile()
    variables = jax.tree.map(jnp.copy, forward_lib.model_variables(train_state))
    forward = jax.jit(functools.partial(segmentation_eval_step, model=model))
    compiled_eval = forward.lower(variables, batch["image"]).compile()
    compile_s = time.perf_counter() - start
    return (Timed(f"{head}_train", compiled_train, [train_state, batch], carries_state=True),
            Timed(f"{head}_eval", compiled_eval, [variables, batch["image"]], carries_state=False),
            compile_s)


def benchmark_segmenter(case: SegmenterCase, args, mesh, log) -> dict:
    """Both heads' train and eval steps on the same segmenter, interleaved (as `benchmark_encoder`)."""
    batch_size = args.batch or (case.quick_batch if args.quick else case.cpu_batch)
    check_batch_size(batch_size, mesh.devices.size)
    reps = args.reps or (6 if args.quick else 12)
    if args.crop:
        case = dataclasses.replace(case, crop=args.crop)
    batch = segmentation_batch(case, batch_size, mesh)
    built, compile_s = {}, {}
    for head in HEADS:
        built[f"{head}_train"], built[f"{head}_eval"], compile_s[head] = build_segmentation_steps(
            case, head, batch, args, batch_size, mesh)
        log(f"{case.name}: {head} steps compiled ({compile_s[head]:.0f} s)")
    train_steps = [built["lgmm_train"], built["softmax_train"]]
    eval_steps = [built["lgmm_eval"], built["softmax_eval"]]
    time_round_robin(train_steps, reps)
    time_round_robin(eval_steps, 3 * reps)
    log(f"{case.name}: {reps} train and {3 * reps} eval rounds timed")
    components = args.components or load_config(case.config).model.num_components
    result = {"num_classes": case.num_classes, "components": components, "crop": list(case.crop), "batch": batch_size,
              "train_rounds": reps, "eval_rounds": 3 * reps,
              "compile_s": {name: round(seconds, 1) for name, seconds in compile_s.items()},
              "steps": {step.name: step_entry(step, batch_size, None) for step in train_steps + eval_steps}}
    return result | head_ratios(built)


def print_segmenter(name: str, r: dict) -> None:
    print(f"\n{name}: C={r['num_classes']} K={r['components']} crop {r['crop'][0]}x{r['crop'][1]} batch {r['batch']}, "
          f"{r['train_rounds']}/{r['eval_rounds']} train/eval rounds, compile s {r['compile_s']}")
    print(f"{'step':22s} {'median ms':>10s} {'min ms':>9s} {'img/s':>9s} {'GFLOP':>9s}")
    for step, e in r["steps"].items():
        print(f"{step:22s} {e['median_ms']:10.1f} {e['min_ms']:9.1f} {e['images_per_s']:9.1f} "
              f"{e['gflop_per_step']:9.2f}")
    print_ratios(r, SEGMENTATION_GOAL_RATIO)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = jax.devices()[0]
    mesh = make_mesh()
    peak = peak_flops(device, args.dtype, args.peak_tflops)
    config = load_config()
    memory_size = args.memory_size or config.memory_size
    sinkhorn = args.sinkhorn_iterations if args.sinkhorn_iterations >= 0 else config.loss.sinkhorn_iterations
    print(f"device: {device.platform} {device.device_kind} (x{jax.device_count()}), dtype {args.dtype}, "
          f"peak {'%.0f TFLOP/s' % (peak / 1e12) if peak else 'unknown (MFU n/a; pass --peak-tflops)'}; "
          f"L-GMM memory {memory_size} per class, {sinkhorn} Sinkhorn iterations", flush=True)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    results = {name: benchmark_encoder(CASES[name], args, mesh, peak, log) for name in args.encoders}
    segmenters = {
        name: benchmark_segmenter(SEGMENTER_CASES[name], args, mesh, log) for name in args.segmenters
    }
    for name, r in results.items():
        print_encoder(name, r)
    for name, r in segmenters.items():
        print_segmenter(name, r)
    summary = {
        "device": f"{device.platform} {device.device_kind}",
        "device_count": jax.device_count(),
        "dtype": args.dtype,
        "memory_size": memory_size,
        "sinkhorn_iterations": sinkhorn,
        "goal_ratio": GOAL_RATIO,
        "train_step_ratio": {name: r["train_step_ratio"] for name, r in results.items()},
        "eval_step_ratio": {name: r["eval_step_ratio"] for name, r in results.items()},
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    for kind in ("train", "eval"):
        if results:
            summary[f"{kind}_step_ratio"]["overall"] = round(
                geometric_mean(r[f"{kind}_step_ratio"] for r in results.values()), 4
            )
    summary["goal_met"] = all(
        ratio <= GOAL_RATIO for k in ("train", "eval") for ratio in summary[f"{k}_step_ratio"].values()
    )
    if segmenters:
        summary["segmentation"] = {
            "goal_ratio": SEGMENTATION_GOAL_RATIO,
            "train_step_ratio": {name: r["train_step_ratio"] for name, r in segmenters.items()},
            "eval_step_ratio": {name: r["eval_step_ratio"] for name, r in segmenters.items()},
            "goal_met": all(r[f"{k}_step_ratio"] <= SEGMENTATION_GOAL_RATIO
                            for r in segmenters.values() for k in ("train", "eval")),
            "results": segmenters,
        }
        summary["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
