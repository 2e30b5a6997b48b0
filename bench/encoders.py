"""Forward + backward throughput of the image encoders on this machine.

Each encoder gets a 10-way classifier head, its usual input size (`backbones.default_input_shape`), random
images and labels, and a jitted `jax.value_and_grad` of the softmax cross-entropy in training mode
(BatchNorm batch statistics, Swin stochastic depth). The first call (compilation) is timed separately; the
next `--steps` calls give images per second.

    python bench/encoders.py                                    # quick subset, a couple of minutes on CPU
    python bench/encoders.py --encoders resnet50,swin_t --batch 64 --steps 20 --dtype bfloat16

Prints one line per encoder, then a JSON object with every result as the last line.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgmm_jax.models import backbones

DEFAULT_ENCODERS = "small_cnn,cifar_resnet18,cifar_swin_t"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default=DEFAULT_ENCODERS,
                        help=f"comma-separated names from: {', '.join(backbones.BACKBONE_NAMES)}")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the compiling one")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute dtype")
    parser.add_argument("--num-classes", type=int, default=10)
    args = parser.parse_args(argv)
    args.encoders = [name.strip() for name in args.encoders.split(",") if name.strip()]
    unknown = [name for name in args.encoders if name not in backbones.BACKBONE_NAMES]
    if unknown:
        parser.error(f"unknown encoders {unknown}; choose from {', '.join(backbones.BACKBONE_NAMES)}")
    if args.batch < 1 or args.steps < 1:
        parser.error("--batch and --steps must be at least 1")
    return args


def make_train_gradient(model):
    """Jitted (loss, new batch stats, grads) of the mean cross-entropy in training mode."""

    def loss_fn(params, batch_stats, images, labels, dropout_key):
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        logits, updates = model.apply(
            variables, images, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates.get("batch_stats", {})

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


def benchmark_encoder(name: str, batch: int, steps: int, dtype, num_classes: int) -> dict:
    """Compile time and steady-state forward+backward images/s of one encoder."""
    input_shape = backbones.default_input_shape(name)
    model = backbones.create_classifier(name, num_classes, dtype=dtype)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(batch, *input_shape)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, num_classes, size=batch))
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), images)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    gradient = make_train_gradient(model)

    start = time.perf_counter()
    (loss, batch_stats), grads = gradient(params, batch_stats, images, labels, jax.random.key(1))
    jax.block_until_ready(grads)
    compile_s = time.perf_counter() - start

    start = time.perf_counter()
    for step in range(steps):
        (loss, batch_stats), grads = gradient(
            params, batch_stats, images, labels, jax.random.key(2 + step)
        )
    jax.block_until_ready((loss, grads))
    step_s = (time.perf_counter() - start) / steps
    return {
        "input_shape": list(input_shape),
        "parameters": int(sum(leaf.size for leaf in jax.tree.leaves(params))),
        "compile_s": round(compile_s, 2),
        "step_ms": round(1000 * step_s, 2),
        "images_per_s": round(batch / step_s, 1),
        "loss_finite": bool(np.isfinite(loss)),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} (x{jax.device_count()}), "
          f"batch {args.batch}, steps {args.steps}, dtype {args.dtype}", flush=True)
    results = {}
    for name in args.encoders:
        results[name] = benchmark_encoder(name, args.batch, args.steps, DTYPES[args.dtype], args.num_classes)
        r = results[name]
        print(f"{name:16s} {'x'.join(map(str, r['input_shape'])):10s} {r['images_per_s']:10.1f} img/s "
              f"{r['step_ms']:9.1f} ms/step  compile {r['compile_s']:.1f} s", flush=True)
    print(json.dumps({
        "device": f"{device.platform} {device.device_kind}",
        "device_count": jax.device_count(),
        "batch": args.batch,
        "steps": args.steps,
        "dtype": args.dtype,
        "results": results,
    }))


if __name__ == "__main__":
    main()
