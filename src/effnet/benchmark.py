"""Side-by-side speed measurements: effnet (eager, optimised, compiled) and the peers a user could
pick instead (the reference implementation eager and compiled, ONNX Runtime on effnet's export),
with the same weights, timed interleaved in one process with alternating order, so that a busy
machine slows every candidate alike and the ratios stay meaningful. Every figure is also stated
as a share of this machine's measured matmul peak at its precision (see `peak`)."""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from . import kernels
from . import peers as peer_models
from .errors import EffnetError
from .extras import require
from .flops import count_macs
from .optimize import optimize_for_inference
from .peak import precision
from .registry import build_model, get_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}
MODES = ("eager", "optimized", "compiled")
TRAIN_MODES = ("eager", "compiled")
Key = tuple[str, str, str]  # (impl, mode, dtype label)


@dataclass
class Result:
    """One candidate's figures. Throughput is images per second over whole batches (median)."""
    model: str
    impl: str  # 'effnet' | 'effnet-dense' | 'reference' | 'onnxruntime'
    mode: str  # 'eager' | 'optimized' | 'compiled' | 'onnx' (training: 'eager' | 'compiled')
    dtype: str  # 'fp32' | 'bf16' | 'bf16-autocast' | 'int8' ...
    batch: int
    img_size: int
    img_per_s: float
    ms_per_batch: float
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50/p90/p99, batch 1 only
    peak_mem_mb: float | None = None
    ratio: dict[str, float] = field(default_factory=dict)  # this / baseline img/s, by baseline name
    compile_s: float | None = None  # compiled: seconds of the first call at this batch size
    train: bool = False
    gflops: float | None = None  # achieved: 2 x MACs per image x img/s
    peak_share: float | None = None  # gflops / this machine's matmul peak at the result's precision
    best_peer: str | None = None  # the peer that ratio['best peer'] is against
    mem_mb_per_sample: float | None = None  # training: peak RSS growth over one step / batch


