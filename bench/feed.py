"""The paper configs' train step on this machine's devices, fed by the library's input pipeline and by
batches already on the devices: images/s, the input-wait share and the step's FLOP utilisation.

For each config of `--configs` the data is written as bench/input.py writes it (ImageNet-like JPEGs,
CIFAR-like PNGs, ADE20K-like and Cityscapes-like pairs; `FEEDS` says which a config reads) and read as the
library reads it (`imagefolder=`, ADE20K's layout, `segfolder=`). The model, optimiser, train state and
jitted step are the config's, built as training builds them (`heads.create_model`, `state.create_optimizer`,
`state.create_sharded_train_state`, `train.make_train_step`), with the paper dataset's class count
(`FEEDS`) whatever the written data holds; the stream is the config's task's training stream
(`experiment.train_stream`: its preset, `data.workers` and `data.threads`, uint8 images normalised on the
devices where the preset allows). Then, after one step that compiles:

- resident: one batch of the stream, on the devices, stepped `--steps` times (the devices' own rate);
- fed: `--steps` steps on the stream's next batches, as `train.run_steps` feeds them (the next batch is
  read and copied while the devices run the step dispatched before): images/s and `input_wait`, the
  share of the time spent waiting for batches (`train.step_inputs` + `global_batch`), as metrics.jsonl
  logs it;
- XLA's FLOPs of one step (`cost_analysis` of the compiled step, per device) and the utilisation of the
  device's peak at the resident and fed rates (`bench/speed.py`'s `PEAK_FLOPS` by device kind; none on
  a CPU).

    python bench/feed.py                                     # on an accelerator: every config of FEEDS
    python bench/feed.py --configs imagenet_resnet50 --steps 50 --batch_size 256
    python bench/feed.py --tiny --steps 2                    # on a CPU: small models, small data (tests)

The last printed line is one JSON object with every number.
"""

# No `from __future__ import annotations`: tests load this script as a module that is not in sys.modules.
import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # configs/ is read from the checkout, as `python -m lgmm_jax.main` does
    sys.path.insert(0, str(REPOSITORY))

from lgmm_jax import heads  # noqa: E402
from lgmm_jax.data.settings import workers_for  # noqa: E402
from lgmm_jax.runtime.sharding import global_batch, make_mesh  # noqa: E402
from lgmm_jax.training import experiment, state, train  # noqa: E402


def load_script(name: str):
    """bench/<name>.py as a module (bench/ is a folder of scripts), registered in sys.modules as dataclasses
    with string annotations need."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPOSITORY / "bench" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


input_bench = load_script("input")
speed_bench = load_script("speed")


@dataclasses.dataclass(frozen=True)
class Feed:
    """A paper config, the bench/input.py path whose files it reads, its dataset's class count and the batch
    one device takes by default."""

    config: str
    path: str
    num_classes: int
    batch_size: int


FEEDS = {
    feed.config: feed for feed in (
        Feed("imagenet_resnet50", "imagenet", 1000, 256),
        Feed("imagenet_swin_b", "imagenet_swin", 1000, 128),
        Feed("cifar100", "cifar", 100, 128),
        Feed("ade20k_segformer_b5", "ade20k_512", 150, 8),
        Feed("cityscapes_deeplabv3plus_r101", "cityscapes_769", 19, 8),
    )
}
# --tiny: what makes each config small enough for a CPU (the pipeline and the step stay the config's).
TINY_ENCODERS = {"imagenet": "small_cnn", "cifar": "small_cnn"}
TINY_SEGFORMER = {"widths": (8, 16, 40, 64), "depths": (1, 1, 1, 1), "decoder_width": 16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(FEEDS), help=f"comma-separated, from {list(FEEDS)}")
    parser.add_argument("--workdir", default="", help="folder for the data (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each measurement")
    parser.add_argument("--batch_size", type=int, default=0, help="global batch (0: FEEDS' per device x devices)")
    parser.add_argument("--workers", type=int, default=-1, help="data.workers (-1: the library's default)")
    parser.add_argument("--num_images", type=int, default=512, help="images written per classification data set")
    parser.add_argument("--peak_tflops", type=float, default=0.0, help="the device's peak (0: bench/speed.py's table)")
    parser.add_argument("--tiny", action="store_true", help="small encoders, crops and data: a CPU check")
    args = parser.parse_args(argv)
    args.configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    if not args.configs or any(name not in FEEDS for name in args.configs):
        parser.error(f"--configs: choose from {list(FEEDS)}")
    if args.steps < 1 or args.batch_size < 0 or args.num_images < 1:
        parser.error("--steps and --num_images must be at least 1, --batch_size at least 0")
    return args


def feed_config(feed: Feed, args, num_devices: int):
    """The paper config with the measured batch and workers; with `--tiny` a small encoder and crop."""
    config = input_bench.load_config(feed.config)
    config.batch_size = args.batch_size or feed.batch_size * num_devices
    if args.workers >= 0:
        config.data.workers = args.workers
    if args.tiny:
        if input_bench.PATHS[feed.path].kind == "segmentation":
            config.model.encoder = "segformer_b0"
            config.model.decoder = TINY_SEGFORMER
            config.segmentation.crop_size = (64, 64)
            config.segmentation.scale = (128, 64)
        else:
            config.model.encoder = TINY_ENCODERS[input_bench.PATHS[feed.path].data]
            config.model.dtype = "float32"
    return config


def written_data(workdir: pathlib.Path, paths: list[str], args, batch_size: int) -> None:
    """bench/input.py's data for `paths` in `workdir` (reused when it is there with the same settings)."""
    sizes = ["--ade20k_size=128x171", "--cityscapes_size=128x256"] if args.tiny else []
    input_args = input_bench.parse_args([f"--paths={','.join(paths)}", f"--num_images={args.num_images}",
                                         f"--batch_size={batch_size}", "--no-torch", *sizes])
    input_bench.prepare_data(workdir, input_args, log=lambda line: print(line, file=sys.stderr, flush=True))


