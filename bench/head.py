"""Forward + backward cost of the GMM density head against a linear softmax head, on the same latents.

For each class count C the L-GMM head is timed as training runs it: one jitted `jax.value_and_grad` of
`lgmm_jax.method.objective.lgmm_objective` (L_D + L_G, Eq. 5-7; its settings are `heads.lgmm.objective_config` of
configs/default.py, as in training) with respect to the latents z and the head's
parameters (means, raw scales), with a full class-conditional memory bank of M latents per class that is
updated in place (donated, as the train step donates its state). The counterpart is a `flax.linen.Dense(C)`
on the same latents with `lgmm_jax.method.losses.softmax_cross_entropy`, differentiated w.r.t. z and the Dense
parameters. Both return what the train step consumes (the objective's outputs; the logits).

To attribute the cost, the same objective is also timed with one bank slot per class (M=1: the bank is
almost free), with `sinkhorn_iterations=0`, with `assignment="posterior"` (no Sinkhorn at all), and the
discriminative part alone (`gmm.log_likelihood` + `losses.discriminative_loss`, gradient w.r.t. z only:
what the encoder receives). All variants run interleaved, round-robin, in one process, so machine noise
hits them alike; times are medians over the repetitions, ratios are median(variant) / median(linear).

Memory comes from XLA's compiled memory analysis (`jax.jit(f).lower(...).compile().memory_analysis()`):
`temp` is the scratch the compiled program allocates beyond its inputs and outputs (intermediates,
including what the backward pass keeps from the forward pass); `argument` and `output` are the input and
output buffers (here dominated by the bank [C, M, D]); `alias` is output memory that reuses a donated
input (the bank, written in place); `total` = argument + output - alias + temp bounds what the call holds
at once. These are buffer-assignment sizes of the compiled program, not measured process memory. (XLA's
`peak_memory_in_bytes` is kept in the JSON; on the CPU backend it comes out below `temp`, so the table
does not use it.)

    python bench/head.py --quick            # ~1.5 min on 2 CPU cores
    python bench/head.py --pieces           # 30 reps, B sweep 64/256/1024, building blocks: ~2 min
    python bench/head.py --classes 1000 --memory 2000 --memory-batches ''   # the ImageNet config's bank

Prints a table per class count, then a JSON object with every number as the last line. The goal (issue 2):
at C=1000 the L-GMM head's forward+backward takes at most 3x the linear head's, and its memory grows
linearly in B*C*K (no [B, C*K, D] tensor).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lgmm_jax.method import losses, mixture
from lgmm_jax.heads import lgmm as heads_lgmm
from lgmm_jax.method.memory import MemoryBank, update_memory
from lgmm_jax.models.gmm import GMMHead, component_log_prob, head_gaussians, log_likelihood
from lgmm_jax.models.lgmm import l2_normalize
from lgmm_jax.method.objective import ObjectiveConfig, lgmm_objective

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"
GOAL_RATIO_AT_1000 = 3.0
LINEAR = "linear"
LGMM = "lgmm"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="10,100,1000", help="comma-separated class counts C")
    parser.add_argument("--components", type=int, default=3, help="K components per class")
    parser.add_argument("--dim", type=int, default=128, help="latent dimension D")
    parser.add_argument("--batch", type=int, default=256, help="latents per step B")
    parser.add_argument("--memory", type=int, default=200, help="bank slots per class M")
    parser.add_argument("--reps", type=int, default=30, help="timed round-robin repetitions")
    parser.add_argument("--memory-batches", default="64,256,1024",
                        help="batch sizes of the compile-only memory sweep ('' to skip)")
    parser.add_argument("--pieces", action="store_true",
                        help="also time the objective's building blocks (library functions) one by one")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller memory sweep")
    args = parser.parse_args(argv)
    args.classes = [int(c) for c in args.classes.split(",") if c.strip()]
    args.memory_batches = [int(b) for b in args.memory_batches.split(",") if b.strip()]
    if args.quick:
        args.reps = min(args.reps, 12)
        args.memory_batches = [b for b in args.memory_batches if b <= 256]
    if min(args.classes + [args.components, args.dim, args.batch, args.memory, args.reps]) < 1:
        parser.error("--classes, --components, --dim, --batch, --memory and --reps must be positive")
    return args


def training_objective(num_components: int) -> ObjectiveConfig:
    """The objective exactly as training configures it: `heads.lgmm.objective_config` of configs/default.py."""
    spec = importlib.util.spec_from_file_location("lgmm_default_config", DEFAULT_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # configs/ is not an installed package: load it by path
    config = module.get_config()
    config.model.num_components = num_components
    return heads_lgmm.objective_config(config)


def filled_bank(key, means: jax.Array, capacity: int) -> MemoryBank:
    """A full bank [C, M, D]: unit latents scattered around their class's means, every slot valid."""
    num_classes, num_components, dim = means.shape
    pick_key, noise_key = jax.random.split(key)
    component = jax.random.randint(pick_key, (num_classes, capacity), 0, num_components)
    centre = jnp.take_along_axis(means, component[..., None], axis=1)
    latents = l2_normalize(centre + 0.1 * jax.random.normal(noise_key, centre.shape))
    return MemoryBank(
        latents=latents,
        valid=jnp.ones((num_classes, capacity), bool),
        write_index=jnp.zeros((num_classes,), jnp.int32),
    )


