"""Benchmark of the default training recipe: `effnet train --model MODEL --dataset digits --img-size 32
--epochs 5` with no recipe flags (only --workers and --output, which do not change what is learned),
then the validation top-1 of its last and best epochs.

    .venv/bin/python scripts/bench_default_recipe.py                       # efficientnet_b1_pruned
    .venv/bin/python scripts/bench_default_recipe.py --model tf_efficientnet_cc_b0_4e

Each run goes to a fresh temporary folder (or --output, which must not exist yet). The exit status is 1
when a model's last-epoch top-1 is below --target.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning; at 32 px one thread trains faster than two on a
# shared 2-core machine (see scripts/demo.py). --threads changes it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import csv  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="model to train (repeatable; default: efficientnet_b1_pruned)")
    p.add_argument("--epochs", type=int, default=5, help="epochs (default: 5)")
    p.add_argument("--img-size", type=int, default=32, help="image size (default: 32)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training process (default: 1)")
    p.add_argument("--target", type=float, default=90.0, help="top-1 a model must reach (default: 90)")
    p.add_argument("--output", help="parent folder for the runs (default: a fresh temporary folder)")
    return p.parse_args()


def cpu_name() -> str:
    """The CPU's model name, as `lscpu` prints it."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or platform.machine()


def train(model: str, args: argparse.Namespace, run_dir: Path) -> tuple[list[dict[str, str]], float]:
    """Run `effnet train` with the default recipe; returns summary.csv's rows and the wall time."""
    cmd = [sys.executable, "-m", "effnet", "train", "--model", model, "--dataset", "digits", "--img-size",
           str(args.img_size), "--epochs", str(args.epochs), "--workers", "0", "--output", str(run_dir)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print(f"bench: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench: effnet train failed for {model} with exit status {proc.returncode}")
    with open(run_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f)), seconds


def main() -> int:
    args = parse_args()
    models = args.model or ["efficientnet_b1_pruned"]
    if args.output:
        parent = Path(args.output)
        if parent.exists():
            sys.exit(f"bench: --output {str(parent)!r} already exists; give a new folder")
    else:
        parent = Path(tempfile.mkdtemp(prefix="effnet-bench-"))
    results = []
    for model in models:
        rows, seconds = train(model, args, parent / model)
        last, best = float(rows[-1]["eval_top1"]), max(float(r["eval_top1"]) for r in rows)
        results.append((model, last, best, seconds))
    print(f"\nbench: default recipe, digits at {args.img_size} px, {args.epochs} epochs, {cpu_name()}, "
          f"{args.threads} thread(s); runs in {parent}")
    for model, last, best, seconds in results:
        verdict = "" if last >= args.target else f"  (below the {args.target:g}% target)"
        print(f"bench: {model}: top-1 {last:.2f}% (best epoch {best:.2f}%) in {seconds:.0f} s{verdict}")
    return 0 if all(last >= args.target for _, last, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