def timed_steps(step, train_state, next_batch, steps: int):
    """(state, seconds, seconds waiting) of `steps` steps, each on `next_batch()`, as the train loop runs them
    (a step is dispatched and the next batch is read while the devices compute)."""
    waited = 0.0
    started = time.perf_counter()
    for _ in range(steps):
        waiting = time.perf_counter()
        batch = next_batch()
        waited += time.perf_counter() - waiting
        train_state, metrics = step(train_state, batch)
    jax.block_until_ready((train_state, metrics))
    return train_state, time.perf_counter() - started, waited


def utilisation(flops: float, seconds_per_step: float, peak: float | None) -> float | None:
    return round(flops / seconds_per_step / peak, 4) if peak and np.isfinite(flops) else None


def measure(feed: Feed, workdir: pathlib.Path, args, mesh) -> dict:
    """The resident and fed rates of one config's train step (see the module docstring)."""
    config = feed_config(feed, args, mesh.devices.size)
    config = experiment.check_config(config, mesh.devices.size, jax.process_count())
    protocol = experiment.resolve_protocol(config)
    source = input_bench.library_source(input_bench.PATHS[feed.path], workdir, args)
    config = experiment.resolved_data(config, protocol, source)  # a folder's image size, as a run resolves it
    num_classes = max(feed.num_classes, source.num_classes)
    image_shape = experiment.model_input_shape(config, protocol, source)
    model = heads.create_model(config.model, num_classes)
    optimizer, _ = state.create_optimizer(config, steps_per_epoch=1000, total_steps=100_000)
    train_state, shardings = state.create_sharded_train_state(config, model, optimizer, image_shape, num_classes, mesh)
    step = train.make_train_step(config, model, optimizer, shardings, mesh, num_classes)
    stream = experiment.train_stream(config, protocol, source)
    try:
        def next_batch():
            return global_batch(train.step_inputs(next(stream))[0], mesh)

        resident_batch = next_batch()
        step = step.lower(train_state, resident_batch).compile()  # stepped as compiled here: compiled once
        cost = step.cost_analysis()
        flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", float("nan")))
        train_state, _, _ = timed_steps(step, train_state, lambda: resident_batch, 1)  # the first run's set-up
        train_state, resident_s, _ = timed_steps(step, train_state, lambda: resident_batch, args.steps)
        train_state, fed_s, waited = timed_steps(step, train_state, next_batch, args.steps)
    finally:
        if hasattr(stream, "close"):
            stream.close()
    peak = speed_bench.peak_flops(jax.devices()[0], config.model.dtype, args.peak_tflops)
    images = args.steps * config.batch_size
    return {
        "encoder": config.model.encoder, "head": config.model.head, "dtype": config.model.dtype,
        "batch_size": config.batch_size, "image_shape": list(image_shape), "num_classes": num_classes,
        "workers": workers_for(config, source), "steps": args.steps,
        "resident_images_per_s": round(images / resident_s, 1),
        "fed_images_per_s": round(images / fed_s, 1),
        "fed_over_resident": round(resident_s / fed_s, 3),
        "input_wait": round(waited / fed_s, 3),
        "gflop_per_step": round(flops / 1e9, 3),
        "resident_flops_utilisation": utilisation(flops, resident_s / args.steps, peak),
        "fed_flops_utilisation": utilisation(flops, fed_s / args.steps, peak),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    mesh = make_mesh()
    device = jax.devices()[0]
    print(f"{jax.device_count()} x {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = pathlib.Path(args.workdir or scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        feeds = [FEEDS[name] for name in args.configs]
        batch = max(args.batch_size or feed.batch_size * mesh.devices.size for feed in feeds)
        written_data(workdir, sorted({feed.path for feed in feeds}), args, batch)
        results = {}
        for feed in feeds:
            results[feed.config] = row = measure(feed, workdir, args, mesh)
            print(f"{feed.config:32s} {row['encoder']}/{row['head']} {row['dtype']} batch {row['batch_size']}: "
                  f"resident {row['resident_images_per_s']} img/s, fed {row['fed_images_per_s']} img/s "
                  f"({row['workers']} workers, input wait {row['input_wait']:.0%}), "
                  f"{row['gflop_per_step']} GFLOP/step, utilisation {row['resident_flops_utilisation']} / "
                  f"{row['fed_flops_utilisation']}", flush=True)
    summary = {"device": device.device_kind, "platform": device.platform, "devices": jax.device_count(),
               "results": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
