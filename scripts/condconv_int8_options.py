"""What of CondConv can run in int8, and at what speed and accuracy (issue 14, part 2).

CondConv's convs mix a kernel per sample, W_b = sum_e routing[b, e] W_e, so PT2E's static int8 path
leaves them fp32. The options measured, each on effnet's int8 path (PT2E, x86 inductor quantizer,
compiled with freezing) unless named fp32:

    fp32   effnet's fp32 compiled path (optimize_for_inference(compile=True)), the baseline
    a      today's int8: static convs int8, CondConv's per-sample convs fp32
    b      the expert bank as one static int8 conv with E*O outputs (depthwise: E*C, groups=C),
           then the routing-weighted sum over experts: exact in fp32 (CondConv is linear in its
           weights), E times the MACs
    c      pointwise CondConv convs in int8 on the fly: the mixed kernel quantized per sample and
           output channel, the activations per sample (symmetric), one int8 GEMM per sample
           (torch._int_mm); depthwise fp32
    d      the bank for the pointwise convs only, its E copies on the narrower side: the expand
           conv's input (E*I channels, routing-scaled), the projection's output (E*O); depthwise
           fp32. effnet's int8 path (effnet.quantize.PointwiseExpertBank)

Speed: synthetic weights, batches interleaved round by round in alternating order, medians after
warm-up, one process (ONEDNN_PRIMITIVE_CACHE_CAPACITY=16384, as several programs rotate).
Accuracy: a digits-trained run, calibrated on 256 training images, on the validation split.

    .venv/bin/python scripts/condconv_int8_options.py \
        --run runs/condconv-study/upcycle_e0_to_e4/cc4/train --json /tmp/options.json
"""

from __future__ import annotations

import os

os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402
from unittest import mock  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import effnet  # noqa: E402
import effnet.quantize  # noqa: E402
from effnet.blocks import InvertedResidual  # noqa: E402
from effnet.layers import CondConv2d, Conv2dSame  # noqa: E402
from effnet.optimize import optimize_for_inference  # noqa: E402
from effnet.quantize import quantize_int8  # noqa: E402

OPTIONS = ("fp32", "a", "b", "c", "d")


class ExpertBank(nn.Module):
    """A CondConv conv as its expert bank run as one static conv (option b): a conv to E*O channels,
    then sum_e routing[b, e] * y_e (depthwise: groups=C, E outputs per channel)."""

    def __init__(self, cc: CondConv2d) -> None:
        super().__init__()
        e, o, i, k, g = cc.experts, cc.out_chs, cc.in_chs, cc.kernel, cc.groups
        self.experts, self.out_chs, self.depthwise = e, o, g > 1
        bank = cc.weight.detach().view(e, o, i // g, k, k)
        if self.depthwise:
            self.conv = Conv2dSame(i, e * o, k, cc.stride, groups=g)
            weight = bank.transpose(0, 1).reshape(o * e, 1, k, k)  # channel c's experts side by side
        else:
            self.conv = Conv2dSame(i, e * o, k, cc.stride)
            weight = bank.reshape(e * o, i, k, k)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
        self.conv.static_pad, self.conv.static_size = cc.static_pad, cc.static_size
        self.bias = cc.bias
        self.requires_grad_(False)

    def forward(self, x: Tensor, routing: Tensor) -> Tensor:
        b, e = x.shape[0], self.experts
        y = self.conv(x)
        h, w = y.shape[2], y.shape[3]
        if self.depthwise:
            y = (y.view(b, self.out_chs, e, h, w) * routing.view(b, 1, e, 1, 1)).sum(2)
        else:
            y = (y.view(b, e, self.out_chs, h, w) * routing.view(b, e, 1, 1, 1)).sum(1)
        return y + self.bias.view(1, -1, 1, 1)


@torch.library.custom_op("effnet_options::int8_bmm", mutates_args=())
def int8_bmm(a: Tensor, b: Tensor) -> Tensor:
    """(B, M, K) int8 @ (B, K, N) int8 -> (B, M, N) int32: one int8 GEMM per sample."""
    out = a.new_empty((a.shape[0], a.shape[1], b.shape[2]), dtype=torch.int32)
    for i in range(a.shape[0]):
        torch._int_mm(a[i], b[i], out=out[i])
    return out


@int8_bmm.register_fake
def _int8_bmm_shape(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]), dtype=torch.int32)