def reference_available() -> bool:
    """Whether the reference implementation (timm) can be imported here."""
    return peer_models.available("reference")


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: the process's peak resident set (Linux reports KiB); process-wide, so it only grows
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[Any, Callable[[], Any]], device: torch.device, warmup: int, iters: int,
                min_seconds: float = 0.0) -> dict[Any, list[float]]:
    """Seconds per call for each function, one call of each per round, the order reversed every
    round (A B C, C B A) so that no candidate always inherits another's cache state. Every
    candidate is warmed for at least two calls first: the first calls in a process pay one-time costs."""
    order = list(fns)
    for i in range(max(2, warmup)):
        for key in order if i % 2 == 0 else order[::-1]:
            fns[key]()
    _sync(device)
    times: dict[Any, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < iters or time.perf_counter() - start < min_seconds:
        for key in order if rounds % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fns[key]()
            _sync(device)
            times[key].append(time.perf_counter() - t0)
        rounds += 1
    return times


def _percentiles(seconds: list[float]) -> dict[str, float]:
    s = sorted(seconds)
    pick = lambda q: 1e3 * s[min(len(s) - 1, int(round(q * (len(s) - 1))))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


def calibration_batches(size: int, count: int = 4, batch: int = 2) -> list[Tensor]:
    """Random batches for int8 calibration: enough for speed figures (not for accuracy)."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, size, size, generator=g) for _ in range(count)]


def _effnet(base: nn.Module, mode: str, dtype: torch.dtype, device: torch.device, size: int) -> nn.Module:
    if mode == "eager":
        return base if dtype == torch.float32 else peer_models.Autocast(base, dtype, device).eval()
    if dtype == torch.int8:
        return optimize_for_inference(base, dtype=dtype, input_size=size, compile=mode == "compiled",
                                      calibration=calibration_batches(size))
    return optimize_for_inference(base, dtype=dtype, input_size=size, compile=mode == "compiled")


def _candidates(name: str, modes: tuple[str, ...], dtypes: tuple[str, ...], device: torch.device, size: int,
                peers: Sequence[str], workdir: Path) -> tuple[nn.Module, dict[Key, Callable[[Tensor], Any]]]:
    """The effnet model and (impl, mode, dtype label) -> callable on an NCHW fp32 batch, every
    candidate with the same deterministic random weights. Low precisions also get effnet's fp32
    figure at its fastest requested mode, the baseline of their targets; int8 is timed at the
    fastest requested mode only (an uncompiled quantized model is a slow reference decomposition)."""
    torch.manual_seed(0)
    base = build_model(get_config(name)).eval().to(device)
    fast = "compiled" if "compiled" in modes else "optimized"
    out: dict[Key, Callable[[Tensor], Any]] = {}
    if dtypes != ("fp32",):
        out[("effnet", fast, "fp32")] = _effnet(base, fast, torch.float32, device, size)
    for dname in dtypes:
        for mode in (fast,) if dname == "int8" else modes:
            label = f"{dname}-autocast" if mode == "eager" and dname != "fp32" else dname
            out[("effnet", mode, label)] = _effnet(base, mode, DTYPES[dname], device, size)
    if "reference" in peers:
        autocast = torch.bfloat16 if "bf16" in dtypes else None
        for key, model in peer_models.reference_models(name, base.state_dict(), device, autocast).items():
            out[key] = lambda x, m=model: m(x.contiguous(memory_format=torch.channels_last))
    if "onnxruntime" in peers:
        threads = torch.get_num_threads()
        for label in ("fp32", "int8"):
            if label == "fp32" or label in dtypes:
                calib = calibration_batches(size) if label == "int8" else None
                run = peer_models.onnxruntime_runner(base, size, threads, workdir, calib)
                out[("onnxruntime", "onnx", label)] = lambda x, r=run: r(x.numpy())
    return base, out


def _peer_order(key: Key) -> int:
    return {"reference": 0, "onnxruntime": 1}.get(key[0], 2)


def bench_inference(name: str, batch_sizes: tuple[int, ...], img_size: int | None = None,
                    dtype: str | Sequence[str] = "fp32", device: str = "cpu",
                    modes: tuple[str, ...] = ("eager", "optimized"),
                    peers: Sequence[str] = (), warmup: int = 2, iters: int = 5, min_seconds: float = 0.0,
                    peaks: dict[str, float | None] | None = None) -> list[Result]:
    """Inference throughput (and batch-1 latency) for every candidate, interleaved per batch size.

    `dtype` may name several precisions, timed in one rotation. `peers` (of peers.PEERS) adds the
    reference eager, compiled (and compiled under autocast for bf16), and ONNX Runtime on effnet's
    export (also int8 QDQ for int8). `peaks` (GFLOP/s per precision, from peak.matmul_peaks) adds
    each figure's share of the machine's peak at its precision."""
    dev = _device(device)
    dtypes = (dtype,) if isinstance(dtype, str) else tuple(dtype)
    bad_dtypes = [d for d in dtypes if d not in DTYPES]
    if bad_dtypes or not dtypes:
        raise EffnetError(f"unknown dtype {bad_dtypes or dtype!r}; expected one of {tuple(DTYPES)}")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise EffnetError(f"unknown mode(s) {bad or modes}; expected some of {MODES}")
    if "int8" in dtypes:
        require("torchao", extra="int8", purpose="int8 inference")
        if modes == ("eager",):
            raise EffnetError("--dtype int8 has no eager mode; use --modes optimized or compiled")
    unknown = [p for p in peers if p not in peer_models.PEERS]
    if unknown:
        raise EffnetError(f"unknown peer(s) {unknown}; expected some of {peer_models.PEERS}")
    size = img_size or get_config(name).pretrained.input_size[-1]
    results: list[Result] = []
    from torch._inductor import config as inductor  # imported here: importing the compiler takes seconds
    # compile times are reported, so every compile starts cold rather than from inductor's disk cache
    with tempfile.TemporaryDirectory(prefix="effnet-bench-") as work, \
            inductor.patch(fx_graph_cache=False), torch.inference_mode():
        base, models = _candidates(name, modes, dtypes, dev, size, peers, Path(work))
        macs = count_macs(base, (3, size, size))
        models = dict(sorted(models.items(), key=lambda kv: _peer_order(kv[0])))
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
    _add_shares(results, macs, peaks)
    _add_ratios(results, lambda r: ("reference", "eager", "fp32"), "reference")
    fast = "compiled" if "compiled" in modes else "optimized"  # the fp32 baseline _candidates added
    _add_ratios(results, lambda r: ("effnet", fast, "fp32") if precision(r.dtype) != "fp32" else None, "effnet fp32")
    _add_best_peer(results)
    return results


def _add_shares(results: list[Result], macs: int, peaks: dict[str, float | None] | None) -> None:
    for r in results:
        r.gflops = 2 * macs * r.img_per_s / 1e9
        peak = (peaks or {}).get(precision(r.dtype))
        r.peak_share = r.gflops / peak if peak else None


def _add_best_peer(results: list[Result]) -> None:
    """ratio['best peer']: each effnet figure over the fastest peer at the same batch size among those
    at its precision or a wider one (a bf16 figure competes with the fp32 peers too, int8 with all)."""
    rank = {"fp32": 0, "bf16": 1, "fp16": 1, "int8": 2}
    for r in results:
        if not r.impl.startswith("effnet"):
            continue
        rivals = [p for p in results if not p.impl.startswith("effnet") and p.batch == r.batch
                  and rank[precision(p.dtype)] <= rank[precision(r.dtype)]]
        if rivals:
            best = max(rivals, key=lambda p: p.img_per_s)
            r.ratio["best peer"] = r.img_per_s / best.img_per_s
            r.best_peer = f"{best.impl} {best.mode} {best.dtype}"


def train_step_fn(model: nn.Module, batch: int, size: int, device: torch.device, channels_last: bool,
                  compiled: bool = False, amp: torch.dtype | None = None) -> Callable[[], None]:
    """One SGD step on random data: forward, cross-entropy, backward, update; with `compiled` the
    model's forward (and so its backward) goes through torch.compile, with `amp` under autocast."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.train().to(device=device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    if compiled:
        kernels.load()  # a graph being traced uses the native kernels only once they are loaded
    forward = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
    return step


def _rss_growth_mb(fn: Callable[[], None]) -> float | None:
    """Peak resident-set growth over one call, in MiB: free heap returned to the OS first, the
    kernel's high-water mark reset (Linux /proc/self/clear_refs); None where that is unavailable."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024
    except (OSError, AttributeError, ValueError):
        return None


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field_name + ":")))


def bench_train(name: str, batch: int = 32, img_size: int = 128, device: str = "cpu", peers: Sequence[str] = (),
                modes: tuple[str, ...] = ("eager",), amp: bool = False, warmup: int = 2, iters: int = 3,
                min_seconds: float = 0.0) -> list[Result]:
    """Training step time per mode (eager, compiled): effnet fp32 (and bf16 autocast with `amp`), its
    dense twin (experts=0) for CondConv models, the reference with 'reference' in `peers`; all
    channels-last with the same initial weights. Memory per sample is each candidate's peak RSS
    growth over one step divided by the batch size (CPU; on CUDA, not measured)."""
    dev = _device(device)
    bad = [m for m in modes if m not in TRAIN_MODES]
    if bad:
        raise EffnetError(f"unknown training mode(s) {bad}; expected some of {TRAIN_MODES}")
    cfg = get_config(name)
    torch.manual_seed(0)
    ours = build_model(cfg)
    twins: dict[str, nn.Module] = {"effnet": ours}
    if cfg.experts:
        twins["effnet-dense"] = build_model(dataclasses.replace(cfg, experts=0))
    if "reference" in peers:
        import timm  # optional: only for side-by-side comparison
        twins["reference"] = timm.create_model(name, pretrained=False)
        twins["reference"].load_state_dict(ours.state_dict())
    fns: dict[Key, Callable[[], None]] = {}
    for mode in modes:
        for impl, model in twins.items():
            fns[(impl, mode, "fp32")] = train_step_fn(copy.deepcopy(model), batch, img_size, dev, True,
                                                      mode == "compiled")
        if amp:
            fns[("effnet", mode, "bf16-autocast")] = train_step_fn(copy.deepcopy(ours), batch, img_size, dev, True,
                                                                   mode == "compiled", torch.bfloat16)
    compile_s: dict[Key, float] = {}
    from torch._inductor import config as inductor  # imported here: importing the compiler takes seconds
    with inductor.patch(fx_graph_cache=False):
        for key, fn in fns.items():
            if key[1] == "compiled":
                t0 = time.perf_counter()
                fn()
                _sync(dev)
                compile_s[key] = time.perf_counter() - t0
        times = interleaved(fns, dev, warmup, iters, min_seconds)
        mem = {key: _rss_growth_mb(fn) if dev.type == "cpu" else None for key, fn in fns.items()}
    results = []
    for (impl, mode, dname), secs in times.items():
        med = statistics.median(secs)
        m = mem[(impl, mode, dname)]
        results.append(Result(name, impl, mode, dname, batch, img_size, batch / med, 1e3 * med, {},
                              _peak_mem_mb(dev), compile_s=compile_s.get((impl, mode, dname)), train=True,
                              mem_mb_per_sample=None if m is None else m / batch))
    _add_ratios(results, lambda r: ("reference", r.mode, "fp32") if r.dtype == "fp32" else None, "reference")
    _add_ratios(results, lambda r: ("effnet-dense", r.mode, "fp32") if r.dtype == "fp32" else None, "dense")
    _add_ratios(results, lambda r: ("effnet", r.mode, "fp32") if r.dtype != "fp32" else None, "effnet fp32")
    _add_ratios(results, lambda r: ("effnet", "eager", r.dtype) if r.mode == "compiled" else None, "eager")
    return results


def _add_ratios(results: list[Result], baseline: Callable[[Result], Key | None], label: str) -> None:
    """ratio[label] = img/s over that of baseline(result) (if any) at the same batch size (> 1: faster)."""
    for r in results:
        key = baseline(r)
        base = next((b for b in results if (b.impl, b.mode, b.dtype) == key and b.batch == r.batch), None)
        if base is not None and base is not r:
            r.ratio[label] = r.img_per_s / base.img_per_s


def _device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise EffnetError("--device cuda: no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise EffnetError(f"unknown device {device!r}; expected cpu or cuda")
    return torch.device(device)
