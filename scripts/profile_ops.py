"""Where effnet's inference time goes, per op class, against each class's own roofline.

For each model and batch size the optimised copy (`effnet.optimize_for_inference`, BatchNorm folded,
channels-last, static padding) is profiled eagerly with torch.profiler: forward hooks open a
record_function scope per module, and every top-level aten op is attributed to an op class by its
scope and name (a CondConv's `mm` is the expert mixing, its bmm/grouped conv the per-sample conv;
pads anywhere are elementwise). FLOPs and bytes come from one separate pass under a dispatch mode
that sees the same scopes: bytes are every operand read plus every result written, once (views
move nothing), so they assume no reuse between ops through the caches. Each class's roofline is
min(matmul peak, copy bandwidth x FLOPs/byte); its share is the roofline time over the measured time.
Small activations stay in the caches between ops, so a share above 100% means the class beats DRAM.

The compiled copy (inductor, freezing) is timed beside the eager one in the same rotation; its kernels
(inductor's generated ones, named after the ops they fuse, and the extern oneDNN/BLAS calls, told apart
by their operands' shapes) are attributed to the same classes, against the eager pass's FLOPs and bytes
(fusion removes some of those bytes, so a compiled share can pass 100%).

    PYTHONPATH=src .venv/bin/python scripts/profile_ops.py --models tf_efficientnet_cc_b0_4e --batch-sizes 16 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from typing import Any, Callable

import effnet.peak as peak

peak.use_large_primitive_cache()  # before the process's first conv: oneDNN reads it once

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import effnet  # noqa: E402
from effnet.blocks import DepthwiseSeparable, InvertedResidual  # noqa: E402
from effnet.layers import CondConv2d, Conv2dSame, Routing, SqueezeExcite  # noqa: E402

MODELS = ("efficientnet_b1_pruned", "tf_efficientnet_cc_b0_4e")
CLASSES = ("depthwise conv", "1x1 conv", "CondConv routing", "CondConv mixing", "CondConv per-sample conv",
           "SE", "elementwise", "stem/head/classifier")
VIEWS = {"view", "_unsafe_view", "permute", "transpose", "t", "expand", "as_strided", "detach", "alias",
         "unsqueeze", "squeeze", "slice", "select", "reshape", "_reshape_alias", "lift_fresh"}
Scopes = list[str]


def scope_of(module: nn.Module) -> str | None:
    """The scope label a module opens, or None for modules whose ops belong to the enclosing scope."""
    if isinstance(module, (DepthwiseSeparable, InvertedResidual)):
        return "block"
    if isinstance(module, SqueezeExcite):
        return "se"
    if isinstance(module, Routing):
        return "routing"
    if isinstance(module, CondConv2d):
        return "cc"
    if isinstance(module, Conv2dSame):
        return "dw" if module.groups > 1 else "pw"
    return None


def classify(scopes: Scopes, op: str) -> str:
    """The op class of aten op `op` (no namespace) run inside `scopes` (outermost first)."""
    if "se" in scopes:
        return "SE"
    inner = scopes[-1] if scopes else None
    if inner is None or "block" not in scopes:
        return "stem/head/classifier"
    if "pad" in op:
        return "elementwise"
    if inner == "routing":
        return "CondConv routing"
    if inner == "cc":
        return "CondConv mixing" if op in ("mm", "matmul") else "CondConv per-sample conv"
    if inner == "dw":
        return "depthwise conv"
    if inner == "pw":
        return "1x1 conv"
    # the block's own ops: the routing input's pooling and sigmoid, the SE gate multiply of static
    # blocks, activations, the residual add
    if op in ("mean", "sigmoid"):
        return "CondConv routing"
    return "SE" if op == "mul" else "elementwise"


class _Restore:
    """Undoes an instance attribute set by install_scopes, like a hook handle's remove()."""

    def __init__(self, obj: Any, attr: str) -> None:
        self.obj, self.attr = obj, attr

    def remove(self) -> None:
        self.obj.__dict__.pop(self.attr, None)