class DynamicInt8Pointwise(nn.Module):
    """A pointwise CondConv conv in int8 on the fly (option c): per sample, the mixed kernel is
    quantized per output channel and the input per tensor, both symmetric, then one int8 GEMM."""

    def __init__(self, cc: CondConv2d) -> None:
        super().__init__()
        self.bank = nn.Parameter(cc.weight.detach().view(cc.experts, cc.out_chs, cc.in_chs), requires_grad=False)
        self.bias = cc.bias

    def forward(self, x: Tensor, routing: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # mixing written out per expert, so the compiler fuses it with the quantization (no fp32 kernel stored)
        kernel = routing[:, 0, None, None] * self.bank[0]
        for e in range(1, self.bank.shape[0]):
            kernel = kernel + routing[:, e, None, None] * self.bank[e]
        w_scale = kernel.abs().amax(2, keepdim=True).clamp_min(1e-12) / 127.0  # (B, O, 1)
        w_q = torch.round(kernel / w_scale).to(torch.int8)
        flat = x.reshape(b, c, h * w)
        x_scale = flat.abs().amax((1, 2), keepdim=True).clamp_min(1e-12) / 127.0  # (B, 1, 1)
        x_q = torch.round(flat / x_scale).to(torch.int8)
        # addcmul, not a multiply: the x86 quantizer would quantize a same-shape multiply's inputs (at 1x1)
        out = torch.addcmul(self.bias.view(1, -1, 1), int8_bmm(w_q, x_q).float(), w_scale * x_scale)
        return out.view(b, -1, h, w)


def swap_condconv(model: nn.Module, option: str) -> int:
    """Replace the CondConv convs of a folded copy as `option` runs them (d: effnet's own swap, done
    by quantize_int8); returns how many."""
    swaps: dict[str, Callable[[CondConv2d], nn.Module]] = {}
    if option == "b":
        swaps = dict.fromkeys(("conv_pw", "conv_dw", "conv_pwl"), ExpertBank)
    elif option == "c":
        swaps = dict.fromkeys(("conv_pw", "conv_pwl"), DynamicInt8Pointwise)
    count = 0
    for block in model.modules():
        if isinstance(block, InvertedResidual) and block.routing_fn is not None:
            for name, make in swaps.items():
                setattr(block, name, make(getattr(block, name)))
                count += 1
    return count


def build(model: nn.Module, option: str, calibration: list[Tensor]) -> Callable[[Tensor], Tensor]:
    """The compiled program of `option` for `model` at the calibration images' size."""
    size = tuple(calibration[0].shape[-2:])
    if option == "fp32":
        return optimize_for_inference(model, input_size=size, compile=True)
    folded = optimize_for_inference(model, input_size=size, channels_last=False)
    swap_condconv(folded, option)
    # a: CondConv left fp32, as before effnet swapped its pointwise convs for expert banks
    keep = mock.patch.object(effnet.quantize, "_pointwise_expert_banks", lambda m: None) if option == "a" \
        else contextlib.nullcontext()
    with warnings.catch_warnings(), keep:
        warnings.simplefilter("ignore")
        return quantize_int8(folded, calibration, compile=True)


def time_options(model: nn.Module, options: list[str], size: int, batch: int, rounds: int) -> dict[str, float]:
    """img/s of each option at `batch`, interleaved round by round, alternating order."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    calibration = [torch.randn(16, 3, size, size, generator=g) for _ in range(2)]
    programs: dict[str, Callable[[Tensor], Tensor]] = {}
    for option in options:
        t0 = time.perf_counter()
        programs[option] = build(model, option, calibration)
        for _ in range(3):
            programs[option](x)
        print(f"  b{batch} {option}: built and compiled in {time.perf_counter() - t0:.0f} s", flush=True)
    times: dict[str, list[float]] = {o: [] for o in options}
    for r in range(rounds):
        for option in options if r % 2 == 0 else options[::-1]:
            t0 = time.perf_counter()
            programs[option](x)
            times[option].append(time.perf_counter() - t0)
    return {o: round(batch / statistics.median(t), 1) for o, t in times.items()}


def accuracy(run: str, options: list[str], calib_images: int) -> dict[str, dict[str, float]]:
    """top-1 and % of fp32's top-1 predictions kept, per option, on the digits' validation split."""
    from effnet.data.calibration import calibration_from_args
    from effnet.loading import load_model
    from effnet.train.config import TrainConfig
    from effnet.train.data import build_dataset, eval_transform, make_eval_loader
    loaded = load_model(f"local-dir:{run}", None)
    model, cfg = loaded.model.eval(), loaded.data_config
    val = make_eval_loader(build_dataset(TrainConfig(model=loaded.name, dataset="digits"), "val",
                                         eval_transform(cfg)), 128, 0)
    images = torch.cat([x for x, _ in val])
    target = torch.cat([y for _, y in val])
    calibration = calibration_from_args(argparse.Namespace(calib_dir=None, calib_dataset="digits",
                                                           calib_images=calib_images), cfg)

    def predict(fn: Callable[[Tensor], Tensor]) -> Tensor:
        out = []
        for i in range(0, len(images), 128):  # the last chunk padded to 128: one compiled shape
            chunk = images[i:i + 128]
            padded = torch.cat([chunk, chunk.new_zeros(128 - len(chunk), *chunk.shape[1:])])
            out.append(fn(padded)[:len(chunk)].float().argmax(1))
        return torch.cat(out)

    ref = predict(model)
    figures = {"fp32 eager": {"top1": round(100 * (ref == target).float().mean().item(), 2), "same": 100.0}}
    for option in options:
        got = predict(build(model, option, calibration))
        figures[option] = {"top1": round(100 * (got == target).float().mean().item(), 2),
                           "same": round(100 * (got == ref).float().mean().item(), 2)}
        print(f"  accuracy {option}: {figures[option]}", flush=True)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tf_efficientnet_cc_b0_4e")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[16, 1], help="none: accuracy only")
    p.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated, of {OPTIONS}")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run", help="a digits-trained CondConv run folder, for accuracy")
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    options = [o for o in args.options.split(",") if o]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        p.error(f"--options: unknown {unknown}; choose from {OPTIONS}")
    torch.set_num_threads(args.threads)
    results: dict[str, dict] = {"speed": {}, "accuracy": {}}
    model = effnet.create_model(args.model).eval()
    with torch.inference_mode():
        for batch in args.batch_sizes:
            results["speed"][f"b{batch}"] = time_options(model, options, args.img_size, batch, args.rounds)
            print(f"  b{batch} img/s: {results['speed'][f'b{batch}']}", flush=True)
    if args.run:
        with torch.no_grad():
            results["accuracy"] = accuracy(args.run, options, args.calib_images)
    base = next((o for o in ("a", "fp32") if o in options), options[0])
    heads = [f"b{b} img/s (x {base})" for b in args.batch_sizes] + (["top-1", "same as fp32"] if args.run else [])
    where = f" at {args.img_size} px" if args.batch_sizes else ""
    print(f"\n{args.model}{where}, {args.threads} threads; accuracy: {args.run or '-'}\n")
    print("| option | " + " | ".join(heads) + " |")
    print("|---" * (len(heads) + 1) + "|")
    for o in options:
        cells = []
        for b in args.batch_sizes:
            speed = results["speed"][f"b{b}"]
            cells.append(f"{speed[o]:.1f} ({speed[o] / speed[base]:.2f}x)")
        if args.run:
            acc = results["accuracy"][o]
            cells += [f"{acc['top1']:.2f}%", f"{acc['same']:.2f}%"]
        print(f"| {o} | " + " | ".join(cells) + " |")
    if args.run:
        print(f"\nfp32 eager top-1: {results['accuracy']['fp32 eager']['top1']:.2f}%")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
