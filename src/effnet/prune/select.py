"""Choosing the channels to keep under a MACs budget, and cutting the model down to them.

The knapsack needs one cost per channel, but a layer's MACs are the product of its input and
output widths, so a channel's true cost depends on how much of its neighbours survives. The
knapsack therefore runs on the linearisation at the original widths (each channel costs what
removing it alone would save), the chosen widths are then counted exactly, and the linear
budget is tightened (then bisected back up) until the exact count fits; if it never does, the
least important channels per exact MAC are dropped one by one. The result is always within budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..config import ModelConfig
from ..model import EfficientNet
from .groups import ChannelGroup, LayerCost, channel_groups, exact_macs, layer_costs, stage_roots
from .knapsack import solve
from .slicing import slice_model


@dataclass
class Selection:
    """What the knapsack kept: per group, the kept channel indices (sorted) and the MACs."""

    keep: dict[str, Tensor]
    widths: dict[str, int]
    sizes: dict[str, int]
    base_macs: int  # the original model at `input_size`
    macs: int  # the pruned model at `input_size` (exact)
    ratio: float  # the requested budget, as a fraction of base_macs
    rounds: int  # knapsack solves it took
    method: str
    value_kept: float = 0.0  # fraction of the total importance kept
    log: list[str] = field(default_factory=list)
    budget: str = "macs"  # what `ratio` is a fraction of: "macs" or "latency" (measured)
    predicted_ms: float | None = None  # latency budget: the cost model's prediction for the kept widths
    target_ms: float | None = None


def _linear_costs(costs: list[LayerCost], sizes: dict[str, int]) -> tuple[dict[str, float], float]:
    """Per-channel cost of each group at the original widths, and the constant remainder."""
    unit = {g: 0.0 for g in sizes}
    const = 0.0
    for c in costs:
        sides = [g for g in (c.in_group, c.out_group) if g is not None]
        const += c.macs * (1 - len(sides))
        for g in sides:
            unit[g] += c.macs / sizes[g]
    return unit, const


def _fix_residuals(cfg: ModelConfig, widths: dict[str, int], sizes: dict[str, int]) -> None:
    """Make sure no stride-1 stage gains a residual it did not have (equal in/out widths).

    The stage's own width drops by one where it can (that only lowers MACs); at one channel the
    previous stage's drops, and if that cannot move either the stage grows by one (the exact
    count is checked afterwards like any other).
    """
    roots = stage_roots(cfg)
    firsts = {b.stage: b for b in reversed(cfg.blocks())}
    for s in range(1, len(cfg.stages)):
        b = firsts[s]
        if b.stride != 1 or roots[s] != s or b.in_chs == b.out_chs:
            continue
        here, before = f"stage{s}.out", f"stage{roots[s - 1]}.out"
        if widths.get(before, b.in_chs) != widths.get(here, b.out_chs):
            continue
        if here in widths and widths[here] > 1:
            widths[here] -= 1
        elif before in widths and widths[before] > 1:
            widths[before] -= 1
        elif here in widths and widths[here] < sizes[here]:
            widths[here] += 1
        else:
            widths[before] += 1


def min_macs_ratio(model: EfficientNet, input_size: tuple[int, int, int]) -> float:
    """The smallest MACs ratio pruning can reach: one channel per group (more where a residual needs
    it); the stem, the first stage and the head keep their widths."""
    groups = channel_groups(model)
    sizes = {g.name: g.size for g in groups}
    costs = layer_costs(model, groups, input_size)
    widths = {g: 1 for g in sizes}
    _fix_residuals(model.cfg, widths, sizes)
    return exact_macs(costs, widths, sizes) / max(1, sum(c.macs for c in costs))


def select_channels(model: EfficientNet, scores: dict[str, Tensor], ratio: float, *,
                    input_size: tuple[int, int, int], method: str = "dp", resolution: int = 10_000,
                    max_rounds: int = 16) -> Selection:
    """Keep the most important channels with exact MACs <= ratio x the model's MACs.

    Args:
        model: the trained network.
        scores: group name -> per-channel importance (see `taylor_importance`).
        ratio: MACs budget as a fraction of the model's, in (0, 1]; 1 keeps everything.
        input_size: (C, H, W) the MACs are counted at.
        method: 'dp' (exact knapsack on costs scaled to `resolution` units) or 'greedy'.
        max_rounds: knapsack solves spent on fitting the linear budget to the exact count.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"MACs ratio must be in (0, 1], got {ratio}")
    groups: list[ChannelGroup] = channel_groups(model)
    sizes = {g.name: g.size for g in groups}
    missing = [g for g in sizes if g not in scores or scores[g].numel() != sizes[g]]
    if missing:
        raise ValueError(f"importance scores missing or of the wrong size for: {', '.join(missing[:5])}")
    costs = layer_costs(model, groups, input_size)
    base = sum(c.macs for c in costs)
    budget = ratio * base
    unit, const = _linear_costs(costs, sizes)
    order = {g: torch.argsort(scores[g].double(), descending=True, stable=True) for g in sizes}
    names = list(sizes)
    # one item per channel except each group's best, which is always kept
    item_group = np.concatenate([np.full(sizes[g] - 1, i) for i, g in enumerate(names)])
    item_value = np.concatenate([scores[g].double()[order[g][1:]].numpy() for g in names])
    item_cost = np.array([unit[names[i]] for i in item_group])
    fixed = const + sum(unit.values())
    total_value = float(sum(scores[g].double().sum() for g in names)) or 1.0

    def widths_for(target: float) -> dict[str, int]:
        if const + sum(unit[g] * sizes[g] for g in names) <= target:
            widths = dict(sizes)  # everything fits: keeping all is the optimum
        else:
            chosen = solve(item_value, item_cost, target - fixed, method, resolution)
            counts = np.bincount(item_group[chosen], minlength=len(names))
            widths = {g: 1 + int(counts[i]) for i, g in enumerate(names)}
        _fix_residuals(model.cfg, widths, sizes)
        return widths

    log: list[str] = []
    best: dict[str, int] | None = None
    lo, hi, target, rounds = 0.0, None, budget, 0
    while rounds < max_rounds:
        widths = widths_for(target)
        rounds += 1
        macs = exact_macs(costs, widths, sizes)
        log.append(f"linear budget {target / base:.4f}: exact MACs {macs / base:.4f} of the original")
        if macs <= budget:
            best, lo = widths, target
            if hi is None or hi - lo < 1e-3 * base:
                break
            target = (lo + hi) / 2
        else:
            hi = target
            target = (lo + hi) / 2 if best is not None else target * budget / macs * 0.999
    if best is None:
        best = widths
        _repair(best, costs, sizes, scores, order, budget)
        log.append("greedy repair: dropped the least important channels per MAC until within budget")
    macs = exact_macs(costs, best, sizes)
    if macs > budget:
        raise ValueError(f"pruning could not reach {ratio:.3f} of the MACs (got {macs / base:.3f}); the "
                         f"smallest reachable is about {min_macs_ratio(model, input_size):.3f}")
    keep = {g: order[g][: best[g]].sort().values for g in names}
    kept_value = sum(float(scores[g].double()[keep[g]].sum()) for g in names)
    return Selection(keep, best, sizes, base, macs, ratio, rounds, method, kept_value / total_value, log)


def _repair(widths: dict[str, int], costs: list[LayerCost], sizes: dict[str, int],
            scores: dict[str, Tensor], order: dict[str, Tensor], budget: float) -> None:
    """Drop, one at a time, the kept channel whose importance per exact MAC saved is least."""
    while exact_macs(costs, widths, sizes) > budget:
        best_g, best_density = None, float("inf")
        for g, w in widths.items():
            if w <= 1:
                continue
            saved = exact_macs(costs, widths, sizes) - exact_macs(costs, {**widths, g: w - 1}, sizes)
            if saved <= 0:
                continue
            density = float(scores[g][order[g][w - 1]]) / saved
            if density < best_density:
                best_g, best_density = g, density
        if best_g is None:
            return
        widths[best_g] -= 1


def prune_model(model: EfficientNet, scores: dict[str, Tensor], ratio: float, *,
                input_size: tuple[int, int, int], method: str = "dp", name: str | None = None,
                resolution: int = 10_000) -> tuple[EfficientNet, Selection]:
    """Select channels (`select_channels`) and slice `model` down to them."""
    sel = select_channels(model, scores, ratio, input_size=input_size, method=method, resolution=resolution)
    small = slice_model(model, sel.keep, name=name)
    return small, sel
