"""int8 post-training quantization with PyTorch's own flow (PT2E and the x86 inductor quantizer, from torchao).

The BatchNorm-folded fp32 model is exported with a dynamic batch dimension, observed on calibration
batches, and converted: every static conv and linear gets int8 weights (per output channel) and int8
activations (per tensor, from the calibration ranges). Under `torch.compile` with weight freezing,
inductor lowers each quantize -> conv -> dequantize pattern to one oneDNN int8 convolution (VNNI / AMX
where the CPU has them).

CondConv's convolutions are not static: their kernel is mixed per sample from the expert bank at run
time, which the quantizer cannot see. Its pointwise convs (nearly all of its MACs) are swapped, in the
inference copy before export, for `PointwiseExpertBank`: one static conv over all experts, then the
routing-weighted sum, so they run in int8 like the static convs (E times the MACs, but in int8 that
is faster than the fp32 per-sample convs). Its depthwise convs and routing stay fp32. Squeeze-and-
excitation convs stay fp32 in every model (see `_squeeze_excite_convs`). scripts/condconv_int8_options.py
measures this against the alternatives (every CondConv conv as a bank; each sample's mixed kernel
quantized at run time; CondConv left in fp32).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from .errors import EffnetError
from .extras import require
from .layers import CondConv2d, Conv2dSame, SqueezeExcite


def calibration_batches(calibration: Iterable[Any] | None, in_chans: int) -> list[Tensor]:
    """The input tensors of `calibration` (tensors, or (input, target, ...) pairs as a DataLoader yields
    them), checked: at least one, all (N, in_chans, H, W) with the same (H, W)."""
    if calibration is None:
        raise EffnetError("int8 needs calibration data: pass calibration=<batches of preprocessed images> "
                          "(on the command line: --calib-dir DIR or --dataset NAME)")
    out: list[Tensor] = []
    for i, item in enumerate(calibration):
        x = item[0] if isinstance(item, (tuple, list)) and item else item
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != in_chans or x.shape[0] < 1:
            what = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise EffnetError(f"calibration batch {i}: expected a (N, {in_chans}, H, W) image tensor, got {what}")
        if out and x.shape[-2:] != out[0].shape[-2:]:
            raise EffnetError(f"calibration batch {i} is {tuple(x.shape[-2:])}, batch 0 {tuple(out[0].shape[-2:])}: "
                              "calibrate at one input size")
        out.append(x.detach().float().cpu())
    if not out:
        raise EffnetError("int8 calibration data is empty: give at least one batch of images")
    return out


class QuantizedEfficientNet(nn.Module):
    """An int8 EfficientNet as returned by `optimize_for_inference(..., dtype=torch.int8)`: eval-only,
    for the (H, W) it was calibrated at, any batch size. Outputs are fp32 (logits, unless the quantized
    module had other outputs)."""

    def __init__(self, program: nn.Module, source: nn.Module, input_size: tuple[int, int],
                 compiled: bool, calibration_images: int) -> None:
        super().__init__()
        self.calibration_images = calibration_images
        self.program = program
        self.input_size = input_size
        self.compiled = compiled
        self.in_chans = int(source.in_chans)
        self.num_classes = int(getattr(source, "num_classes", 0) or 0)
        self.pretrained_cfg = dict(getattr(source, "pretrained_cfg", {}) or {})
        self.default_cfg = self.pretrained_cfg

    def forward(self, x: Tensor) -> Any:
        if tuple(x.shape[-2:]) != self.input_size or x.dim() != 4:
            raise EffnetError(f"this int8 model was quantized for (N, {self.in_chans}, {self.input_size[0]}, "
                              f"{self.input_size[1]}) inputs; got {tuple(x.shape)}: quantize again at that size")
        # freezing turns the int8 weights into constants that inductor prepacks for oneDNN; patched per call
        # rather than set globally, so effnet never changes the compiler settings of the user's other models
        patch: Any = contextlib.nullcontext()
        if self.compiled:
            from torch._inductor import config as inductor  # imported here: importing the compiler takes seconds
            patch = inductor.patch(freezing=True)
        with patch:
            return self.program(x.float().contiguous())

    def train(self, mode: bool = True) -> "QuantizedEfficientNet":
        if mode:
            raise EffnetError("this model was quantized to int8 for inference: it cannot be trained; "
                              "train the fp32 model instead")
        return self


def _mark_convs_as_conv2d(program: torch.fx.GraphModule) -> int:
    """The quantizer finds convs (and conv + activation pairs) by the exact module class recorded in each
    node's `nn_module_stack`; effnet's 'SAME'-padding `Conv2dSame` is an `nn.Conv2d` in every other
    respect, so its nodes are recorded as one. Returns how many nodes were re-labelled."""
    plain = f"{nn.Conv2d.__module__}.{nn.Conv2d.__qualname__}"
    same = f"{Conv2dSame.__module__}.{Conv2dSame.__qualname__}"
    changed = 0
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and stack:
            key, (fqn, cls) = list(stack.items())[-1]
            if cls is Conv2dSame or cls == same:
                stack[key] = (fqn, plain if isinstance(cls, str) else nn.Conv2d)
                changed += 1
    return changed


def _squeeze_excite_convs(model: nn.Module) -> list[str]:
    """The SE convs stay fp32: they run on pooled (B, C, 1, 1) vectors, a fraction of a percent of the
    MACs, and their sigmoid gate scales whole channels, so their rounding costs the most accuracy (on a
    digits-trained efficientnet_b1_pruned calibrated on 256 images, 97.8% of the fp32 top-1 predictions
    kept with them in int8, 98.9% without)."""
    return [f"{name}.{conv}" for name, m in model.named_modules() if isinstance(m, SqueezeExcite)
            for conv in ("conv_reduce", "conv_expand")]


class PointwiseExpertBank(nn.Module):
    """A pointwise `CondConv2d` (BatchNorm folded) as one static conv over its expert bank, which
    PT2E quantizes like any other conv (a oneDNN int8 conv once compiled). CondConv is linear in its
    weights, conv(x, sum_e r_e W_e) = sum_e r_e conv(x, W_e), so this is exact in fp32, at E times the
    MACs; the E copies go on the narrower side: an expanding conv takes the input once per expert,
    scaled by its routing weight (E*I channels in), a projecting one gives E*O channels out, summed
    with the routing weights. Inference only."""

    def __init__(self, conv: CondConv2d) -> None:
        super().__init__()
        if conv.kernel != 1 or conv.groups != 1:
            raise ValueError("PointwiseExpertBank: a 1x1, ungrouped CondConv2d only")
        e, o, i = conv.experts, conv.out_chs, conv.in_chs
        self.experts, self.out_chs, self.expand_input = e, o, i <= o
        bank = conv.weight.detach().view(e, o, i)
        bias = conv.bias.detach() if conv.bias is not None else bank.new_zeros(o)
        if self.expand_input:
            self.conv = nn.Conv2d(e * i, o, 1, bias=True)
            weight = bank.permute(1, 0, 2).reshape(o, e * i)
        else:
            self.conv = nn.Conv2d(i, e * o, 1, bias=False)
            weight = bank.reshape(e * o, i)
        with torch.no_grad():
            self.conv.weight.copy_(weight.view(*weight.shape, 1, 1))
            if self.expand_input:
                self.conv.bias.copy_(bias)
        self.bias = None if self.expand_input else nn.Parameter(bias, requires_grad=False)
        self.requires_grad_(False)

    def forward(self, x: Tensor, routing: Tensor) -> Tensor:
        b, e = x.shape[0], self.experts
        if self.expand_input:
            scaled = x.unsqueeze(1) * routing.view(b, e, 1, 1, 1).to(x.dtype)  # (B, E, I, H, W)
            return self.conv(scaled.flatten(1, 2))
        y = self.conv(x)
        y = y.view(b, e, self.out_chs, y.shape[2], y.shape[3]) * routing.view(b, e, 1, 1, 1).to(y.dtype)
        return y.sum(1) + self.bias.view(1, -1, 1, 1)


def _pointwise_expert_banks(model: nn.Module) -> None:
    """Swap every pointwise CondConv2d of `model` (an inference copy) for a PointwiseExpertBank."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, CondConv2d) and child.kernel == 1 and child.groups == 1:
                setattr(module, name, PointwiseExpertBank(child))


