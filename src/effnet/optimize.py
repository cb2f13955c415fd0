"""Inference-only model preparation: BatchNorm folding, static padding, channels-last, low precision."""

from __future__ import annotations

import copy
import warnings
from functools import cache
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from . import kernels
from .errors import EffnetError
from .layers import CondConv2d, Conv2dSame
from .model import EfficientNet, EfficientNetFeatures
from .quantize import calibration_batches, quantize_int8

_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int8)
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@cache
def cpu_bf16_units() -> tuple[str, ...] | None:
    """The CPU's native bf16 instruction sets (of avx512_bf16, amx_bf16) as /proc/cpuinfo lists them;
    None where that cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    return tuple(flag for flag in _BF16_FLAGS if flag in flags)


@torch.no_grad()
def fold_batch_norm(conv: nn.Module, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the conv before it, in float64 to add no rounding.

    BN(conv(x)) = scale * conv(x) + shift per output channel, and a CondConv's per-sample kernel is
    linear in its experts, so scaling every expert scales the mixed kernel the same way.
    """
    scale64 = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift64 = bn.bias.double() - bn.running_mean.double() * scale64
    if isinstance(conv, CondConv2d):
        bank = conv.weight.double().view(conv.experts, conv.out_chs, -1) * scale64.view(1, -1, 1)
        conv.weight.copy_(bank.view_as(conv.weight).to(conv.weight.dtype))
    elif isinstance(conv, nn.Conv2d):
        conv.weight.copy_((conv.weight.double() * scale64.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    else:
        raise TypeError(f"cannot fold BatchNorm into {type(conv).__name__}")
    old = conv.bias.double() * scale64 if conv.bias is not None else 0.0
    conv.bias = nn.Parameter((old + shift64).to(conv.weight.dtype), requires_grad=False)


def _fold_all(model: nn.Module) -> int:
    """Fold every conv -> BatchNorm pair that a module declares in its `conv_bn_pairs` and replace
    the BatchNorm by Identity; returns the count."""
    folded = 0
    for module in list(model.modules()):
        for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(bn, nn.BatchNorm2d) and isinstance(conv, (nn.Conv2d, CondConv2d)):
                fold_batch_norm(conv, bn)
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


def _set_static_padding(model: nn.Module, input_size: tuple[int, int]) -> None:
    """Record each strided conv's input size with one dummy forward, then fix its padding."""
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(mod: nn.Module, args: tuple[Any, ...]) -> None:
        sizes.setdefault(mod, tuple(args[0].shape[-2:]))
    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, (Conv2dSame, CondConv2d))]
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, model.in_chans, *input_size, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    for m, (h, w) in sizes.items():
        m.set_static_pad(h, w)


class _InferenceMixin:
    """Eval-only behaviour of an optimised copy: inputs are cast to its dtype and memory format.

    Done in forward itself rather than in a forward pre-hook, which torch.compile would split
    into a separate graph."""

    input_dtype: torch.dtype = torch.float32
    input_format: torch.memory_format = torch.contiguous_format

    def forward(self, x: Tensor) -> Any:
        return super().forward(x.to(dtype=self.input_dtype, memory_format=self.input_format))  # type: ignore[misc]

    def train(self, mode: bool = True) -> Any:
        if mode:
            raise EffnetError("this model was prepared by optimize_for_inference (BatchNorm folded): "
                              "it cannot be trained; optimise a copy of the original instead")
        return self


class InferenceEfficientNet(_InferenceMixin, EfficientNet):
    """An EfficientNet as returned by `optimize_for_inference`."""


class InferenceEfficientNetFeatures(_InferenceMixin, EfficientNetFeatures):
    """An EfficientNetFeatures as returned by `optimize_for_inference`."""


