"""EfficientNet's two blocks. Attribute names follow the published checkpoints' keys."""

# no `from __future__ import annotations`: TorchScript reads these annotations as objects
from contextlib import nullcontext
from typing import Any, ContextManager

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import BlockSpec
from .layers import Conv2dSame, DropPath, Routing, SqueezeExcite, make_conv, mean_hw


def batch_norm(chs: int, eps: float, momentum: float) -> nn.BatchNorm2d:
    """BatchNorm with the variant's epsilon (1e-3: TensorFlow's, which the weights need)."""
    return nn.BatchNorm2d(chs, eps=eps, momentum=momentum)


class DepthwiseSeparable(nn.Module):
    """First-stage block: depthwise conv, SE, pointwise projection (no expansion)."""

    __jit_ignored_attributes__ = ["spec"]
    # (conv, the BatchNorm that normalises its output): what optimize_for_inference folds
    conv_bn_pairs = (("conv_dw", "bn1"), ("conv_pw", "bn2"))

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

    __jit_ignored_attributes__ = ["spec"]
    conv_bn_pairs = (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))

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
        return torch.sigmoid(self.routing_fn(mean_hw(x)))

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


# symbolic tracing records no checkpoint calls (newer torch tells symbolic tracing and export apart)
_fx_tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing",
                      torch.fx._symbolic_trace.is_fx_tracing)


class _KeepBatchNormStats:
    """Context for a checkpointed block's recomputation: BatchNorm running statistics are put back
    as the original forward left them, so checkpointing updates them once, as plain training does."""

    def __init__(self, module: nn.Module) -> None:
        self.norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d) and m.training
                      and m.track_running_stats]
        self.saved: list[list[Tensor]] = []

    def __enter__(self) -> None:
        self.saved = [[b.clone() for b in m.buffers(recurse=False)] for m in self.norms]

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for m, saved in zip(self.norms, self.saved):
                for b, s in zip(m.buffers(recurse=False), saved):
                    b.copy_(s)
        self.saved = []


class Stage(nn.Sequential):
    """The blocks of one stage; with `grad_checkpointing` each block's activations are recomputed in
    backward instead of stored (set through the model's `set_grad_checkpointing`)."""

    def __init__(self, *blocks: Any) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self.grad_checkpointing and self._can_checkpoint():
            return self._checkpointed(x)
        for block in self:
            x = block(x)
        return x

    @torch.jit.unused
    def _can_checkpoint(self) -> bool:
        return torch.is_grad_enabled() and not _fx_tracing()

    @torch.jit.unused
    def _checkpointed(self, x: Tensor) -> Tensor:
        for block in self:
            def contexts(block: nn.Module = block) -> tuple[ContextManager, ContextManager]:
                return nullcontext(), _KeepBatchNormStats(block)
            x = checkpoint(block, x, use_reentrant=False, context_fn=contexts)
        return x


def make_block(spec: BlockSpec, bn_eps: float, bn_momentum: float, drop_path: float = 0.0) -> nn.Module:
    """The block a spec describes."""
    cls = DepthwiseSeparable if spec.block == "ds" else InvertedResidual
    return cls(spec, bn_eps, bn_momentum, drop_path)