@torch.no_grad()
def quantize_int8(model: nn.Module, batches: list[Tensor], compile: bool = True,
                  module: nn.Module | None = None) -> QuantizedEfficientNet:
    """Quantize an fp32, BatchNorm-folded, contiguous inference copy (see `optimize_for_inference`) to int8,
    calibrated on `batches` (from `calibration_batches`), which fix the input (H, W). `module`, when
    given, is what gets quantized instead of `model` itself: a wrapper around `model` with other
    outputs (the server's features and logits in one pass). `model` is changed: its pointwise
    CondConv convs become `PointwiseExpertBank`s."""
    quantize_pt2e = require("torchao.quantization.pt2e.quantize_pt2e", extra="int8", purpose="int8 quantization")
    x86 = require("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer", extra="int8",
                  purpose="int8 quantization")
    pt2e = require("torchao.quantization.pt2e", extra="int8", purpose="int8 quantization")
    first = batches[0]
    size = (int(first.shape[-2]), int(first.shape[-1]))
    # batch 2 to record: a batch of 1 would be specialised into the graph as a constant
    example = first[:2] if first.shape[0] >= 2 else first.expand(2, -1, -1, -1)
    batch = torch.export.Dim("batch", min=1, max=4096)
    _pointwise_expert_banks(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export's and the quantizer's deprecation chatter
        try:
            source = module if module is not None else model
            program = torch.export.export(source, (example,), dynamic_shapes={"x": {0: batch}}).module()
        except Exception as e:  # noqa: BLE001 - export raises many internal types
            raise EffnetError(f"int8: exporting the model for quantization failed: {type(e).__name__}: {e}") from e
        _mark_convs_as_conv2d(program)
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
        for name in _squeeze_excite_convs(source):
            quantizer.set_module_name_qconfig(name, None)
        prepared = quantize_pt2e.prepare_pt2e(program, quantizer)
        for x in batches:
            prepared(x)
        converted = quantize_pt2e.convert_pt2e(prepared)
        pt2e.move_exported_model_to_eval(converted)
    program = torch.compile(converted, dynamic=False) if compile else converted
    return QuantizedEfficientNet(program, model, size, compiled=compile,
                                 calibration_images=sum(int(x.shape[0]) for x in batches))
