"""effnet's native depthwise kernels against oneDNN (PyTorch's CPU convolution), op by op, on the depthwise
convs of real models: forward, input gradient and weight gradient, fp32 and bf16, each layer's shape at a
training batch. What `effnet.kernels.depthwise` takes from which comes from these figures.

    PYTHONPATH=src .venv/bin/python scripts/bench_depthwise.py --models efficientnet_b1_pruned --batch 32 --size 160
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import effnet
from effnet import kernels
from effnet.kernels.depthwise import geometry
from effnet.layers import CondConv2d, Conv2dSame


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def depthwise_layers(name: str, size: int) -> list[tuple[int, int, int, int, int]]:
    """(channels, height, width, kernel, stride) of every depthwise conv of `name` at `size` px."""
    model = effnet.create_model(name).eval()
    found: list[tuple[int, int, int, int, int]] = []

    def record(mod: torch.nn.Module, args: tuple) -> None:
        k = mod.kernel_size[0] if isinstance(mod, Conv2dSame) else mod.kernel
        s = mod.stride[0] if isinstance(mod, Conv2dSame) else mod.stride
        found.append((args[0].shape[1], args[0].shape[2], args[0].shape[3], k, s))
    for m in model.modules():
        if (isinstance(m, Conv2dSame) and m.depthwise) or (isinstance(m, CondConv2d) and m.groups == m.in_chs > 1):
            m.register_forward_pre_hook(record)
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["efficientnet_b1_pruned", "tf_efficientnet_cc_b0_4e"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lib = kernels.load()
    if lib is None:
        raise SystemExit(f"native kernels: {kernels.status()}")
    from effnet.kernels.depthwise import _call, _taps
    print(f"{torch.__version__}, {args.threads} threads, batch {args.batch}; ms per call, oneDNN / native")
    for name in args.models:
        layers = sorted(set(depthwise_layers(name, args.size)), key=lambda t: (-t[1], t[0]))
        total = {}
        print(f"\n{name} at {args.size} px")
        print("| dtype | C | H | k | s | forward | input grad | weight grad |\n|---|---|---|---|---|---|---|---|")
        for dtype in (torch.float32, torch.bfloat16):
            for C, H, W, k, s in layers:
                B = args.batch
                Ho, Wo, pt, pl, pb, pr = geometry(H, W, k, s)
                x = torch.randn(B, C, H, W).to(dtype).contiguous(memory_format=torch.channels_last)
                w = torch.randn(C, 1, k, k)
                wd = w.to(dtype).contiguous(memory_format=torch.channels_last)
                xp = F.pad(x, [pl, pr, pt, pb]) if s > 1 else x
                pad = 0 if s > 1 else k // 2
                g = torch.randn(B, C, Ho, Wo).to(dtype).contiguous(memory_format=torch.channels_last)

                def onednn(mask: list[bool]) -> Callable[[], object]:
                    return lambda: torch.ops.aten.convolution_backward(g, xp, wd, None, [s, s], [pad, pad], [1, 1],
                                                                       False, [0, 0], C, mask)
                taps = _taps(w, False, B, C, k)
                dims = (B, H, W, C, Ho, Wo, k, s, pt, pl)
                y, gx, gw = torch.empty_like(g), torch.empty_like(x), torch.empty(k * k, C)

                def native(fn: str, *tensors: torch.Tensor | None) -> Callable[[], object]:
                    return lambda: _call(fn, dtype, *tensors, per_sample=False, dims=dims)
                row = [median_ms(lambda: F.conv2d(xp, wd, None, s, pad, 1, C), args.rounds),
                       median_ms(native("effnet_dw_fwd", x, taps, None, y), args.rounds),
                       median_ms(onednn([True, False, False]), args.rounds),
                       median_ms(native("effnet_dw_bwd_data", g, taps, gx), args.rounds),
                       median_ms(onednn([False, True, False]), args.rounds),
                       median_ms(native("effnet_dw_bwd_weight", g, x, gw), args.rounds)]
                key = str(dtype).split(".")[1]
                total[key] = [a + b for a, b in zip(total.get(key, [0.0] * 6), row)]
                cells = " | ".join(f"{row[i]:.2f} / {row[i + 1]:.2f}" for i in (0, 2, 4))
                print(f"| {key} | {C} | {H} | {k} | {s} | {cells} |")
        for key, row in total.items():
            cells = " | ".join(f"{row[i]:.1f} / {row[i + 1]:.1f}" for i in (0, 2, 4))
            print(f"| {key} total | | | | | {cells} |")


if __name__ == "__main__":
    main()