@dataclasses.dataclass
class Problem:
    """One class count's inputs: latents, labels, the GMM head's and the Dense head's parameters."""

    z: jax.Array
    labels: jax.Array
    mask: jax.Array
    gmm_params: dict
    log_weights: jax.Array
    dense_params: dict
    means: jax.Array


def make_problem(num_classes: int, num_components: int, dim: int, batch: int, seed: int = 0) -> Problem:
    key = jax.random.key(seed)
    head_key, dense_key, label_key, noise_key = jax.random.split(key, 4)
    head = GMMHead(num_classes=num_classes, num_components=num_components, latent_dim=dim)
    variables = head.init(head_key, jnp.zeros((1, dim)))
    labels = jax.random.randint(label_key, (batch,), 0, num_classes)
    means = variables["params"]["means"]
    z = l2_normalize(means[labels, 0] + 0.1 * jax.random.normal(noise_key, (batch, dim)))
    dense_params = nn.Dense(num_classes).init(dense_key, jnp.zeros((1, dim)))["params"]
    return Problem(z, labels, jnp.ones((batch,), bool), variables["params"],
                   variables["mixture"]["log_weights"], dense_params, means)


def lgmm_gradient(objective: ObjectiveConfig):
    """Jitted value_and_grad of the collaborative objective w.r.t. (z, head params); the bank is donated."""

    def loss(z, head_params, labels, mask, log_weights, memory):
        return lgmm_objective(z, labels, mask, head_params, log_weights, memory, objective)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), donate_argnums=5)


def discriminative_gradient(objective: ObjectiveConfig):
    """Jitted value_and_grad of L_D alone w.r.t. z (theta fixed): the bank-free part the encoder sees."""

    def loss(z, head_params, labels, mask, log_weights):
        means, scales = head_gaussians(head_params, objective.scale_floor, objective.num_components)
        class_log_likelihood = log_likelihood(z, means, scales, log_weights, objective.reduction)
        return losses.discriminative_loss(class_log_likelihood, labels, mask), class_log_likelihood

    return jax.jit(jax.value_and_grad(loss, argnums=0, has_aux=True))


def linear_gradient(num_classes: int):
    """Jitted value_and_grad of softmax cross-entropy of Dense(C)(z) w.r.t. (z, Dense params)."""
    dense = nn.Dense(num_classes)

    def loss(z, params, labels, mask):
        logits = dense.apply({"params": params}, z)
        return losses.softmax_cross_entropy(logits, labels, mask), logits

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


