"""EfficientNet's two blocks. Attribute names follow the published checkpoints' keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import BlockSpec
from .layers import Conv2dSame, DropPath, Routing, SqueezeExcite, make_conv


def batch_norm(chs: int, eps: float, momentum: float) -> nn.BatchNorm2d:
    """BatchNorm with the variant's epsilon (1e-3: TensorFlow's, which the weights need)."""
    return nn.BatchNorm2d(chs, eps=eps, momentum=momentum)


class DepthwiseSeparable(nn.Module):
    """First-stage block: depthwise conv, SE, pointwise projection (no expansion)."""

    def __init__(self, spec: BlockSpec, bn_eps: float, bn_momentum: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.spec = spec
        self.conv_dw = Conv2dSame(spec.in_chs, spec.in_chs, spec.kernel, spec.stride, groups=spec.in_chs)
        self.bn1 = batch_norm(spec.in_chs, bn_eps, bn_momentum)
        self.se = SqueezeExcite(spec.in_chs, spec.se_chs)
        self.conv_pw = Conv2dSame(spec.in_chs, spec.out_chs, 1)
        self.bn2 = batch_norm(spec.out_chs, bn_eps, bn_momentum)
        self.has_skip = spec.stride == 1 and spec.in_chs == spec.out_chs
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        # depthwise
        x = F.silu(self.bn1(self.conv_dw(x)))
        # squeeze and excitation
        x = self.se(x)
        # project (linear: no activation)
        x = self.bn2(self.conv_pw(x))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expand, depthwise, SE, 1x1 project, with a residual when shapes allow.

    With `spec.experts > 0` the three convs are CondConv: one routing vector per sample, computed
    from the block's globally pooled input, weights the experts of all three (SE stays static).
    """

    def __init__(self, spec: BlockSpec, bn_eps: float, bn_momentum: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.spec = spec
        e = spec.experts
        self.conv_pw = make_conv(spec.in_chs, spec.mid_chs, 1, experts=e)
        self.bn1 = batch_norm(spec.mid_chs, bn_eps, bn_momentum)
        self.conv_dw = make_conv(spec.mid_chs, spec.mid_chs, spec.kernel, spec.stride,
                                 groups=spec.mid_chs, experts=e)
        self.bn2 = batch_norm(spec.mid_chs, bn_eps, bn_momentum)
        self.se = SqueezeExcite(spec.mid_chs, spec.se_chs)
        self.conv_pwl = make_conv(spec.mid_chs, spec.out_chs, 1, experts=e)
        self.bn3 = batch_norm(spec.out_chs, bn_eps, bn_momentum)
        self.has_skip = spec.stride == 1 and spec.in_chs == spec.out_chs
        self.drop_path = DropPath(drop_path)
        # registered last so the state-dict order matches the published checkpoints
        self.routing_fn = Routing(spec.in_chs, e) if e else None

    def routing(self, x: Tensor) -> Tensor:
        """Per-sample expert weights in (0, 1): (B, C, H, W) -> (B, E)."""
        assert self.routing_fn is not None
        return torch.sigmoid(self.routing_fn(x.mean((2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        # CondConv convs take the routing weights as a second argument; static convs take none.
        r = (self.routing(x),) if self.routing_fn is not None else ()
        # expand
        x = F.silu(self.bn1(self.conv_pw(x, *r)))
        # depthwise
        x = F.silu(self.bn2(self.conv_dw(x, *r)))
        # squeeze and excitation
        x = self.se(x)
        # project (linear: no activation)
        x = self.bn3(self.conv_pwl(x, *r))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


def make_block(spec: BlockSpec, bn_eps: float, bn_momentum: float, drop_path: float = 0.0) -> nn.Module:
    """The block a spec describes."""
    cls = DepthwiseSeparable if spec.block == "ds" else InvertedResidual
    return cls(spec, bn_eps, bn_momentum, drop_path)
