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


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF 'SAME' padding, which the published weights were trained with.

    For stride 1 and an odd kernel it is ordinary symmetric padding. Strided convs pad
    asymmetrically depending on the input size, so they pad in forward; `static_pad` can fix that
    padding into the conv when the input size is known (see `effnet.optimize_for_inference`).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__(in_chs, out_chs, kernel, stride, padding=(kernel - 1) // 2 if stride == 1 else 0,
                         groups=groups, bias=bias)
        self.dynamic_pad = stride > 1

    def forward(self, x: Tensor) -> Tensor:
        if self.dynamic_pad:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return self._conv_forward(x, self.weight, self.bias)


class CondConv2d(nn.Module):
    """Conditionally parameterised convolution (Yang et al., 2019).

    Each sample gets its own kernel, a routing-weighted sum of `experts` kernels:
    W_b = sum_e routing[b, e] * W_e. The bank is stored flat, (experts, out * in/groups * k * k),
    as in the published checkpoints. Pointwise convs run as one batched matmul and depthwise convs
    as one grouped conv over batch * channels, so no sample ever sees another sample's kernel.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1,
                 experts: int = 4) -> None:
        super().__init__()
        self.in_chs, self.out_chs, self.kernel, self.stride, self.groups = in_chs, out_chs, kernel, stride, groups
        self.experts = experts
        self.weight_shape = (out_chs, in_chs // groups, kernel, kernel)
        self.weight = nn.Parameter(torch.empty(experts, math.prod(self.weight_shape)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal per expert, fan-out mode, as for the static convs."""
        fan_out = self.out_chs // self.groups * self.kernel * self.kernel
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out))

    def forward(self, x: Tensor, routing: Tensor) -> Tensor:
        B, C, H, W = x.shape
        weight = routing @ self.weight  # (B, E) @ (E, O*I*k*k) -> (B, O*I*k*k)
        if self.kernel == 1 and self.groups == 1:
            weight = weight.view(B, self.out_chs, C)  # (B, O, I)
            out = torch.bmm(weight, x.flatten(2))  # (B, O, I) @ (B, I, H*W) -> (B, O, H*W)
            return out.view(B, self.out_chs, H, W)
        if self.stride > 1:
            x = pad_same(x, self.kernel, self.stride)
        weight = weight.view(B * self.out_chs, *self.weight_shape[1:])  # (B*O, I/g, k, k)
        out = F.conv2d(x.reshape(1, B * C, *x.shape[-2:]), weight, stride=self.stride,
                       padding=(self.kernel - 1) // 2 if self.stride == 1 else 0,
                       groups=B * self.groups)  # (1, B*O, H', W')
        return out.view(B, self.out_chs, *out.shape[-2:])

    def extra_repr(self) -> str:
        return (f"{self.in_chs}, {self.out_chs}, kernel_size={self.kernel}, stride={self.stride}, "
                f"groups={self.groups}, experts={self.experts}")


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