class Runner:
    """A compiled variant and how to call it once; a variant with a bank feeds the updated bank back."""

    def __init__(self, name: str, compiled, args: tuple, bank_index: int | None = None):
        self.name, self.compiled, self.args, self.bank_index = name, compiled, list(args), bank_index
        self.times: list[float] = []

    def step(self) -> float:
        start = time.perf_counter()
        (value, aux), grads = self.compiled(*self.args)
        jax.block_until_ready((value, aux, grads))
        elapsed = time.perf_counter() - start
        if self.bank_index is not None:
            self.args[self.bank_index] = aux.memory
        return elapsed


def memory_stats(compiled) -> dict:
    m = compiled.memory_analysis()
    return {
        "temp_bytes": int(m.temp_size_in_bytes),
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
        "xla_peak_bytes": int(getattr(m, "peak_memory_in_bytes", 0)),
        "total_bytes": int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                           + m.temp_size_in_bytes),
    }


def flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def build_runners(problem: Problem, num_classes: int, num_components: int, capacity: int) -> list[Runner]:
    """Every variant compiled for one class count, linear head first."""
    base = training_objective(num_components)
    p = problem
    linear_args = (p.z, p.dense_params, p.labels, p.mask)
    runners = [Runner(LINEAR, *_compile(linear_gradient(num_classes), linear_args))]
    lgmm_variants = [
        (LGMM, base, capacity),
        ("lgmm_bank_M1", base, 1),
        ("lgmm_sinkhorn0", dataclasses.replace(base, sinkhorn_iterations=0), capacity),
        ("lgmm_posterior", dataclasses.replace(base, assignment="posterior"), capacity),
    ]
    for name, objective, slots in lgmm_variants:
        bank = filled_bank(jax.random.key(1), p.means, slots)
        args = (p.z, p.gmm_params, p.labels, p.mask, p.log_weights, bank)
        runners.append(Runner(name, *_compile(lgmm_gradient(objective), args), bank_index=5))
    args = (p.z, p.gmm_params, p.labels, p.mask, p.log_weights)
    runners.append(Runner("ld_only", *_compile(discriminative_gradient(base), args)))
    return runners


def _compile(jitted, args):
    compiled = jitted.lower(*args).compile()
    return compiled, args


def build_piece_runners(problem: Problem, capacity: int, num_components: int) -> list[Runner]:
    """The objective's building blocks, each jitted alone, to see where the L-GMM head's time goes.

    Each piece is the library function the objective calls, on the same shapes: the bank write, the
    own-class log-densities of every remembered latent (forward, and forward+backward through the soft
    usage into L_avg: the bank's path to the Gaussians' gradient), the Sinkhorn potentials, and the
    all-class log-densities of the batch (L_D's forward).
    """
    objective = training_objective(num_components)
    p = problem
    means, scales = head_gaussians(p.gmm_params, objective.scale_floor, num_components)
    bank = filled_bank(jax.random.key(1), p.means, capacity)
    bank_log_prob = mixture.own_class_log_prob(bank.latents, means, scales)

    def bank_update(memory, z, labels, mask):
        return update_memory(memory, z, labels, mask)

    def usage_loss(head_params, latents, valid, log_weights):
        m, s = head_gaussians(head_params, objective.scale_floor, num_components)
        joint = mixture.own_class_log_prob(latents, m, s) + log_weights[:, None, :]
        usage, present = mixture.masked_usage(jax.nn.softmax(joint, axis=-1), valid)
        return losses.average_usage_loss(usage, present, objective.usage_distance)

    def sinkhorn(log_probs, valid):
        return mixture.sinkhorn_log_potentials(
            log_probs, valid, objective.sinkhorn_epsilon, objective.sinkhorn_iterations
        )

    pieces = [
        ("piece_bank_update", jax.jit(bank_update, donate_argnums=0),  # its own bank: donated
         (filled_bank(jax.random.key(2), p.means, capacity), p.z, p.labels, p.mask)),
        ("piece_bank_log_prob_fwd", jax.jit(mixture.own_class_log_prob), (bank.latents, means, scales)),
        ("piece_bank_usage_grad", jax.jit(jax.grad(usage_loss)),
         (p.gmm_params, bank.latents, bank.valid, p.log_weights)),
        ("piece_sinkhorn", jax.jit(sinkhorn), (bank_log_prob, bank.valid)),
        ("piece_batch_all_class_fwd", jax.jit(component_log_prob), (p.z, means, scales)),
        ("piece_batch_log_lik_fwd", jax.jit(log_likelihood), (p.z, means, scales, p.log_weights)),
    ]
    return [PieceRunner(name, *_compile(fn, args), bank_index=0 if name == "piece_bank_update" else None)
            for name, fn, args in pieces]


