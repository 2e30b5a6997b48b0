"""Whether a change left the numbers as they were: the same runs on two checkouts, compared file by file.

    python bench/same_numbers.py run OUT            # this checkout's runs into OUT (about 5 minutes)
    python bench/same_numbers.py compare OLD NEW     # every number of OLD against NEW

`run` trains, evaluates and exports what the library's paths cover: the default config (digits 6/4, L-GMM),
its softmax counterpart, and a 30-step segmentation testbed run with the L-GMM head and with GMMSeg's
update (configs/scenes.py at a tiny SegFormer), each followed by `lgmm_jax.export` and
`lgmm_jax.evaluate --model` of the export. `compare` reads every results.json, metrics.jsonl and
scores.npz below OLD and NEW and prints each file as `same` or with its first differences; metrics.jsonl's
wall-clock numbers (images_per_second, input_wait) are left out, everything else must be equal (floats
bit for bit, as runs of one checkout on one machine are). The exit status is 1 when anything differs.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("images_per_second", "input_wait")
TINY_SEGFORMER = "{'widths': (16, 32, 80, 128), 'depths': (1, 1, 1, 1), 'decoder_width': 64}"
SCENES = ("--config=configs/scenes.py", "--config.num_train_steps=30", "--config.eval.figures=false",
          f"--config.model.decoder={TINY_SEGFORMER}", "--config.segmentation.eval_images=8")
RUNS = {
    "default": ("--config.num_train_steps=60", "--config.eval.figures=false"),
    "softmax": ("--config.num_train_steps=60", "--config.eval.figures=false", "--config.model.head=softmax"),
    "scenes_lgmm": SCENES,
    "scenes_gmmseg": (*SCENES, "--config.method=gmmseg"),
}


def command(module: str, *args: str) -> None:
    completed = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, text=True, capture_output=True)
    if completed.returncode:
        raise SystemExit(f"python -m {module} {' '.join(args)} failed:\n{completed.stderr[-2000:]}")


def run(out: str) -> None:
    """Every run of `RUNS`, its export and the export's evaluation, into `out`/<name>/."""
    for name, args in RUNS.items():
        workdir = os.path.join(out, name)
        print(f"{name}: training", flush=True)
        command("lgmm_jax.main", f"--workdir={workdir}", *args)
        command("lgmm_jax.export", f"--workdir={workdir}", f"--output={workdir}/export")
        command("lgmm_jax.evaluate", f"--model={workdir}/export", f"--output={workdir}/export_eval")


def files(root: str) -> list[str]:
    """Paths (relative to `root`) of every results.json, metrics.jsonl and scores.npz below it."""
    wanted = ("results.json", "metrics.jsonl", "scores.npz")
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names if name in wanted)


def without_timing(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in TIMING}


def differences(old_path: str, new_path: str) -> list[str]:
    """What differs between two copies of one output file (empty: the same)."""
    if old_path.endswith(".npz"):
        with np.load(old_path) as old, np.load(new_path) as new:
            if sorted(old.files) != sorted(new.files):
                return [f"arrays {sorted(set(old.files) ^ set(new.files))} in one only"]
            return [f"{key}: max |difference| {np.max(np.abs(old[key] - new[key])):.3g}"
                    for key in old.files if not np.array_equal(old[key], new[key])]
    with open(old_path) as f_old, open(new_path) as f_new:
        if old_path.endswith(".jsonl"):
            old = [without_timing(json.loads(line)) for line in f_old]
            new = [without_timing(json.loads(line)) for line in f_new]
        else:
            old, new = json.load(f_old), json.load(f_new)
    return [] if old == new else [f"{json.dumps(old)[:200]} ... != {json.dumps(new)[:200]} ..."]


def compare(old_root: str, new_root: str) -> int:
    """Print each output file as `same` or with its differences; 1 when anything differs."""
    old_files, new_files = files(old_root), files(new_root)
    status = 0
    for name in sorted(set(old_files) | set(new_files)):
        if name not in old_files or name not in new_files:
            print(f"{name}: only in {'NEW' if name not in old_files else 'OLD'}")
            status = 1
            continue
        found = differences(os.path.join(old_root, name), os.path.join(new_root, name))
        print(f"{name}: {'same' if not found else '; '.join(found[:3])}")
        status |= bool(found)
    print(f"{len(old_files)} files compared: {'every number the same' if status == 0 else 'differences above'}")
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run").add_argument("out")
    comparing = commands.add_parser("compare")
    comparing.add_argument("old")
    comparing.add_argument("new")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.out)
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