def install_scopes(model: nn.Module, stack: Scopes, profiled: bool) -> list[Any]:
    """Forward hooks that keep `stack` as the current scope path (and, when `profiled`, open a
    record_function named '##<scope>' around each scoped module)."""
    handles, open_ranges = [], []

    def enter(mod: nn.Module, args: Any, label: str) -> None:
        stack.append(label)
        if profiled:
            rf = record_function("##" + "/".join(stack))
            rf.__enter__()
            open_ranges.append(rf)

    def leave(mod: nn.Module, args: Any, out: Any) -> None:
        stack.pop()
        if profiled:
            open_ranges.pop().__exit__(None, None, None)
    for m in model.modules():
        if isinstance(m, SqueezeExcite):  # the blocks call its gate method, which no forward hook sees
            def gate(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor] = m.gate,
                     mod: nn.Module = m) -> torch.Tensor:
                enter(mod, (x,), "se")
                try:
                    return fn(x)
                finally:
                    leave(mod, (x,), None)
            m.gate = gate  # type: ignore[method-assign]
            handles.append(_Restore(m, "gate"))
        label = scope_of(m)
        if label is not None:
            handles.append(m.register_forward_pre_hook(lambda mod, a, label=label: enter(mod, a, label)))
            handles.append(m.register_forward_hook(leave))
    return handles


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _flops(op: str, args: tuple[Any, ...], out: Any) -> int:
    """FLOPs of one aten op: 2 per multiply-accumulate for convs and matmuls, one per element otherwise."""
    if op in ("convolution", "conv2d"):
        w = args[1]
        return 2 * out.numel() * w.shape[1] * w.shape[2] * w.shape[3]
    if op in ("mm", "addmm", "bmm", "baddbmm", "matmul"):
        return 2 * out.numel() * args[-1].shape[-2]
    if op == "linear":
        return 2 * out.numel() * args[1].shape[1]
    if op in ("mean", "sum"):
        return args[0].numel()
    return out.numel() if isinstance(out, torch.Tensor) else 0