class PieceRunner(Runner):
    """A building block: returns arrays (no value/grad pair); the bank write feeds its bank back."""

    def step(self) -> float:
        start = time.perf_counter()
        out = self.compiled(*self.args)
        jax.block_until_ready(out)
        elapsed = time.perf_counter() - start
        if self.bank_index is not None:
            self.args[self.bank_index] = out
        return elapsed


def time_interleaved(runners: list[Runner], reps: int) -> None:
    """Round-robin repetitions (the order rotates each round) after one warm-up call of each."""
    for runner in runners:
        runner.step()
    for rep in range(reps):
        shift = rep % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            runner.times.append(runner.step())


def memory_sweep(num_classes: int, num_components: int, dim: int, capacity: int, batches) -> list[dict]:
    """Compile-only: XLA temp bytes of the full objective and of L_D alone for several batch sizes."""
    rows = []
    base = training_objective(num_components)
    for batch in batches:
        p = make_problem(num_classes, num_components, dim, batch)
        bank = jax.eval_shape(lambda: filled_bank(jax.random.key(1), p.means, capacity))
        full = lgmm_gradient(base).lower(p.z, p.gmm_params, p.labels, p.mask, p.log_weights, bank).compile()
        disc = discriminative_gradient(base).lower(
            p.z, p.gmm_params, p.labels, p.mask, p.log_weights
        ).compile()
        linear = linear_gradient(num_classes).lower(p.z, p.dense_params, p.labels, p.mask).compile()
        bck = batch * num_classes * num_components
        rows.append({
            "C": num_classes, "B": batch, "BCK": bck,
            "lgmm_temp_bytes": memory_stats(full)["temp_bytes"],
            "ld_only_temp_bytes": memory_stats(disc)["temp_bytes"],
            "linear_temp_bytes": memory_stats(linear)["temp_bytes"],
            "ld_only_temp_bytes_per_BCK_float": round(memory_stats(disc)["temp_bytes"] / (4 * bck), 2),
        })
    return rows


def fit_linear_in_bck(sweep: list[dict], key: str) -> dict | None:
    """Least-squares temp_bytes = a * B*C*K * 4 + b over the sweep's batch sizes: (a floats, b MiB)."""
    if len(sweep) < 2:
        return None
    bck = np.array([row["BCK"] for row in sweep], float)
    temp = np.array([row[key] for row in sweep], float)
    slope, intercept = np.polyfit(bck, temp, 1)
    residual = np.max(np.abs(slope * bck + intercept - temp)) / max(np.max(temp), 1.0)
    return {"floats_per_BCK": round(slope / 4, 3), "fixed_MiB": round(intercept / 2**20, 2),
            "max_relative_residual": round(float(residual), 4)}


def mib(n: int) -> str:
    return f"{n / 2**20:9.2f}"


