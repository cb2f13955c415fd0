"""Depthwise convolution on the CPU, channels-last: a custom op (`effnet::depthwise_conv2d`) with its own
backward, which `effnet.layers` takes where `effnet.kernels.wanted` says: static convs in training,
CondConv's per-sample convs always (eager and under torch.compile, which calls the op as is).

Which kernel computes what, from side-by-side timings against oneDNN on the shapes of the six models
(batch 32, 160 px; 2-core AMD EPYC, Zen 4; `scripts/bench_depthwise.py`):

- forward of a static conv: oneDNN (as fast or faster);
- forward of a per-sample (CondConv) conv: ours, channels-last, instead of a grouped conv over
  batch x channels in NCHW with a layout copy on each side;
- input gradient: oneDNN for fp32 at stride 1; ours for strided convs (no padded copy of the input
  to make) and for bf16 (oneDNN's bf16 strided input gradient is 5-15x slower than ours);
- weight gradient: oneDNN for 3x3 kernels at stride 1; ours otherwise (2-4x faster for 5x5 kernels
  in fp32, 5-15x in bf16, where oneDNN's runs at a few GFLOP/s).

Padding is TF 'SAME' (`effnet.layers.same_padding`), which for stride 1 and an odd kernel is the
symmetric padding of the static convs. fp32 results match PyTorch's convolution within float
rounding (about 1e-6 relative); bf16 accumulates in fp32 and rounds once per output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers import same_padding
from . import library

_CL = torch.channels_last


def geometry(height: int, width: int, kernel: int, stride: int) -> tuple[int, int, int, int, int, int]:
    """(out_h, out_w, pad_top, pad_left, pad_bottom, pad_right) of a 'SAME' conv."""
    top, bottom = same_padding(height, kernel, stride)
    left, right = same_padding(width, kernel, stride)
    return (height + stride - 1) // stride, (width + stride - 1) // stride, top, left, bottom, right


def _taps(weight: Tensor, per_sample: bool, batch: int, chs: int, kernel: int) -> Tensor:
    """The kernel(s) as the native code reads them: fp32, tap-major (B or 1, k*k, C)."""
    return weight.reshape(batch if per_sample else 1, chs, kernel * kernel).transpose(1, 2).float().contiguous()


def _like(t: Tensor, layout: Tensor | None = None) -> Tensor:
    """`t` with the exact strides the fake (meta) functions promise: those of `layout`, or channels-last.
    Compiled graphs check them, size-1 dimensions included."""
    want = torch.empty_like(layout) if layout is not None else torch.empty(t.shape, dtype=t.dtype, memory_format=_CL)
    if want.stride() == t.stride():
        return t
    return want.copy_(t)


def _call(fn: str, dtype: torch.dtype, *tensors: Tensor | None, per_sample: bool, dims: tuple[int, ...]) -> None:
    lib = library()
    ptrs = [None if t is None else t.data_ptr() for t in tensors]
    code = getattr(lib, fn)(int(dtype == torch.bfloat16), *ptrs, int(per_sample), *dims, torch.get_num_threads())
    if code:
        raise MemoryError(f"effnet native depthwise kernel {fn}: could not allocate its work buffer")


@torch.library.custom_op("effnet::depthwise_conv2d", mutates_args=())
def depthwise_conv2d_op(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: int, stride: int,
                        per_sample: bool) -> Tensor:
    """'SAME' depthwise conv of channels-last `x` (B, C, H, W): `weight` (C, 1, k, k), or (B, C*k*k) with
    `per_sample`; `bias` (C,) or None. Returns (B, C, H', W') channels-last in x's dtype."""
    B, C, H, W = x.shape
    Ho, Wo, pt, pl, pb, pr = geometry(H, W, kernel, stride)
    x = x.contiguous(memory_format=_CL)
    if not per_sample:
        padded = F.pad(x, [pl, pr, pt, pb]) if stride > 1 else x
        b = None if bias is None else bias.to(x.dtype)
        return _like(F.conv2d(padded, weight.to(x.dtype), b, stride, 0 if stride > 1 else kernel // 2, 1, C))
    y = torch.empty((B, C, Ho, Wo), dtype=x.dtype, memory_format=_CL)
    b = None if bias is None else bias.float().contiguous()
    _call("effnet_dw_fwd", x.dtype, x, _taps(weight, True, B, C, kernel), b, y, per_sample=True,
          dims=(B, H, W, C, Ho, Wo, kernel, stride, pt, pl))
    return y


@depthwise_conv2d_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: int, stride: int, per_sample: bool) -> Tensor:
    B, C, H, W = x.shape
    out = ((H + stride - 1) // stride, (W + stride - 1) // stride)
    return torch.empty((B, C, *out), dtype=x.dtype, device=x.device, memory_format=_CL)


@torch.library.custom_op("effnet::depthwise_conv2d_backward", mutates_args=())
def depthwise_conv2d_backward_op(grad: Tensor, x: Tensor, weight: Tensor, kernel: int, stride: int, per_sample: bool,
                                 need_input: bool, need_weight: bool) -> tuple[Tensor, Tensor]:
    """(grad_input, grad_weight) of `depthwise_conv2d_op`; an empty tensor for one not needed."""
    B, C, H, W = x.shape
    Ho, Wo, pt, pl, _, _ = geometry(H, W, kernel, stride)
    x, grad = x.contiguous(memory_format=_CL), grad.contiguous(memory_format=_CL)
    dims = (B, H, W, C, Ho, Wo, kernel, stride, pt, pl)
    onednn_input = need_input and not per_sample and stride == 1 and x.dtype == torch.float32
    onednn_weight = need_weight and not per_sample and stride == 1 and kernel == 3
    gx = gw = torch.empty(0, dtype=x.dtype)
    if onednn_input or onednn_weight:
        gx, gw, _ = torch.ops.aten.convolution_backward(
            grad, x, weight.to(x.dtype), None, [1, 1], [kernel // 2] * 2, [1, 1], False, [0, 0], C,
            [onednn_input, onednn_weight, False])
        gw = gw.to(weight.dtype) if onednn_weight else gw
    if need_input and not onednn_input:
        gx = torch.empty((B, C, H, W), dtype=x.dtype, memory_format=_CL)
        _call("effnet_dw_bwd_data", x.dtype, grad, _taps(weight, per_sample, B, C, kernel), gx,
              per_sample=per_sample, dims=dims)
    if need_weight and not onednn_weight:
        taps = torch.empty((B if per_sample else 1, kernel * kernel, C), dtype=torch.float32)
        _call("effnet_dw_bwd_weight", x.dtype, grad, x, taps, per_sample=per_sample, dims=dims)
        gw = taps.transpose(1, 2).reshape(weight.shape).to(weight.dtype)
    return (_like(gx) if need_input else torch.empty(0, dtype=x.dtype),
            _like(gw, weight) if need_weight else torch.empty(0, dtype=weight.dtype))


@depthwise_conv2d_backward_op.register_fake
def _(grad: Tensor, x: Tensor, weight: Tensor, kernel: int, stride: int, per_sample: bool,
      need_input: bool, need_weight: bool) -> tuple[Tensor, Tensor]:
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_CL) if need_input else x.new_empty(0)
    return gx, torch.empty_like(weight) if need_weight else weight.new_empty(0)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    x, weight, bias, kernel, stride, per_sample = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = (kernel, stride, per_sample)
    ctx.bias_shape = None if bias is None else bias.shape


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    need_input, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx, gw = depthwise_conv2d_backward_op(grad, x, weight, *ctx.geometry, need_input, need_weight)
    # the bias gradient is the output gradient summed over batch and pixels (a bias is only ever
    # folded in for inference, but a gradient asked for is computed)
    gb = grad.float().sum((0, 2, 3)).to(grad.dtype) if ctx.needs_input_grad[2] else None
    return gx if need_input else None, gw if need_weight else None, gb, None, None, None


depthwise_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: int, stride: int,
                     per_sample: bool) -> Tensor:
    """'SAME' depthwise conv through the native kernels (check `effnet.kernels.wanted` first), following CPU
    autocast: the input is cast to the autocast dtype, the kernel stays fp32 for the native code."""
    if torch.is_autocast_enabled("cpu"):
        x = x.to(torch.get_autocast_dtype("cpu"))
    return depthwise_conv2d_op(x, weight, bias, kernel, stride, per_sample)