def optimize_for_inference(model: nn.Module, *, dtype: torch.dtype = torch.float32, channels_last: bool = True,
                           input_size: int | tuple[int, int] | None = None, compile: bool = False,
                           calibration: Iterable[Any] | None = None) -> nn.Module:
    """An eval-only copy of `model` prepared for fast inference; `model` itself is not changed.

    - BatchNorm is folded into the conv before it (into every CondConv expert too), in float64;
    - with `input_size` ((H, W) or one int) the strided convs' TF 'SAME' padding is fixed for that
      size (other sizes still work: they pad as usual);
    - `channels_last` stores conv weights channels-last, and inputs are converted to it;
    - `dtype` (float32, bfloat16 or float16) is the precision of weights and computation; inputs
      are cast to it, so outputs come back in `dtype`.

    - `compile=True` also wraps it in `torch.compile` (inductor, static shapes, weight freezing):
      the fastest path effnet has. Compiling happens on the first call with each new input shape
      (tens of seconds to minutes on a small CPU); call it under `torch.inference_mode()` or
      `torch.no_grad()`, which freezing needs. Results match the uncompiled copy within 1e-4
      relative in fp32 (the compiler reorders sums).

    - `dtype=torch.int8` quantizes the folded fp32 copy with PyTorch's post-training quantization
      (PT2E, x86 inductor quantizer; needs `effnet[int8]`): `calibration` is an iterable of
      preprocessed input batches, or of (input, target) pairs as a DataLoader yields them, which
      also fixes the input size. Static convs, the classifier and CondConv's pointwise convs (as
      expert banks) run in int8, CondConv's depthwise convs in fp32 (see `effnet.quantize`); use
      `compile=True`, without which int8 is slower than fp32.

    fp32 results match the plain model within 1e-5 relative. The copy works with torch.compile
    (no graph breaks) and any batch size. Calling `.train()` on it raises EffnetError.
    """
    if dtype not in _DTYPES:
        raise EffnetError(f"optimize_for_inference: dtype {dtype} not supported; use one of {_DTYPES}")
    if not isinstance(model, (EfficientNet, EfficientNetFeatures)):
        raise EffnetError(f"optimize_for_inference expects an effnet EfficientNet model, got {type(model).__name__}")
    batches: list[Any] = []
    if dtype == torch.int8:
        if not isinstance(model, EfficientNet):
            raise EffnetError("optimize_for_inference: int8 is for classifier models (features_only=False)")
        batches = calibration_batches(calibration, int(model.in_chans))
        calibrated = tuple(batches[0].shape[-2:])
        wanted = (input_size, input_size) if isinstance(input_size, int) else input_size
        if wanted is not None and tuple(wanted) != calibrated:
            raise EffnetError(f"optimize_for_inference: input_size {tuple(wanted)} but the calibration images are "
                              f"{calibrated}: calibrate at the size the model will run at")
        input_size, channels_last = calibrated, False
    elif calibration is not None:
        raise EffnetError("optimize_for_inference: calibration is only used with dtype=torch.int8")
    on_cpu = next(model.parameters()).device.type == "cpu"
    if dtype == torch.bfloat16 and on_cpu and cpu_bf16_units() == ():
        # without these units oneDNN emulates bf16 through fp32 conversions: slower than fp32, not faster
        warnings.warn("optimize_for_inference: this CPU has no bf16 units (neither avx512_bf16 nor amx_bf16), "
                      "so bfloat16 is emulated and usually slower than float32 here", stacklevel=2)
    out = copy.deepcopy(model).float().eval()
    _fold_all(out)
    if input_size is not None:
        hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if len(hw) != 2 or min(hw) < 1:
            raise EffnetError(f"optimize_for_inference: input_size must be an int or (H, W); got {input_size!r}")
        _set_static_padding(out, (int(hw[0]), int(hw[1])))
    out.requires_grad_(False)
    if dtype == torch.int8:
        if not on_cpu:
            raise EffnetError("optimize_for_inference: int8 runs on the CPU (oneDNN); move the model to the CPU")
        out.__class__ = InferenceEfficientNet
        return quantize_int8(out, batches, compile=compile)
    out = out.to(dtype=dtype)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    out.__class__ = InferenceEfficientNet if isinstance(out, EfficientNet) else InferenceEfficientNetFeatures
    out.input_dtype = dtype
    out.input_format = torch.channels_last if channels_last else torch.contiguous_format
    if compile:
        for m in out.modules():
            if isinstance(m, CondConv2d):
                m.dynamic_batch = False  # compiled with static shapes: see CondConv2d
        kernels.load()  # a graph being traced uses the native kernels only once they are loaded
        return compile_frozen(out)
    return out


def compile_frozen(module: nn.Module) -> nn.Module:
    """`torch.compile` (inductor, static shapes) with weight freezing, for inference under `torch.no_grad()`
    or `torch.inference_mode()`: inductor constant-folds the weights and prepacks them for oneDNN's conv
    and GEMM kernels. Static shapes, because a dynamic batch dimension costs those kernels their blocking."""
    compiled = torch.compile(module, dynamic=False)
    forward = compiled.forward

    def frozen_forward(*args: Any, **kwargs: Any) -> Any:
        # inductor decides on freezing when a call compiles, and torch.compile(options={"freezing": True})
        # does not reach that decision (torch 2.13): patched per call, never set for the user's other models
        from torch._inductor import config as inductor  # imported here: importing the compiler takes seconds
        with inductor.patch(freezing=True):
            return forward(*args, **kwargs)
    compiled.forward = frozen_forward
    return compiled  # type: ignore[return-value]
