"""Layers the blocks are made of: TF 'SAME' convolution, CondConv, squeeze-and-excitation, drop path."""

# no `from __future__ import annotations`: TorchScript reads these annotations as objects
import math
from typing import Callable, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels

# What FX tracing must not enter, registered as timm registers its notrace lists: functions here are
# also wrapped with torch.fx.wrap (so plain torch.fx.symbolic_trace records them as calls), and
# effnet's FX feature extraction treats both as leaves. They branch on input sizes or memory layout,
# which a symbolic trace cannot see.
_NOTRACE_MODULES: set[type[nn.Module]] = set()
_NOTRACE_FUNCTIONS: set[Callable] = set()


def register_notrace_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Mark a module class as a leaf for effnet's FX feature extraction (timm's decorator of that name)."""
    _NOTRACE_MODULES.add(cls)
    return cls


def register_notrace_function(fn: Callable) -> Callable:
    """Mark a function as a leaf for FX tracing; the defining module must also `torch.fx.wrap` it."""
    _NOTRACE_FUNCTIONS.add(fn)
    return fn


def get_notrace_modules() -> list[type[nn.Module]]:
    """Module classes FX feature extraction does not trace into."""
    return list(_NOTRACE_MODULES)


def get_notrace_functions() -> list[Callable]:
    """Functions FX tracing records as single calls."""
    return list(_NOTRACE_FUNCTIONS)


def same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """TensorFlow 'SAME' padding along one axis: (before, after); the odd pixel goes after."""
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Pad a (B, C, H, W) tensor so a strided conv matches TF 'SAME' at this input size."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top + bottom + left + right == 0:
        return x
    return F.pad(x, [left, right, top, bottom])


def mean_hw(x: Tensor, keepdim: bool = False) -> Tensor:
    """Mean over height and width, as a sum times 1/(H*W). Equal to `x.mean((2, 3))` within a rounding, but
    its gradient is a broadcast view of the (B, C) gradient, where mean's own backward writes out an NCHW
    tensor: in a channels-last model that gradient then meets channels-last ones (the other use of a
    squeeze-and-excitation input, a BatchNorm's saved input) and sends PyTorch down its slow strided
    paths, 4x slower on a squeeze-and-excitation backward at 80x80."""
    return x.sum((2, 3), keepdim=keepdim) * (1.0 / (x.shape[2] * x.shape[3]))


@torch.jit.unused
def _tracing() -> bool:
    """True while torch.compile, torch.export, the ONNX exporter or TorchScript tracing records
    the graph: CondConv then uses formulations without a batch-sized group count."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export())


@register_notrace_function
@torch.fx.wrap
def _static_or_same_pad(x: Tensor, kernel: int, stride: int, static_pad: Optional[Tuple[int, int, int, int]],
                        static_size: Optional[Tuple[int, int]]) -> Tensor:
    """TF 'SAME' padding, taken from `static_pad` when the input has the size it was fixed for."""
    if static_pad is not None and static_size is not None and (
            x.shape[-2] == static_size[0] and x.shape[-1] == static_size[1]):
        if static_pad[0] + static_pad[1] + static_pad[2] + static_pad[3] == 0:
            return x
        return F.pad(x, [static_pad[0], static_pad[1], static_pad[2], static_pad[3]])
    return pad_same(x, kernel, stride)


@torch.jit.unused
def _native_depthwise(x: Tensor, weight: Tensor, bias: Optional[Tensor], kernel: int, stride: int,
                      per_sample: bool) -> Optional[Tensor]:
    """The 'SAME' depthwise conv from effnet's native kernels where they apply (`effnet.kernels.wanted`: on the
    CPU, channels-last), else None: the caller's own formulation runs."""
    if not kernels.wanted(x, weight, per_sample):
        return None
    from .kernels.depthwise import depthwise_conv2d  # imported here: that module imports this one
    return depthwise_conv2d(x, weight, bias, kernel, stride, per_sample)


@register_notrace_function
@torch.fx.wrap
def condconv_pointwise(x: Tensor, routing: Tensor, bank: Tensor, bias: Optional[Tensor], out_chs: int) -> Tensor:
    """Per-sample 1x1 conv as one batched matmul, in whichever memory format `x` has (channels-last inputs
    give channels-last outputs without a copy). Each sample's kernel is `routing` (B, E) @ `bank` (E, O*I)."""
    B, C, H, W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    E = bank.shape[0]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # (B, H*W, I) @ (B, I, O): the channels-last memory is already (B, H*W, C)
        if torch.is_grad_enabled() and bank.requires_grad and B > E:
            # in training the kernels are mixed in (I, O) order: the gradient of (B, O, I) kernels taken
            # transposed would be copied back in full, and transposing the bank moves B/E times fewer numbers
            w = (routing @ bank.view(E, out_chs, C).transpose(1, 2).reshape(E, C * out_chs)).view(B, C, out_chs)
        else:
            w = (routing @ bank).view(B, out_chs, C).transpose(1, 2)  # (B, I, O), a view the matmul takes as is
        flat = x.permute(0, 2, 3, 1).reshape(B, H * W, C)
        out = torch.bmm(flat, w) if bias is None else torch.baddbmm(bias.view(1, 1, -1), flat, w)
        return out.view(B, H, W, out_chs).permute(0, 3, 1, 2)
    w = (routing @ bank).view(B, out_chs, C)  # (B, O, I)
    flat = x.reshape(B, C, H * W)
    if bias is None:
        out = torch.bmm(w, flat)  # (B, O, I) @ (B, I, H*W)
    else:
        out = torch.baddbmm(bias.view(1, -1, 1), w, flat)
    return out.view(B, out_chs, H, W)


@register_notrace_function
@torch.fx.wrap
def condconv_grouped(x: Tensor, weight: Tensor, bias: Optional[Tensor], out_chs: int, groups: int,
                     kernel: int, stride: int, pad: int) -> Tensor:
    """Per-sample conv as one conv over the batch folded into channels, with groups * batch groups
    (`x` already 'SAME'-padded where strided). `weight`: (B, O*I/g*k*k)."""
    B, C = x.shape[0], x.shape[1]
    w = weight.view(B * out_chs, C // groups, kernel, kernel)  # (B*O, I/g, k, k)
    b = None if bias is None else bias.repeat(B)
    out = F.conv2d(x.contiguous().view(1, B * C, x.shape[2], x.shape[3]), w, b, stride=stride,
                   padding=pad, groups=B * groups)  # (1, B*O, H', W')
    return out.view(B, out_chs, out.shape[2], out.shape[3])


@register_notrace_function
@torch.fx.wrap
def condconv_depthwise_taps(x: Tensor, weight: Tensor, bias: Optional[Tensor], kernel: int, stride: int,
                            pad: int) -> Tensor:
    """Per-sample depthwise conv as sum_{i,j} shift_{i,j}(x) * w[b, c, i, j]: no batch-sized group
    count, so a recorded graph (torch.compile, export) keeps the batch dimension dynamic."""
    k, s = kernel, stride
    if pad:
        x = F.pad(x, [pad, pad, pad, pad])
    h_out = (x.shape[-2] - k) // s + 1
    w_out = (x.shape[-1] - k) // s + 1
    w = weight.view(x.shape[0], x.shape[1], k * k, 1, 1)
    out = x[:, :, 0:(h_out - 1) * s + 1:s, 0:(w_out - 1) * s + 1:s] * w[:, :, 0]
    for t in range(1, k * k):
        i, j = t // k, t % k
        out = out + x[:, :, i:i + (h_out - 1) * s + 1:s, j:j + (w_out - 1) * s + 1:s] * w[:, :, t]
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


@register_notrace_module
class Conv2dSame(nn.Conv2d):
    """Conv2d with TF 'SAME' padding, which the published weights were trained with.

    For stride 1 and an odd kernel it is ordinary symmetric padding. Strided convs pad
    asymmetrically depending on the input size, so they pad in forward; `set_static_pad` fixes
    that padding for one input size (see `effnet.optimize_for_inference`); other sizes still pad
    dynamically, so results never depend on it.
    """

    static_pad: Optional[Tuple[int, int, int, int]]
    static_size: Optional[Tuple[int, int]]

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__(in_chs, out_chs, kernel, stride, padding=(kernel - 1) // 2 if stride == 1 else 0,
                         groups=groups, bias=bias)
        self.dynamic_pad = stride > 1
        self.depthwise = groups == in_chs == out_chs and groups > 1
        self.static_pad = None
        self.static_size = None

    def set_static_pad(self, height: int, width: int) -> None:
        """Fix the padding for (height, width) inputs; a symmetric one moves into the conv itself."""
        if not self.dynamic_pad:
            return
        top, bottom = same_padding(height, self.kernel_size[0], self.stride[0])
        left, right = same_padding(width, self.kernel_size[1], self.stride[1])
        self.static_pad, self.static_size = (left, right, top, bottom), (height, width)

    def forward(self, x: Tensor) -> Tensor:
        if self.depthwise and not torch.jit.is_scripting():
            y = _native_depthwise(x, self.weight, self.bias, self.kernel_size[0], self.stride[0], False)
            if y is not None:
                return y
        if self.dynamic_pad:
            x = _static_or_same_pad(x, self.kernel_size[0], self.stride[0], self.static_pad, self.static_size)
        return self._conv_forward(x, self.weight, self.bias)


@register_notrace_module
class CondConv2d(nn.Module):
    """Conditionally parameterised convolution (Yang et al., 2019).

    Each sample gets its own kernel, a routing-weighted sum of `experts` kernels:
    W_b = sum_e routing[b, e] * W_e. The bank is stored flat, (experts, out * in/groups * k * k),
    as in the published checkpoints. No sample ever sees another sample's kernel:

    - pointwise convs are one batched matmul, in whichever memory format the input has
      (channels-last inputs give channels-last outputs without a copy);
    - depthwise convs of channels-last inputs on the CPU run in effnet's native kernels where they are
      built (`effnet.kernels`): channels-last, no per-sample grouping;
    - otherwise depthwise convs are one grouped conv over batch * channels in eager mode; while a graph is
      being recorded (torch.compile, export) they are a sum over the k*k kernel taps of shifted
      inputs times per-sample tap weights, which has no batch-sized group count, so the batch
      dimension stays dynamic (and the compiler fuses the taps into one loop). A compiled inference
      copy, whose batch size is fixed, keeps the grouped conv (`dynamic_batch` False).

    `bias` is None unless BatchNorm was folded in (`effnet.optimize_for_inference`).
    """

    static_pad: Optional[Tuple[int, int, int, int]]
    static_size: Optional[Tuple[int, int]]

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1,
                 experts: int = 4) -> None:
        super().__init__()
        self.in_chs, self.out_chs, self.kernel, self.stride, self.groups = in_chs, out_chs, kernel, stride, groups
        self.experts = experts
        self.weight_shape = (out_chs, in_chs // groups, kernel, kernel)
        self.weight = nn.Parameter(torch.empty(experts, math.prod(self.weight_shape)))
        self.register_parameter("bias", None)  # a Parameter only once BatchNorm is folded in
        self.static_pad = None
        self.static_size = None
        # False once a compiled inference copy fixes the batch size (optimize_for_inference(compile=True)):
        # the grouped conv is then the faster formulation, and compiles in half the time
        self.dynamic_batch = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal per expert, fan-out mode, as for the static convs."""
        fan_out = self.out_chs // self.groups * self.kernel * self.kernel
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out))

    def set_static_pad(self, height: int, width: int) -> None:
        """Fix the 'SAME' padding for (height, width) inputs (strided convs only)."""
        if self.stride > 1:
            top, bottom = same_padding(height, self.kernel, self.stride)
            left, right = same_padding(width, self.kernel, self.stride)
            self.static_pad, self.static_size = (left, right, top, bottom), (height, width)

    def forward(self, x: Tensor, routing: Tensor) -> Tensor:
        routing = routing.to(self.weight.dtype)
        if self.kernel == 1 and self.groups == 1:
            return condconv_pointwise(x, routing, self.weight, self.bias, self.out_chs)
        weight = routing @ self.weight  # (B, E) @ (E, O*I*k*k) -> (B, O*I*k*k)
        depthwise = self.groups == self.in_chs and self.in_chs == self.out_chs
        if depthwise and not torch.jit.is_scripting():
            y = _native_depthwise(x, weight, self.bias, self.kernel, self.stride, True)
            if y is not None:
                return y
        if self.stride > 1:
            x = _static_or_same_pad(x, self.kernel, self.stride, self.static_pad, self.static_size)
        pad = (self.kernel - 1) // 2 if self.stride == 1 else 0
        if depthwise and self.dynamic_batch and not torch.jit.is_scripting() and _tracing():
            return condconv_depthwise_taps(x, weight, self.bias, self.kernel, self.stride, pad)
        return condconv_grouped(x, weight, self.bias, self.out_chs, self.groups, self.kernel, self.stride, pad)

    def extra_repr(self) -> str:
        return (f"{self.in_chs}, {self.out_chs}, kernel_size={self.kernel}, stride={self.stride}, "
                f"groups={self.groups}, experts={self.experts}")


class Routing(nn.Linear):
    """CondConv routing layer: pooled block input (B, C) -> expert logits (B, E); the block applies the
    sigmoid. A Linear in every other respect; its own class only for its initialisation."""

    def reset_parameters(self) -> None:
        """Uniform in 1/sqrt(fan_in + fan_out), zero bias, as the reference initialises routing. A
        classifier-sized range (1/sqrt(experts)) starts the sigmoids saturated: sharp, input-dependent
        kernel mixing at init, ~4x the reference's gradients, and training from scratch barely moves."""
        bound = 1.0 / math.sqrt(self.in_features + self.out_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)


def make_conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1,
              experts: int = 0) -> Conv2dSame | CondConv2d:
    """A static 'SAME' conv, or a CondConv one with `experts` experts (no bias either way)."""
    if experts:
        return CondConv2d(in_chs, out_chs, kernel, stride, groups, experts)
    return Conv2dSame(in_chs, out_chs, kernel, stride, groups)


class SqueezeExcite(nn.Module):
    """Channel gating from globally pooled features (Hu et al., 2018)."""

    def __init__(self, chs: int, rd_chs: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = mean_hw(x, keepdim=True)  # (B, C, 1, 1)
        s = self.conv_expand(F.silu(self.conv_reduce(s)))
        return x * s.sigmoid()


@register_notrace_module  # a leaf, so an FX graph still drops paths only in train mode
class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch for whole samples while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GlobalPool(nn.Module):
    """Global pooling by name: 'avg', 'max', 'avgmax' (their mean), 'catavgmax' (concatenated),
    or '' (none: the feature map is passed through)."""

    TYPES = ("avg", "max", "avgmax", "catavgmax", "")

    def __init__(self, pool_type: str = "avg") -> None:
        super().__init__()
        if pool_type not in self.TYPES:
            raise ValueError(f"unknown global_pool {pool_type!r}; expected one of {self.TYPES}")
        self.pool_type = pool_type

    def feat_mult(self) -> int:
        """How many times the channel count the pooled output has."""
        return 2 if self.pool_type == "catavgmax" else 1

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_type == "":
            return x
        if self.pool_type == "avg":
            return mean_hw(x)
        mx = x.amax((2, 3))
        if self.pool_type == "max":
            return mx
        avg = mean_hw(x)
        return 0.5 * (avg + mx) if self.pool_type == "avgmax" else torch.cat([avg, mx], 1)

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"
