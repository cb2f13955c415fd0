"""Coupled channel groups of an EfficientNet and the MACs each layer spends on them.

A channel can only be removed from every tensor that indexes it at once. Inside an inverted
residual block the expand conv's outputs, both BatchNorms, the depthwise conv, the SE gate and
the project conv's inputs share one index (the block's "mid" group). Across a stage, every
project conv writes into the same residual stream, so all of them, their BatchNorms and every
consumer of the stream (expand convs, CondConv routing layers, the head conv) share the stage's
output index (the "stage" group). The stem, the first stage and the head keep their widths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from ..blocks import InvertedResidual
from ..config import ModelConfig
from ..layers import CondConv2d
from ..model import EfficientNet

BN_ENTRIES = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class Member:
    """One tensor axis indexed by a group's channels.

    `bank` is set for CondConv weights: the flat (E, O*I/g*k*k) bank is viewed as
    (E, O, I/g, k, k) so that every expert is sliced the same way.
    """

    key: str  # state-dict key (parameter or buffer)
    axis: int  # the channel axis, in the viewed shape when `bank` is set
    bank: tuple[int, ...] | None = None


@dataclass
class ChannelGroup:
    """Channels that are kept or removed together."""

    name: str  # "blocks.S.I.mid" or "stageS.out"
    kind: Literal["mid", "stage"]
    stage: int
    index: int  # block index for mid groups, -1 for stage groups
    size: int
    members: list[Member] = field(default_factory=list)


@dataclass(frozen=True)
class LayerCost:
    """MACs of one layer at the original widths, and which groups they scale with.

    The count is bilinear in the widths: macs * (new_in / in) * (new_out / out), where a side
    without a group (None) is fixed.
    """

    name: str
    macs: int
    in_group: str | None
    out_group: str | None


def _conv_members(model: nn.Module, key: str, axis: int) -> Member:
    """A conv weight's channel axis: 0 (output) or 1 (input), banked for CondConv."""
    conv = model.get_submodule(key)
    if isinstance(conv, CondConv2d):
        return Member(f"{key}.weight", axis + 1, (conv.experts, *conv.weight_shape))
    return Member(f"{key}.weight", axis)


def _bn_members(key: str) -> list[Member]:
    return [Member(f"{key}.{entry}", 0) for entry in BN_ENTRIES]


def stage_roots(cfg: ModelConfig) -> list[int]:
    """For each stage, the stage whose output index it shares.

    A stage whose first block has a residual (stride 1, equal widths) adds its input to its
    output, so its width is tied to the previous stage's; with the EfficientNet table this never
    happens, but a custom table may do it.
    """
    firsts = {spec.stage: spec for spec in reversed(cfg.blocks())}
    roots: list[int] = []
    for s in range(len(cfg.stages)):
        first = firsts[s]
        roots.append(roots[s - 1] if s > 0 and first.stride == 1 and first.in_chs == first.out_chs else s)
    return roots


def _block_in_group(roots: list[int], s: int, i: int) -> str | None:
    """The group of a block's input channels (None: the stem or the first stage, kept)."""
    src = roots[s] if i > 0 else (roots[s - 1] if s > 0 else None)
    return None if src is None or src == 0 else f"stage{src}.out"


def channel_groups(model: EfficientNet) -> list[ChannelGroup]:
    """The prunable groups of `model`, in execution order (mid groups, then stage groups)."""
    if not isinstance(model, EfficientNet):
        raise TypeError(f"pruning needs an effnet EfficientNet classifier, got {type(model).__name__}")
    roots = stage_roots(model.cfg)
    stage_groups: dict[str, ChannelGroup] = {}
    mid_groups: list[ChannelGroup] = []
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            p = f"blocks.{s}.{i}"
            in_group = _block_in_group(roots, s, i)
            if not isinstance(block, InvertedResidual):
                continue  # depthwise-separable blocks exist only in the first stage, which is kept
            mid = ChannelGroup(f"{p}.mid", "mid", s, i, block.spec.mid_chs)
            mid.members += [_conv_members(model, f"{p}.conv_pw", 0), *_bn_members(f"{p}.bn1"),
                            _conv_members(model, f"{p}.conv_dw", 0), *_bn_members(f"{p}.bn2"),
                            Member(f"{p}.se.conv_reduce.weight", 1), Member(f"{p}.se.conv_expand.weight", 0),
                            Member(f"{p}.se.conv_expand.bias", 0), _conv_members(model, f"{p}.conv_pwl", 1)]
            mid_groups.append(mid)
            if in_group is not None:
                consumers = [_conv_members(model, f"{p}.conv_pw", 1)]
                if block.routing_fn is not None:
                    consumers.append(Member(f"{p}.routing_fn.weight", 1))
                stage_groups[in_group].members += consumers
            if roots[s] != 0:
                name = f"stage{roots[s]}.out"
                if name not in stage_groups:
                    stage_groups[name] = ChannelGroup(name, "stage", roots[s], -1, block.spec.out_chs)
                stage_groups[name].members += [_conv_members(model, f"{p}.conv_pwl", 0),
                                               *_bn_members(f"{p}.bn3")]
    last = f"stage{roots[-1]}.out"
    if last in stage_groups:
        stage_groups[last].members.append(Member("conv_head.weight", 1))
    return mid_groups + list(stage_groups.values())


def _module_macs(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, int]:
    """MACs per conv/linear/CondConv module for one image, with effnet.flops.count_macs' rules."""
    macs: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def record(m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
            if isinstance(m, CondConv2d):
                macs[name] = m.weight.numel() + out.numel() * (m.in_chs // m.groups) * m.kernel ** 2
            elif isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1]
                macs[name] = out.numel() * (m.in_channels // m.groups) * k
            else:
                macs[name] = out.numel() * m.in_features
        return record

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, CondConv2d)):
            hooks.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs


def layer_costs(model: EfficientNet, groups: list[ChannelGroup],
                input_size: tuple[int, int, int]) -> list[LayerCost]:
    """Every counted layer's MACs at `input_size` and the groups on its input/output side."""
    sides: dict[str, list[str | None]] = {}
    for g in groups:
        for m in g.members:
            if not m.key.endswith(".weight") or m.key.rsplit(".", 2)[-2].startswith("bn"):
                continue
            layer = m.key[: -len(".weight")]
            side = sides.setdefault(layer, [None, None])
            viewed_axis = m.axis - (1 if m.bank else 0)
            module = model.get_submodule(layer)
            groups_of = getattr(module, "groups", 1)
            if viewed_axis == 0:
                side[1] = g.name
                if groups_of > 1:  # depthwise: one input channel per output, MACs scale once
                    side[0] = None
            elif groups_of == 1:
                side[0] = g.name
    return [LayerCost(name, m, *sides.get(name, [None, None]))
            for name, m in _module_macs(model, input_size).items()]


def exact_macs(costs: list[LayerCost], widths: dict[str, int], sizes: dict[str, int]) -> int:
    """MACs after pruning, from the original per-layer counts (exact: each count is bilinear)."""
    total = 0
    for c in costs:
        m = float(c.macs)
        for g in (c.in_group, c.out_group):
            if g is not None:
                m = m * widths[g] / sizes[g]
        total += int(round(m))
    return total
