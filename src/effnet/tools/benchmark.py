"""`effnet benchmark`: inference/training throughput, latency and memory, optionally side by side
with the reference implementation."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform

import torch

from ..benchmark import DTYPES, MODES, Result, bench_inference, bench_train, reference_available
from ..errors import EffnetError
from ..optimize import cpu_bf16_units
from ..registry import list_models

HELP = "measure throughput (img/s), batch-1 latency and memory; optionally against the reference"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default="all", help="model name or 'all' (default)")
    p.add_argument("-b", "--batch-size", default=None,
                   help="comma-separated batch sizes (default 1,16; --train: one size, default 32)")
    p.add_argument("--img-size", type=int, default=None, help="square input size (default: native; --train: 128)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--modes", default="eager,optimized",
                   help=f"effnet variants to time, comma-separated from {','.join(MODES)} (default eager,optimized)")
    p.add_argument("--train", action="store_true", help="time fp32 training steps instead (and the dense twin)")
    p.add_argument("--compare", choices=("reference",), default=None,
                   help="also run the reference implementation (timm) with the same weights, interleaved")
    p.add_argument("--iters", type=int, default=5, help="timed rounds per batch size (batch 1: at least 20)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--format", choices=("text", "json"), default="text")


def _batches(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise EffnetError(f"--batch-size must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise EffnetError(f"--batch-size must be positive integers, got {text!r}")
    return sizes


def machine() -> str:
    """CPU model name, threads, torch version and the CPU's bf16 units, for reports."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    units = cpu_bf16_units()
    bf16 = "" if units is None else f", bf16 units: {' and '.join(units) if units else 'none (bf16 is emulated)'}"
    return f"{name}, {torch.get_num_threads()} threads, torch {torch.__version__}{bf16}"


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list_models() if args.model == "all" else [args.model]
    if args.model != "all" and args.model not in list_models():
        raise EffnetError(f"unknown model {args.model!r}; see `effnet list`")
    compare = args.compare == "reference"
    if compare and not reference_available():
        print("effnet benchmark: reference implementation (timm) not importable here; comparison skipped")
        compare = False
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    results: list[Result] = []
    for name in names:
        if args.train:
            batch = _batches(args.batch_size)[-1] if args.batch_size else 32
            res = bench_train(name, batch, args.img_size or 128, args.device, compare,
                              warmup=max(1, args.warmup // 2), iters=max(3, args.iters // 2))
        else:
            res = bench_inference(name, _batches(args.batch_size or "1,16"), args.img_size, args.dtype, args.device,
                                  modes, compare, args.warmup, args.iters)
        results.extend(res)
        if args.format == "text":
            _print(res)
    if args.format == "json":
        print(json.dumps({"machine": machine(), "results": [dataclasses.asdict(r) for r in results]}, indent=2))
    return 0


def _print(results: list[Result]) -> None:
    print(f"{results[0].model}  ({results[0].img_size}px, {machine()})")
    print(f"  {'impl':<13}{'mode':<10}{'dtype':<15}{'batch':>5}{'img/s':>9}{'ms/batch':>10}"
          f"{'p50/p90/p99 ms':>22}{'peak MB':>9}  ratios")
    for r in results:
        lat = "/".join(f"{r.latency_ms[k]:.1f}" for k in ("p50", "p90", "p99")) if r.latency_ms else "-"
        ratios = "  ".join(f"x{v:.2f} vs {k}" for k, v in r.ratio.items())
        if "dense" in r.ratio:
            ratios += f"  (step time {1 / r.ratio['dense']:.2f}x dense)"
        if r.compile_s is not None:
            ratios += f"  (first call, compiling: {r.compile_s:.0f} s)"
        mem = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "-"
        print(f"  {r.impl:<13}{r.mode:<10}{r.dtype:<15}{r.batch:>5}{r.img_per_s:>9.1f}{r.ms_per_batch:>10.1f}"
              f"{lat:>22}{mem:>9}  {ratios}")
