"""What this machine can do: its CPU's low-precision units and a measured matmul peak per precision,
so that a benchmark figure can be stated as a share of what the hardware reaches at all."""

from __future__ import annotations

import os
import platform
import statistics
import time
from functools import cache
from typing import Callable

import torch

from . import kernels
from .process import HUGE_PAGES, huge_pages

# the instruction sets that give bf16 or int8 their speed (as /proc/cpuinfo names them)
UNITS = ("avx512_bf16", "amx_bf16", "avx512_vnni", "amx_int8", "avx_vnni")
PRECISIONS = ("fp32", "bf16", "int8")
# oneDNN caches 1,024 primitives by default: fewer than one training step of two models in one rotation
ONEDNN_CACHE_CAPACITY = "16384"


def use_large_primitive_cache() -> str:
    """Set ONEDNN_PRIMITIVE_CACHE_CAPACITY (unless the user set it) and return the value in force.

    oneDNN reads it when it creates its first primitive, not when torch is imported, so this works
    if called before the process's first conv or matmul (the benchmark command calls it first)."""
    return os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)


@cache
def _cpuinfo() -> dict[str, str]:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line.split(":", 1) for line in f if ":" in line]
    except OSError:
        return {}
    info: dict[str, str] = {}
    for key, value in lines:
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where readable)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_units() -> tuple[str, ...] | None:
    """Which of UNITS the CPU has; None where /proc/cpuinfo cannot be read."""
    info = _cpuinfo()
    if not info:
        return None
    flags = info.get("flags", "").split()
    return tuple(u for u in UNITS if u in flags)


def precision(dtype: str) -> str:
    """The arithmetic a result's dtype label runs at: 'bf16-autocast' -> 'bf16'."""
    return next((p for p in PRECISIONS if dtype.startswith(p)), "fp32")


def _probe(fn: Callable[[], object], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def matmul_peaks(size: int = 2048, warmup: int = 2, iters: int = 5) -> dict[str, float | None]:
    """Measured GFLOP/s of a size x size matmul at fp32, bf16 and int8 (torch._int_mm; None where
    this torch has no CPU int8 matmul), on the CPU with the current thread count."""
    flops = 2.0 * size**3
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    peaks: dict[str, float | None] = {"fp32": flops / _probe(lambda: torch.mm(a, b), warmup, iters) / 1e9}
    a16, b16 = a.bfloat16(), b.bfloat16()
    peaks["bf16"] = flops / _probe(lambda: torch.mm(a16, b16), warmup, iters) / 1e9
    peaks["int8"] = None
    int_mm = getattr(torch, "_int_mm", None)
    if int_mm is not None:
        a8 = torch.randint(-128, 128, (size, size), dtype=torch.int8)
        b8 = torch.randint(-128, 128, (size, size), dtype=torch.int8)
        try:
            peaks["int8"] = flops / _probe(lambda: int_mm(a8, b8), warmup, iters) / 1e9
        except RuntimeError:  # no CPU kernel in this build
            pass
    return peaks


def describe(threads: int, peaks: dict[str, float | None] | None = None) -> str:
    """One line naming the machine: CPU, threads, torch, low-precision units, oneDNN cache, peaks."""
    units = cpu_units()
    unit_text = "unknown" if units is None else ", ".join(units) or "none"
    cache_cap = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024 (default)")
    line = (f"{cpu_name()}, {threads} thread{'' if threads == 1 else 's'}, torch {torch.__version__}, bf16/int8 units: {unit_text}, "
            f"ONEDNN_PRIMITIVE_CACHE_CAPACITY={cache_cap}, {HUGE_PAGES}={huge_pages()}, native kernels {kernels.status()}")
    if peaks:
        line += ", matmul peak GFLOP/s " + ", ".join(
            f"{p} {'n/a' if peaks.get(p) is None else format(peaks[p], '.0f')}" for p in PRECISIONS)
    return line
