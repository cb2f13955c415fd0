"""Layers the blocks are made of: TF 'SAME' convolution, CondConv, squeeze-and-excitation, drop path."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding along one axis: (before, after); the odd pixel goes after."""
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Pad a (B, C, H, W) tensor so a strided conv matches TF 'SAME' at this input size."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom))


def _tracing() -> bool:
    """True while torch.compile, torch.export, the ONNX exporter or TorchScript tracing records
    the graph: CondConv then uses formulations without a batch-sized group count."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export())


def _static_or_same_pad(x: Tensor, kernel: int, stride: int, static_pad: tuple[int, ...] | None,
                        static_size: tuple[int, int] | None) -> Tensor:
    """TF 'SAME' padding, taken from `static_pad` when the input has the size it was fixed for."""
    if static_pad is not None and tuple(x.shape[-2:]) == static_size:
        return F.pad(x, static_pad) if any(static_pad) else x
    return pad_same(x, kernel, stride)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF 'SAME' padding, which the published weights were trained with.

    For stride 1 and an odd kernel it is ordinary symmetric padding. Strided convs pad
    asymmetrically depending on the input size, so they pad in forward; `set_static_pad` fixes
    that padding for one input size (see `effnet.optimize_for_inference`); other sizes still pad
    dynamically, so results never depend on it.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__(in_chs, out_chs, kernel, stride, padding=(kernel - 1) // 2 if stride == 1 else 0,
                         groups=groups, bias=bias)
        self.dynamic_pad = stride > 1
        self.static_pad: tuple[int, int, int, int] | None = None
        self.static_size: tuple[int, int] | None = None

    def set_static_pad(self, height: int, width: int) -> None:
        """Fix the padding for (height, width) inputs; a symmetric one moves into the conv itself."""
        if not self.dynamic_pad:
            return
        top, bottom = same_padding(height, self.kernel_size[0], self.stride[0])
        left, right = same_padding(width, self.kernel_size[1], self.stride[1])
        self.static_pad, self.static_size = (left, right, top, bottom), (height, width)

    def forward(self, x: Tensor) -> Tensor:
        if self.dynamic_pad:
            x = _static_or_same_pad(x, self.kernel_size[0], self.stride[0], self.static_pad, self.static_size)
        return self._conv_forward(x, self.weight, self.bias)


class CondConv2d(nn.Module):
    """Conditionally parameterised convolution (Yang et al., 2019).

    Each sample gets its own kernel, a routing-weighted sum of `experts` kernels:
    W_b = sum_e routing[b, e] * W_e. The bank is stored flat, (experts, out * in/groups * k * k),
    as in the published checkpoints. No sample ever sees another sample's kernel:

    - pointwise convs are one batched matmul, in whichever memory format the input has
      (channels-last inputs give channels-last outputs without a copy);
    - depthwise convs are one grouped conv over batch * channels in eager mode; while a graph is
      being recorded (torch.compile, export) they are a sum over the k*k kernel taps of shifted
      inputs times per-sample tap weights, which has no batch-sized group count, so the batch
      dimension stays dynamic (and the compiler fuses the taps into one loop).

    `bias` is None unless BatchNorm was folded in (`effnet.optimize_for_inference`).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1,
                 experts: int = 4) -> None:
        super().__init__()
        self.in_chs, self.out_chs, self.kernel, self.stride, self.groups = in_chs, out_chs, kernel, stride, groups
        self.experts = experts
        self.weight_shape = (out_chs, in_chs // groups, kernel, kernel)
        self.weight = nn.Parameter(torch.empty(experts, math.prod(self.weight_shape)))
        self.register_parameter("bias", None)  # a Parameter only once BatchNorm is folded in
        self.static_pad: tuple[int, int, int, int] | None = None
        self.static_size: tuple[int, int] | None = None
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
        weight = routing.to(self.weight.dtype) @ self.weight  # (B, E) @ (E, O*I*k*k) -> (B, O*I*k*k)
        if self.kernel == 1 and self.groups == 1:
            return self._pointwise(x, weight)
        if self.groups != self.in_chs or self.in_chs != self.out_chs:
            return self._grouped(x, weight)
        if self.stride > 1:
            x = _static_or_same_pad(x, self.kernel, self.stride, self.static_pad, self.static_size)
            pad = 0
        else:
            pad = (self.kernel - 1) // 2
        if _tracing():
            return self._depthwise_taps(x, weight, pad)
        return self._grouped(x, weight, padded=True)

    def _pointwise(self, x: Tensor, weight: Tensor) -> Tensor:
        B, C, H, W = x.shape
        w = weight.view(B, self.out_chs, C)  # (B, O, I)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # (B, H*W, I) @ (B, I, O): the channels-last memory is already (B, H*W, C)
            flat = x.permute(0, 2, 3, 1).reshape(B, H * W, C)
            if self.bias is None:
                out = torch.bmm(flat, w.transpose(1, 2))
            else:
                out = torch.baddbmm(self.bias.view(1, 1, -1), flat, w.transpose(1, 2))
            return out.view(B, H, W, self.out_chs).permute(0, 3, 1, 2)
        flat = x.reshape(B, C, H * W)
        if self.bias is None:
            out = torch.bmm(w, flat)  # (B, O, I) @ (B, I, H*W)
        else:
            out = torch.baddbmm(self.bias.view(1, -1, 1), w, flat)
        return out.view(B, self.out_chs, H, W)

    def _grouped(self, x: Tensor, weight: Tensor, padded: bool = False) -> Tensor:
        """One conv over the batch folded into channels, with groups * batch groups."""
        B, C = x.shape[:2]
        if not padded and self.stride > 1:
            x = _static_or_same_pad(x, self.kernel, self.stride, self.static_pad, self.static_size)
        pad = (self.kernel - 1) // 2 if self.stride == 1 else 0
        weight = weight.view(B * self.out_chs, *self.weight_shape[1:])  # (B*O, I/g, k, k)
        bias = None if self.bias is None else self.bias.repeat(B)
        out = F.conv2d(x.contiguous().view(1, B * C, *x.shape[-2:]), weight, bias, stride=self.stride,
                       padding=pad, groups=B * self.groups)  # (1, B*O, H', W')
        return out.view(B, self.out_chs, *out.shape[-2:])

    def _depthwise_taps(self, x: Tensor, weight: Tensor, pad: int) -> Tensor:
        """Depthwise conv as sum_{i,j} shift_{i,j}(x) * w[b, c, i, j]: no batch-sized groups."""
        k, s = self.kernel, self.stride
        if pad:
            x = F.pad(x, (pad, pad, pad, pad))
        h_out = (x.shape[-2] - k) // s + 1
        w_out = (x.shape[-1] - k) // s + 1
        w = weight.view(x.shape[0], self.out_chs, k * k, 1, 1)
        out = None
        for i in range(k):
            for j in range(k):
                tap = x[:, :, i:i + (h_out - 1) * s + 1:s, j:j + (w_out - 1) * s + 1:s] * w[:, :, i * k + j]
                out = tap if out is None else out + tap
        assert out is not None
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

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
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        s = self.conv_expand(F.silu(self.conv_reduce(s)))
        return x * s.sigmoid()


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
            return x.mean((2, 3))
        mx = x.amax((2, 3))
        if self.pool_type == "max":
            return mx
        avg = x.mean((2, 3))
        return 0.5 * (avg + mx) if self.pool_type == "avgmax" else torch.cat([avg, mx], 1)

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"
