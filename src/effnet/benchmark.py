"""Side-by-side speed measurements: effnet (eager, optimised, compiled) and, when importable, the
reference implementation with the same weights, timed interleaved in one process so that a busy
machine slows every candidate alike and the ratios stay meaningful."""

from __future__ import annotations

import dataclasses
import importlib.util
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .errors import EffnetError
from .optimize import optimize_for_inference
from .registry import build_model, get_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("eager", "optimized", "compiled")


@dataclass
class Result:
    """One candidate's figures. Throughput is images per second over whole batches (median)."""
    model: str
    impl: str  # 'effnet' | 'effnet-dense' | 'reference'
    mode: str  # 'eager' | 'optimized' | 'compiled' | 'train'
    dtype: str
    batch: int
    img_size: int
    img_per_s: float
    ms_per_batch: float
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50/p90/p99, batch 1 only
    peak_mem_mb: float | None = None
    ratio: dict[str, float] = field(default_factory=dict)  # this / baseline img/s, by baseline name
    compile_s: float | None = None  # compiled mode: seconds of the first call at this batch size


def reference_available() -> bool:
    """Whether the reference implementation (timm) can be imported here."""
    return importlib.util.find_spec("timm") is not None


def _reference_model(name: str, state_dict: dict[str, Tensor]) -> nn.Module:
    import timm  # optional: only for side-by-side comparison
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(state_dict)
    return model.eval()


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: the process's peak resident set (Linux reports KiB); process-wide, so it only grows
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, iters: int,
                min_seconds: float = 0.0) -> dict[str, list[float]]:
    """Seconds per call for each function, round-robin: one call of each per round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < iters or time.perf_counter() - start < min_seconds:
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[key].append(time.perf_counter() - t0)
        rounds += 1
    return times


def _percentiles(seconds: list[float]) -> dict[str, float]:
    s = sorted(seconds)
    pick = lambda q: 1e3 * s[min(len(s) - 1, int(round(q * (len(s) - 1))))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


def _candidates(name: str, modes: tuple[str, ...], dtype: torch.dtype, device: torch.device, img_size: int,
                compare: bool) -> dict[tuple[str, str, str], nn.Module]:
    """(impl, mode, dtype name) -> model, all with the same deterministic random weights."""
    torch.manual_seed(0)
    base = build_model(get_config(name)).eval().to(device)
    dname = next(k for k, v in DTYPES.items() if v == dtype)
    out: dict[tuple[str, str, str], nn.Module] = {}
    for mode in modes:
        if mode == "eager":
            model = base if dtype == torch.float32 else _autocast(base, dtype, device)
        else:
            model = optimize_for_inference(base, dtype=dtype, input_size=img_size, compile=mode == "compiled")
        out[("effnet", mode, dname if mode != "eager" or dtype == torch.float32 else f"{dname}-autocast")] = model
    if compare:
        # the reference baseline of every target is its fp32 eager throughput
        out[("reference", "eager", "fp32")] = _reference_model(name, base.state_dict()).to(device)
    return out


class _Autocast(nn.Module):
    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.model, self.dtype, self.device_type = model, dtype, device.type

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x)


def _autocast(model: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    return _Autocast(model, dtype, device).eval()


def bench_inference(name: str, batch_sizes: tuple[int, ...], img_size: int | None = None,
                    dtype: str = "fp32", device: str = "cpu", modes: tuple[str, ...] = ("eager", "optimized"),
                    compare: bool = False, warmup: int = 2, iters: int = 5,
                    min_seconds: float = 0.0) -> list[Result]:
    """Inference throughput (and batch-1 latency) for every candidate, interleaved per batch size."""
    dev = _device(device)
    if dtype not in DTYPES:
        raise EffnetError(f"unknown dtype {dtype!r}; expected one of {tuple(DTYPES)}")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise EffnetError(f"unknown mode(s) {bad}; expected some of {MODES}")
    size = img_size or get_config(name).pretrained.input_size[-1]
    models = _candidates(name, modes, DTYPES[dtype], dev, size, compare)
    results: list[Result] = []
    with torch.inference_mode():
        for batch in batch_sizes:
            x = torch.randn(batch, 3, size, size, device=dev)
            fns = {key: (lambda m=m: m(x)) for key, m in models.items()}
            compile_s = {}
            for key in fns:
                if key[1] == "compiled":  # the first call at a new shape compiles: time it apart
                    t0 = time.perf_counter()
                    fns[key]()
                    _sync(dev)
                    compile_s[key] = time.perf_counter() - t0
            n = max(iters, 20) if batch == 1 else iters
            times = interleaved(fns, dev, warmup, n, min_seconds)
            for key, secs in times.items():
                impl, mode, dname = key
                med = statistics.median(secs)
                results.append(Result(name, impl, mode, dname, batch, size, batch / med, 1e3 * med,
                                      _percentiles(secs) if batch == 1 else {}, _peak_mem_mb(dev),
                                      compile_s=compile_s.get(key)))
    _add_ratios(results, ("reference", "eager", "fp32"), "reference")
    return results


def train_step_fn(model: nn.Module, batch: int, size: int, device: torch.device,
                  channels_last: bool) -> Callable[[], None]:
    """One SGD step on random data: forward, cross-entropy, backward, update."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.train().to(device=device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return step


def bench_train(name: str, batch: int = 32, img_size: int = 128, device: str = "cpu", compare: bool = False,
                warmup: int = 1, iters: int = 3, min_seconds: float = 0.0) -> list[Result]:
    """fp32 training step time: effnet (channels-last), its dense twin (experts=0), the reference."""
    dev = _device(device)
    cfg = get_config(name)
    torch.manual_seed(0)
    ours = build_model(cfg)
    fns = {("effnet", "train", "fp32"): train_step_fn(ours, batch, img_size, dev, True)}
    if cfg.experts:
        dense = build_model(dataclasses.replace(cfg, experts=0))
        fns[("effnet-dense", "train", "fp32")] = train_step_fn(dense, batch, img_size, dev, True)
    if compare:
        ref = _reference_model(name, ours.state_dict())
        fns[("reference", "train", "fp32")] = train_step_fn(ref, batch, img_size, dev, False)
    times = interleaved(fns, dev, warmup, iters, min_seconds)
    results = []
    for (impl, mode, dname), secs in times.items():
        med = statistics.median(secs)
        results.append(Result(name, impl, mode, dname, batch, img_size, batch / med, 1e3 * med, {},
                              _peak_mem_mb(dev)))
    _add_ratios(results, ("reference", "train", "fp32"), "reference")
    _add_ratios(results, ("effnet-dense", "train", "fp32"), "dense")
    return results


def _add_ratios(results: list[Result], baseline: tuple[str, str, str], label: str) -> None:
    """ratio[label] = img/s over the baseline's at the same batch size (> 1: faster)."""
    for r in results:
        base = next((b for b in results if (b.impl, b.mode, b.dtype) == baseline and b.batch == r.batch), None)
        if base is not None and base is not r:
            r.ratio[label] = r.img_per_s / base.img_per_s


def _device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise EffnetError("--device cuda: no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise EffnetError(f"unknown device {device!r}; expected cpu or cuda")
    return torch.device(device)
