"""`effnet benchmark`: inference/training throughput, latency and memory, optionally side by side
with the peers a user could pick instead, each figure also as a share of the machine's matmul peak."""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from .. import peers as peer_models
from ..benchmark import DTYPES, MODES, Result, bench_inference, bench_train
from ..errors import EffnetError
from ..peak import describe, matmul_peaks, use_large_primitive_cache
from ..registry import list_models

HELP = "measure throughput (img/s), batch-1 latency and memory; optionally against the best peers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default="all", help="model name or 'all' (default)")
    p.add_argument("-b", "--batch-size", default=None,
                   help="comma-separated batch sizes (default 1,16; --train: one size, default 32)")
    p.add_argument("--img-size", type=int, default=None, help="square input size (default: native; --train: 128)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                   help="precision of effnet's figures (fp32 figures are timed beside them as the baseline); "
                        "with --train, bf16 adds a bf16 autocast step")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--modes", default=None,
                   help=f"effnet variants to time, comma-separated from {','.join(MODES)} (default eager,optimized; "
                        "--train: from eager,compiled, default eager)")
    p.add_argument("--train", action="store_true", help="time training steps instead (and the dense twin)")
    p.add_argument("--compare", nargs="?", const="all", default=None, metavar="PEERS",
                   help="also time the peers, interleaved with the same weights: 'reference' (timm eager, "
                        "torch.compile, and compile+autocast for bf16), 'onnxruntime' (effnet's ONNX export), "
                        "comma-separated; bare --compare: all that are importable")
    p.add_argument("--iters", type=int, default=5, help="timed rounds per batch size (batch 1: at least 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per candidate first (at least 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice, reported)")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak probe (no share-of-peak figures)")
    p.add_argument("--format", choices=("text", "json"), default="text")


def _batches(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise EffnetError(f"--batch-size must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise EffnetError(f"--batch-size must be positive integers, got {text!r}")
    return sizes


def select_peers(text: str | None) -> tuple[tuple[str, ...], list[str]]:
    """The peers to time from --compare's value, and one line for each that is skipped here."""
    if text is None:
        return (), []
    wanted = peer_models.PEERS if text == "all" else tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in wanted if p not in peer_models.PEERS]
    if bad or not wanted:
        raise EffnetError(f"--compare: unknown peer(s) {bad or [text]}; expected 'all' or some of "
                          f"{','.join(peer_models.PEERS)}")
    usable = tuple(p for p in wanted if peer_models.available(p))
    return usable, [peer_models.missing_reason(p) for p in wanted if p not in usable]


def machine(peaks: dict[str, float | None] | None = None) -> str:
    """CPU model name, threads, torch version, the CPU's bf16/int8 units, oneDNN's cache, peaks."""
    return describe(torch.get_num_threads(), peaks)


def run(args: argparse.Namespace) -> int:
    use_large_primitive_cache()  # before the first oneDNN primitive of this process
    if args.threads is not None and args.threads < 1:
        raise EffnetError(f"--threads must be positive, got {args.threads}")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    names = list_models() if args.model == "all" else [args.model]
    if args.model != "all" and args.model not in list_models():
        raise EffnetError(f"unknown model {args.model!r}; see `effnet list`")
    if args.train and args.dtype in ("int8", "fp16"):
        raise EffnetError(f"--train --dtype {args.dtype}: training is timed in fp32 and bf16 autocast only")
    if args.iters < 1:
        raise EffnetError(f"--iters must be positive, got {args.iters}")
    peers, skipped = select_peers(args.compare)
    for line in skipped:
        print(line)
    modes = tuple(m.strip() for m in (args.modes or ("eager" if args.train else "eager,optimized")).split(",")
                  if m.strip())
    peaks = None if args.no_peak or args.device != "cpu" else matmul_peaks()
    if args.format == "text":
        print(f"machine: {machine(peaks)}")
    results: list[Result] = []
    for name in names:
        if args.train:
            batch = _batches(args.batch_size)[-1] if args.batch_size else 32
            res = bench_train(name, batch, args.img_size or 128, args.device, peers, modes, args.dtype == "bf16",
                              warmup=args.warmup, iters=args.iters)
        else:
            res = bench_inference(name, _batches(args.batch_size or "1,16"), args.img_size, args.dtype, args.device,
                                  modes, peers, args.warmup, args.iters, peaks=peaks)
        results.extend(res)
        if args.format == "text":
            _print(res)
    if args.format == "json":
        print(json.dumps({"machine": machine(peaks), "threads": torch.get_num_threads(), "peaks_gflops": peaks,
                          "results": [dataclasses.asdict(r) for r in results]}, indent=2))
    return 0


def _print(results: list[Result]) -> None:
    print(f"{results[0].model}  ({results[0].img_size}px)")
    print(f"  {'impl':<13}{'mode':<10}{'dtype':<15}{'batch':>5}{'img/s':>9}{'ms/batch':>10}"
          f"{'p50/p90/p99 ms':>20}{'GFLOP/s':>9}{'peak':>6}{'MB/img':>8}{'compile':>9}  ratios")
    for r in results:
        lat = "/".join(f"{r.latency_ms[k]:.1f}" for k in ("p50", "p90", "p99")) if r.latency_ms else "-"
        ratios = "  ".join(f"x{v:.2f} vs {k}" + (f" ({r.best_peer})" if k == "best peer" else "")
                           for k, v in r.ratio.items())
        if "dense" in r.ratio:
            ratios += f"  (step time {1 / r.ratio['dense']:.2f}x dense)"
        gflops = f"{r.gflops:.1f}" if r.gflops is not None else "-"
        share = f"{100 * r.peak_share:.0f}%" if r.peak_share is not None else "-"
        mem = f"{r.mem_mb_per_sample:.1f}" if r.mem_mb_per_sample is not None else "-"
        comp = f"{r.compile_s:.0f} s" if r.compile_s is not None else "-"
        print(f"  {r.impl:<13}{r.mode:<10}{r.dtype:<15}{r.batch:>5}{r.img_per_s:>9.1f}{r.ms_per_batch:>10.1f}"
              f"{lat:>20}{gflops:>9}{share:>6}{mem:>8}{comp:>9}  {ratios}")
    if results[0].train:
        print("  MB/img: peak resident-set growth over one training step / batch size")
