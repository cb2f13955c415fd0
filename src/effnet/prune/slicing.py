"""Cutting a trained EfficientNet down to chosen channels: the smaller config and its weights."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from torch import Tensor

from ..checkpoint import load_state_dict_into
from ..config import ModelConfig, PrunedWidths
from ..model import EfficientNet
from .groups import ChannelGroup, Member, channel_groups, stage_roots


def _kept(keep: Mapping[str, Tensor], group: ChannelGroup) -> Tensor:
    idx = keep.get(group.name)
    if idx is None:
        return torch.arange(group.size)
    idx = torch.as_tensor(idx, dtype=torch.long).flatten()
    if idx.numel() == 0:
        raise ValueError(f"{group.name}: keeping no channel would cut the network in two")
    if idx.min() < 0 or idx.max() >= group.size or idx.unique().numel() != idx.numel():
        raise ValueError(f"{group.name}: kept indices must be distinct and in [0, {group.size})")
    return idx.sort().values


def pruned_config(cfg: ModelConfig, groups: list[ChannelGroup], keep: Mapping[str, Tensor],
                  name: str | None = None) -> ModelConfig:
    """The config of the sub-network keeping `keep[group]` channels (all of a group not named).

    Widths are written as `PrunedWidths`, the format of the shipped pruned variants; SE
    bottleneck widths are kept.
    """
    width = {g.name: int(_kept(keep, g).numel()) for g in groups}
    unknown = set(keep) - set(width)
    if unknown:
        raise ValueError(f"unknown channel group(s): {', '.join(sorted(unknown))}")
    specs = cfg.blocks()
    stage_out = []
    blocks: list[list[tuple[int, int]]] = [[] for _ in cfg.stages]
    for spec in specs:
        mid = width.get(f"blocks.{spec.stage}.{spec.index}.mid", spec.mid_chs)
        blocks[spec.stage].append((mid, spec.se_chs))
    roots = stage_roots(cfg)
    for s in range(len(cfg.stages)):
        last = [b for b in specs if b.stage == s][-1]
        stage_out.append(width.get(f"stage{roots[s]}.out", last.out_chs))
    pruned = PrunedWidths(tuple(stage_out), tuple(tuple(b) for b in blocks))
    return dataclasses.replace(cfg, name=name or cfg.name, pruned=pruned)


def _select(t: Tensor, selections: list[tuple[Member, Tensor]]) -> Tensor:
    """Index every selected axis of one tensor (all members of a key share its bank view)."""
    bank = selections[0][0].bank
    if bank is not None:
        t = t.reshape(bank)
    for member, idx in selections:
        t = t.index_select(member.axis, idx.to(t.device))
    return t.reshape(t.shape[0], -1).contiguous() if bank is not None else t.contiguous()


def slice_state_dict(state_dict: Mapping[str, Tensor], groups: list[ChannelGroup],
                     keep: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict of the sub-network: every coupled tensor cut to the kept channels."""
    selections: dict[str, list[tuple[Member, Tensor]]] = {}
    for g in groups:
        idx = _kept(keep, g)
        for m in g.members:
            selections.setdefault(m.key, []).append((m, idx))
    missing = [k for k in selections if k not in state_dict]
    if missing:
        raise ValueError(f"state dict lacks coupled tensor(s): {', '.join(missing[:5])}")
    return {k: _select(v, selections[k]) if k in selections else v.clone() for k, v in state_dict.items()}


def slice_model(model: EfficientNet, keep: Mapping[str, Tensor], name: str | None = None,
                drop_path_rate: float = 0.0) -> EfficientNet:
    """A new, smaller EfficientNet holding exactly the kept channels' weights of `model`.

    With every channel kept it computes what `model` computes. Raises ValueError when the widths
    would add or remove a residual connection (a stride-1 stage whose input and output widths
    become equal or stop being equal), which would change what the network computes.
    """
    groups = channel_groups(model)
    cfg = pruned_config(model.cfg, groups, keep, name)
    for old, new in zip(model.cfg.blocks(), cfg.blocks()):
        if (old.stride == 1 and old.in_chs == old.out_chs) != (new.stride == 1 and new.in_chs == new.out_chs):
            raise ValueError(f"blocks.{old.stage}.{old.index}: widths {new.in_chs}->{new.out_chs} would "
                             f"{'remove' if old.in_chs == old.out_chs else 'add'} its residual connection")
    param = next(model.parameters())
    small = EfficientNet(cfg, num_classes=model.num_classes, in_chans=model.in_chans,
                         drop_rate=model.drop_rate, drop_path_rate=drop_path_rate,
                         global_pool=model.global_pool.pool_type).to(device=param.device, dtype=param.dtype)
    small.pretrained_cfg = cfg.pretrained.overlay(model.pretrained_cfg).to_dict()
    sd = slice_state_dict(model.state_dict(), groups, keep)
    load_state_dict_into(small, sd, f"{model.cfg.name} sliced")
    return small.train(model.training)