def benchmark_class_count(num_classes: int, args) -> dict:
    """Time every variant interleaved, read their memory, attribute the cost, sweep B; print as it goes."""
    problem = make_problem(num_classes, args.components, args.dim, args.batch)
    runners = build_runners(problem, num_classes, args.components, args.memory)
    if args.pieces:
        runners += build_piece_runners(problem, args.memory, args.components)
    time_interleaved(runners, args.reps)
    linear_ms = 1000 * statistics.median(runners[0].times)
    print(f"\nC={num_classes}  (bank {num_classes}x{args.memory}x{args.dim} float32 = "
          f"{num_classes * args.memory * args.dim * 4 / 2**20:.1f} MiB)", flush=True)
    print(f"{'variant':26s} {'median ms':>10s} {'x linear':>9s} {'GFLOP':>8s} "
          f"{'temp MiB':>9s} {'arg MiB':>9s} {'out MiB':>9s} {'total MiB':>9s}")
    rows = {}
    for runner in runners:
        ms = 1000 * statistics.median(runner.times)
        mem = memory_stats(runner.compiled)
        rows[runner.name] = {"median_ms": round(ms, 3), "ratio_to_linear": round(ms / linear_ms, 3),
                             "gflop": round(flops(runner.compiled) / 1e9, 4), **mem}
        print(f"{runner.name:26s} {ms:10.2f} {ms / linear_ms:9.2f} {rows[runner.name]['gflop']:8.3f} "
              f"{mib(mem['temp_bytes'])} {mib(mem['argument_bytes'])} {mib(mem['output_bytes'])} "
              f"{mib(mem['total_bytes'])}", flush=True)
    lgmm_ms = rows[LGMM]["median_ms"]
    attribution = {
        "bank_share": round(1 - rows["lgmm_bank_M1"]["median_ms"] / lgmm_ms, 3),
        "sinkhorn_share": round(1 - rows["lgmm_sinkhorn0"]["median_ms"] / lgmm_ms, 3),
        "ld_share": round(rows["ld_only"]["median_ms"] / lgmm_ms, 3),
    }
    print(f"share of L-GMM time: memory bank (M={args.memory} vs 1) {attribution['bank_share']:.0%}, "
          f"Sinkhorn iterations {attribution['sinkhorn_share']:.0%}, L_D part {attribution['ld_share']:.0%}")
    sweep = memory_sweep(num_classes, args.components, args.dim, args.memory, args.memory_batches)
    for s in sweep:
        print(f"  memory sweep B={s['B']:5d}: temp MiB lgmm {mib(s['lgmm_temp_bytes'])} "
              f"L_D only {mib(s['ld_only_temp_bytes'])} ({s['ld_only_temp_bytes_per_BCK_float']} floats "
              f"per B*C*K) linear {mib(s['linear_temp_bytes'])}", flush=True)
    fits = {key: fit_linear_in_bck(sweep, f"{key}_temp_bytes") for key in (LGMM, "ld_only")}
    for key, fit in fits.items():
        if fit:
            print(f"  {key} temp = {fit['floats_per_BCK']} floats per B*C*K + {fit['fixed_MiB']} MiB "
                  f"(max relative residual {fit['max_relative_residual']})", flush=True)
    return {"variants": rows, "attribution": attribution, "memory_sweep": sweep, "memory_fit": fits}


def main(argv=None) -> None:
    args = parse_args(argv)
    device = jax.devices()[0]
    objective = training_objective(args.components)
    print(f"device: {device.platform} {device.device_kind} (x{jax.device_count()}); K={args.components} "
          f"D={args.dim} B={args.batch} M={args.memory} per class; {args.reps} interleaved reps; objective: "
          f"{objective.assignment} assignment, {objective.sinkhorn_iterations} Sinkhorn iterations, "
          f"{objective.variant}", flush=True)
    results = {str(c): benchmark_class_count(c, args) for c in args.classes}
    ratios = {c: r["variants"][LGMM]["ratio_to_linear"] for c, r in results.items()}
    summary = {
        "device": f"{device.platform} {device.device_kind}",
        "K": args.components, "D": args.dim, "B": args.batch, "M": args.memory, "reps": args.reps,
        "objective": dataclasses.asdict(objective),
        "lgmm_to_linear_ratio": ratios,
        "ld_only_to_linear_ratio": {
            c: r["variants"]["ld_only"]["ratio_to_linear"] for c, r in results.items()
        },
        "bank_M1_to_linear_ratio": {
            c: r["variants"]["lgmm_bank_M1"]["ratio_to_linear"] for c, r in results.items()
        },
    }
    if "1000" in ratios:
        summary["goal_ratio_at_1000"] = GOAL_RATIO_AT_1000
        summary["goal_met"] = bool(ratios["1000"] <= GOAL_RATIO_AT_1000)
    summary["results"] = results
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