class CountMode(TorchDispatchMode):
    """Sums FLOPs and bytes per op class while a forward runs; scopes come from `stack`."""

    def __init__(self, stack: Scopes) -> None:
        super().__init__()
        self.stack = stack
        self.flops: dict[str, float] = defaultdict(float)
        self.bytes: dict[str, float] = defaultdict(float)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        op = func.__name__.split(".")[0]
        if op in VIEWS:
            return out
        cls = classify(self.stack, op)
        flat = [a for a in args if isinstance(a, torch.Tensor)] + [
            t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
        outs = out if isinstance(out, (list, tuple)) else [out]
        self.bytes[cls] += sum(_nbytes(t) for t in flat) + sum(_nbytes(t) for t in outs)
        self.flops[cls] += _flops(op, args, out)
        return out


def copy_bandwidth(mib: int = 64, reps: int = 7) -> float:
    """GB/s of a large tensor copy (read + write counted), a bound for memory-bound ops."""
    src = torch.randn(mib * 2**18)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * _nbytes(src) / statistics.median(times) / 1e9


def profiled_classes(model: nn.Module, x: torch.Tensor, stack: Scopes) -> tuple[dict[str, float], float]:
    """One forward under torch.profiler: ms per op class, and the wall ms of that forward."""
    times: dict[str, float] = defaultdict(float)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        model(x)
        wall = (time.perf_counter() - t0) * 1e3
    for evt in prof.events():
        if not evt.name.startswith("aten::"):
            continue
        parent = evt.cpu_parent
        if parent is not None and not parent.name.startswith("##"):
            continue  # inside another op (or a kernel range): counted with that op
        scopes = parent.name[2:].split("/") if parent is not None else []
        times[classify(scopes, evt.name[6:])] += evt.cpu_time_total / 1e3
    return times, wall


def _compiled_class(name: str, shapes: list[list[int]], experts: int, next_class: str) -> str:
    """The op class of one kernel of a compiled forward: an extern call by its operands' shapes, an
    inductor-generated kernel by the ops its name lists (a pooling by the kernel that consumes it)."""
    if "convolution" in name and len(shapes) > 1 and len(shapes[1]) == 4:
        x, w = shapes[0], shapes[1]
        if x[1] == 3:
            return "stem/head/classifier"
        if w[2] > 1:
            return "depthwise conv"
        return "SE" if x[2] == x[3] == 1 else "1x1 conv"
    if "linear" in name or name.endswith(("::mm", "::addmm")):
        k = shapes[0][-1] if shapes and shapes[0] else 0
        n = shapes[2][0] if "linear" in name and len(shapes) > 2 and shapes[2] else shapes[-1][-1]
        return ("CondConv mixing" if k == experts else "CondConv routing" if n == experts
                else "stem/head/classifier")
    if "bmm" in name:
        return "CondConv per-sample conv"
    if "cpp_fused" in name:
        ops = name.split("cpp_fused_", 1)[1]
        if "select" in ops and "slice" in ops:  # the depthwise taps: shifted slices times per-sample taps
            return "CondConv per-sample conv"
        if "addmm" in ops or "sigmoid" in ops and "mul" not in ops:
            return "CondConv routing" if experts > 0 else "stem/head/classifier"
        if "mul" in ops:
            return "SE"  # the gate multiply
        if "mean" in ops:
            return next_class if next_class in ("SE", "CondConv routing") else "stem/head/classifier"
        return "elementwise"
    return "other"


def compiled_classes(model: Callable[[torch.Tensor], Any], x: torch.Tensor, experts: int) -> dict[str, float]:
    """ms per op class in one compiled forward (compiled with inductor's kernel profiling on)."""
    times: dict[str, float] = defaultdict(float)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model(x)
    kernels = [(e.name, e.input_shapes, e.cpu_time_total / 1e3) for e in prof.events()
               if e.cpu_parent is not None and e.cpu_parent.name.startswith("## Call CompiledFxGraph")]
    following = "other"
    for name, shapes, ms in reversed(kernels):  # backwards: a pooling's class is its consumer's
        cls = _compiled_class(name, shapes, experts, following)
        times[cls] += ms
        if "cpp_fused" not in name:
            following = cls
    return times


def run(name: str, batch: int, dtype: torch.dtype, reps: int, peak_gflops: float, bandwidth: float,
        skip_compile: bool) -> None:
    """Profile one model at one batch size and print the per-class table."""
    from torch._inductor import config as inductor  # imported here: importing the compiler takes seconds
    model = effnet.create_model(name).eval()
    size = model.pretrained_cfg["input_size"][-1]
    experts = model.cfg.blocks()[-1].experts or -1
    x = torch.randn(batch, 3, size, size)
    eager = effnet.optimize_for_inference(model, input_size=size, dtype=dtype)
    stack: Scopes = []
    count = CountMode(stack)
    handles = install_scopes(eager, stack, profiled=False)
    with torch.inference_mode(), count:
        eager(x)
    for h in handles:
        h.remove()
    cands: dict[str, Callable[[], Any]] = {"eager": lambda: eager(x)}
    with torch.inference_mode():
        if not skip_compile:
            compiled = effnet.optimize_for_inference(model, input_size=size, dtype=dtype, compile=True)
            t0 = time.perf_counter()
            with inductor.patch({"cpp.enable_kernel_profile": True}):
                compiled(x)
            print(f"  compile: {time.perf_counter() - t0:.0f} s", flush=True)
            cands["compiled"] = lambda: compiled(x)
            cands["compiled profiled"] = lambda: compiled_classes(compiled, x, experts)
        handles = install_scopes(eager, stack, profiled=True)
        cands["eager profiled"] = lambda: profiled_classes(eager, x, stack)[0]
        for fn in cands.values():
            fn(), fn()
        walls: dict[str, list[float]] = defaultdict(list)
        per_class: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        order = list(cands)
        for r in range(reps):
            for key in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                res = cands[key]()
                walls[key].append((time.perf_counter() - t0) * 1e3)
                if key.endswith("profiled"):
                    for c in CLASSES + ("other",):
                        per_class[key][c].append(res.get(c, 0.0))
        for h in handles:
            h.remove()
    med = {k: statistics.median(v) for k, v in walls.items()}
    ms = {k: {c: statistics.median(v) for c, v in d.items()} for k, d in per_class.items()}
    kinds = [k for k in ("eager profiled", "compiled profiled") if k in ms]
    totals = {k: sum(ms[k].values()) for k in kinds}
    line = f"\n{name}, batch {batch}, {size} px, {dtype}: eager {med['eager']:.1f} ms ({batch / med['eager'] * 1e3:.1f} img/s)"
    if not skip_compile:
        line += (f", compiled {med['compiled']:.1f} ms ({batch / med['compiled'] * 1e3:.1f} img/s, "
                 f"{med['eager'] / med['compiled']:.2f}x eager)")
    print(line + "; in kernels while profiled: " + ", ".join(f"{k.split()[0]} {totals[k]:.1f} ms" for k in kinds))
    head = " | ".join(f"{k.split()[0]} ms | % | share" for k in kinds)
    print(f"| op class | {head} | GFLOP | MB | FLOP/B | roofline GFLOP/s |")
    print("|---" * (5 + 3 * len(kinds)) + "|")
    for c in CLASSES + ("other",):
        f, b = count.flops.get(c, 0.0), count.bytes.get(c, 0.0)
        if all(ms[k].get(c, 0.0) == 0 for k in kinds) and f == 0:
            continue
        roof_ms = max(f / (peak_gflops * 1e9), b / (bandwidth * 1e9)) * 1e3
        cells = []
        for k in kinds:
            t = ms[k].get(c, 0.0)
            share = f"{100 * roof_ms / t:.0f}%" if t and b else "-"
            cells.append(f"{t:.2f} | {100 * t / totals[k]:.0f} | {share}")
        ai = f / b if b else 0.0
        print(f"| {c} | {' | '.join(cells)} | {f / 1e9:.3f} | {b / 1e6:.1f} | {ai:.1f} | "
              f"{min(peak_gflops, bandwidth * ai):.0f} |")


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, measure the machine's peaks, profile every model at every batch size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 1])
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--reps", type=int, default=7, help="interleaved timing rounds (median taken)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-compile", action="store_true", help="profile the eager copy only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    peaks = peak.matmul_peaks()
    bandwidth = copy_bandwidth()
    print(peak.describe(args.threads, peaks) + f", copy bandwidth {bandwidth:.1f} GB/s")
    for name in args.models:
        for batch in args.batch_sizes:
            run(name, batch, dtype, args.reps, float(peaks[args.dtype] or 0.0), bandwidth, args.no_compile)
            torch._dynamo.reset()


if __name__ == "__main__":
    main()
