"""A latency cost model for knapsack pruning, measured on this machine (the knapsack paper's `--use_time`).

MACs are a poor proxy for time: depthwise convs, SE gates, BatchNorm and activations cost more time
per MAC than 1x1 convs, and all of them scale with the channel widths. `measure_latency_model` times,
at the chosen batch size and precision, every layer a prunable group feeds: each block (expand,
depthwise, SE, project, with their norms and activations) and the head, at several widths of the
group (1/4, 1/2, 3/4, all), then fits a straight line per group: milliseconds per channel. Each
module is timed by forward hooks inside whole forward passes, not alone: alone, a block keeps its
weights in cache, which at small inputs makes it look several times faster than it runs in the
model. All mid groups are shrunk at once (each lives in one block), and the stage groups in two
halves by parity, so that a block's in- and out-widths never move together: three families of
four models (full width and three fractions), each family timed together. The prediction is
anchored at the measured time of the whole unpruned model (its median over the same rounds):
t(widths) = base_ms - sum over groups of ms_per_channel x (size - width).

Timing avoids the usual traps of shared CPUs: warm-up calls, candidates interleaved round by round
in alternating order, medians; no more than four models rotate at once, so that oneDNN's primitive
cache (1,024 entries by default) holds them all.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..model import EfficientNet
from .groups import ChannelGroup, channel_groups, exact_macs, layer_costs, stage_roots
from .knapsack import solve
from .select import Selection, _fix_residuals
from .slicing import slice_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FRACTIONS = (0.25, 0.5, 0.75)


@dataclass
class LatencyModel:
    """Milliseconds per channel of every group, anchored at the unpruned model's measured time."""

    unit: dict[str, float]  # ms per channel
    sizes: dict[str, int]
    base_ms: float  # the whole unpruned model, measured
    batch_size: int
    dtype: str
    threads: int
    table: dict[str, list[list[float]]] = field(default_factory=dict)  # group -> [[width, ms], ...]

    def predict(self, widths: dict[str, int]) -> float:
        """Predicted milliseconds per batch of the model pruned to `widths` (absent groups: kept whole)."""
        return self.base_ms - sum(u * (self.sizes[g] - widths.get(g, self.sizes[g])) for g, u in self.unit.items())

    def to_dict(self) -> dict[str, Any]:
        return dict(base_ms=self.base_ms, batch_size=self.batch_size, dtype=self.dtype, threads=self.threads,
                    ms_per_channel=self.unit, table=self.table)


def time_calls(fns: list[Callable[[], Any]], rounds: int = 15, warmup: int = 2,
               max_seconds: float | None = None) -> list[float]:
    """Median milliseconds per call of each function, interleaved and in alternating order every round."""
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns:
                fn()
        times: list[list[float]] = [[] for _ in fns]
        order = list(range(len(fns)))
        start = time.perf_counter()
        for r in range(rounds):
            for i in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                fn = fns[i]
                fn()
                times[i].append(time.perf_counter() - t0)
            if max_seconds is not None and r >= 4 and time.perf_counter() - start > max_seconds:
                break
    return [1e3 * statistics.median(t) for t in times]


def as_inference(model: nn.Module, dtype: str) -> nn.Module:
    """An eval-mode copy of `model` on the CPU in `dtype` (the original is left untouched)."""
    return copy.deepcopy(model).eval().to("cpu", DTYPES[dtype])


def compare_latency(models: dict[str, nn.Module], input_size: tuple[int, int, int], batch_size: int = 1,
                    dtype: str = "fp32", rounds: int = 30, max_seconds: float = 20.0) -> dict[str, float]:
    """Median ms per batch of each model, measured side by side (warm, interleaved, alternating order)."""
    copies = {k: as_inference(m, dtype) for k, m in models.items()}
    device = next(iter(copies.values())).conv_stem.weight.device
    x = torch.randn(batch_size, *input_size, device=device).to(DTYPES[dtype])
    fns = [(lambda m=m: m(x)) for m in copies.values()]
    return dict(zip(copies, time_calls(fns, rounds=rounds, warmup=3, max_seconds=max_seconds)))


def _configs(model: EfficientNet, groups: list[ChannelGroup]) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """The sliced widths to time ('full', 'mid@F', 'even@F', 'odd@F') and, per group, which family moves it."""
    sizes = {g.name: g.size for g in groups}
    stage_names = [g.name for g in groups if g.kind == "stage"]
    family = {g.name: "mid" for g in groups if g.kind == "mid"}
    family.update({name: ("even", "odd")[i % 2] for i, name in enumerate(stage_names)})
    configs: dict[str, dict[str, int]] = {"full": dict(sizes)}
    for fam in ("mid", "even", "odd"):
        for f in FRACTIONS:
            widths = {g: max(1, round(f * n)) if family[g] == fam else n for g, n in sizes.items()}
            _fix_residuals(model.cfg, widths, sizes)  # never add a residual the model does not have
            configs[f"{fam}@{f}"] = widths
    return configs, family


def _affected(model: EfficientNet, groups: list[ChannelGroup]) -> tuple[list[str], dict[str, list[str]]]:
    """The timed modules ('blocks.S.I', 'head') and, per group, the modules whose widths it sets."""
    roots = stage_roots(model.cfg)
    names = {g.name for g in groups}
    modules: list[str] = []
    touched: dict[str, list[str]] = {g: [] for g in names}
    for s, stage in enumerate(model.blocks):
        for i, _ in enumerate(stage):
            key = f"blocks.{s}.{i}"
            src = roots[s] if i > 0 else (roots[s - 1] if s > 0 else 0)
            sides = {f"{key}.mid", f"stage{src}.out", f"stage{roots[s]}.out"} & names
            if sides:
                modules.append(key)
                for g in sides:
                    touched[g].append(key)
    last = f"stage{roots[-1]}.out"
    if last in names:
        modules.append("head")
        touched[last].append("head")
    return modules, touched


class _ModuleClock:
    """Forward hooks that time each module inside a whole forward pass, where it meets the caches as in
    real use (timed alone, a block keeps its weights in cache and looks several times faster)."""

    def __init__(self, model: EfficientNet, keys: list[str]) -> None:
        self.durations: dict[str, list[float]] = {k: [] for k in keys}
        starts: dict[str, float] = {}
        for k in keys:  # the head runs from conv_head to the model's output
            first = model.conv_head if k == "head" else model.get_submodule(k)
            last = model if k == "head" else first
            first.register_forward_pre_hook(lambda *_a, k=k: starts.__setitem__(k, time.perf_counter()))
            last.register_forward_hook(
                lambda *_a, k=k: self.durations[k].append(time.perf_counter() - starts[k]))

    def medians(self) -> dict[str, float]:
        return {k: 1e3 * statistics.median(v) for k, v in self.durations.items()}


def _time_in_place(models: dict[str, EfficientNet], keys: list[str], x: Tensor, rounds: int
                   ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per model, the median ms of each module and of the whole pass over `rounds` interleaved passes."""
    clocks = {c: _ModuleClock(m, keys) for c, m in models.items()}
    whole = time_calls([(lambda m=m: m(x)) for m in models.values()], rounds=rounds, max_seconds=30.0)
    return {c: clock.medians() for c, clock in clocks.items()}, dict(zip(models, whole))


def measure_latency_model(model: EfficientNet, input_size: tuple[int, int, int], batch_size: int = 1,
                          dtype: str = "fp32", rounds: int = 15) -> LatencyModel:
    """Time every group's layers at four widths on this machine and fit ms per channel (see the module doc).

    Args:
        model: the network to prune (not modified).
        input_size: (C, H, W) of one image.
        batch_size: images per call, as the pruned model will be run.
        dtype: 'fp32' or 'bf16' (weights and inputs cast).
        rounds: interleaved timing rounds per width.
    """
    if dtype not in DTYPES:
        raise ValueError(f"latency dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"latency batch size must be >= 1, got {batch_size}")
    groups = channel_groups(model)
    sizes = {g.name: g.size for g in groups}
    configs, family = _configs(model, groups)
    keys, touched = _affected(model, groups)
    base = as_inference(model, dtype)
    device = base.conv_stem.weight.device
    x = torch.randn(batch_size, *input_size, device=device).to(DTYPES[dtype])
    ms: dict[tuple[str, str], dict[str, float]] = {}
    full_ms: list[float] = []
    for fam in ("mid", "even", "odd"):  # four models at a time stay within oneDNN's primitive cache
        names = ["full"] + [c for c in configs if c.startswith(fam + "@")]
        with torch.no_grad():
            models = {c: as_inference(model, dtype) if c == "full" else
                      slice_model(base, {g: torch.arange(w) for g, w in configs[c].items()}) for c in names}
        rows, whole = _time_in_place(models, keys, x, rounds)
        full_ms.append(whole["full"])  # the anchor comes from the same rounds as the table
        for c, row in rows.items():
            ms[fam, c] = row
    unit: dict[str, float] = {}
    table: dict[str, list[list[float]]] = {}
    for g in sizes:
        points = [(configs[c][g], sum(row[k] for k in touched[g])) for (fam, c), row in ms.items()
                  if fam == family[g]]
        table[g] = [[float(w), round(t, 5)] for w, t in sorted(points)]
        w = np.array([p[0] for p in points], dtype=np.float64)
        t = np.array([p[1] for p in points])
        unit[g] = float(np.polyfit(w, t, 1)[0]) if np.ptp(w) > 0 else 0.0
    positive = [u for u in unit.values() if u > 0]
    floor = 1e-3 * (statistics.median(positive) if positive else 1e-6)
    unit = {g: max(u, floor) for g, u in unit.items()}  # a channel never makes the model faster
    return LatencyModel(unit, sizes, statistics.median(full_ms), batch_size, dtype, torch.get_num_threads(), table)


def min_latency(latency: LatencyModel, model: EfficientNet) -> float:
    """The predicted ms of the smallest model pruning can make (one channel per group)."""
    widths = {g: 1 for g in latency.sizes}
    _fix_residuals(model.cfg, widths, latency.sizes)
    return latency.predict(widths)


def select_channels_latency(model: EfficientNet, scores: dict[str, Tensor], target_ms: float,
                            latency: LatencyModel, *, input_size: tuple[int, int, int], method: str = "dp",
                            resolution: int = 10_000) -> Selection:
    """Keep the most important channels whose predicted latency is at most `target_ms`.

    The cost model is linear in the widths, so one knapsack solve is exact by it; a residual fix-up
    that adds a channel is undone by dropping the least important channel per millisecond.
    """
    if target_ms <= 0:
        raise ValueError(f"latency target must be > 0 ms, got {target_ms}")
    sizes = dict(latency.sizes)
    names = list(sizes)
    missing = [g for g in names if g not in scores or scores[g].numel() != sizes[g]]
    if missing:
        raise ValueError(f"importance scores missing or of the wrong size for: {', '.join(missing[:5])}")
    smallest = min_latency(latency, model)
    if target_ms < smallest:
        raise ValueError(f"the latency target {target_ms:.3f} ms is below what pruning can reach "
                         f"({smallest:.3f} ms predicted with one channel per group)")
    order = {g: torch.argsort(scores[g].double(), descending=True, stable=True) for g in names}
    if latency.base_ms <= target_ms:
        widths = dict(sizes)
    else:
        item_group = np.concatenate([np.full(sizes[g] - 1, i) for i, g in enumerate(names)])
        item_value = np.concatenate([scores[g].double()[order[g][1:]].numpy() for g in names])
        item_cost = np.array([latency.unit[names[i]] for i in item_group])
        fixed = latency.predict({g: 1 for g in names})
        chosen = solve(item_value, item_cost, target_ms - fixed, method, resolution)
        counts = np.bincount(item_group[chosen], minlength=len(names))
        widths = {g: 1 + int(counts[i]) for i, g in enumerate(names)}
    _fix_residuals(model.cfg, widths, sizes)
    for _ in range(sum(sizes.values())):  # bounded: each pass removes a channel
        if latency.predict(widths) <= target_ms:
            break
        cands = [g for g in names if widths[g] > 1]
        if not cands:
            break
        g = min(cands, key=lambda g: float(scores[g][order[g][widths[g] - 1]]) / latency.unit[g])
        widths[g] -= 1
        _fix_residuals(model.cfg, widths, sizes)
    costs = layer_costs(model, channel_groups(model), input_size)
    keep = {g: order[g][: widths[g]].sort().values for g in names}
    total = float(sum(scores[g].double().sum() for g in names)) or 1.0
    kept = sum(float(scores[g].double()[keep[g]].sum()) for g in names)
    predicted = latency.predict(widths)
    log = [f"latency budget {target_ms:.4f} ms ({target_ms / latency.base_ms:.4f} of the measured "
           f"{latency.base_ms:.4f} ms): predicted {predicted:.4f} ms"]
    return Selection(keep, widths, sizes, sum(c.macs for c in costs), exact_macs(costs, widths, sizes),
                     target_ms / latency.base_ms, 1, method, kept / total, log, budget="latency",
                     predicted_ms=predicted, target_ms=target_ms)


def fit_latency_budget(model: EfficientNet, scores: dict[str, Tensor], target_ms: float, latency: LatencyModel,
                       *, input_size: tuple[int, int, int], method: str = "dp", max_rounds: int = 4,
                       tolerance: float = 0.02) -> Selection:
    """`select_channels_latency`, checked against the clock: the kept widths are sliced and timed side
    by side with the unpruned model, and while the measured ratio overshoots target / base (beyond
    `tolerance`, timing noise) the cost model's budget is tightened by the overshoot, then bisected
    back up. The linear model overestimates what shrinking two coupled widths at once saves (a 1x1
    conv's time scales with in x out), which is what this corrects.
    """
    goal = target_ms / latency.base_ms
    lo, hi, budget = None, None, target_ms
    best: Selection | None = None
    log: list[str] = []
    solves = 0
    for _ in range(max_rounds):
        solves += 1
        sel = select_channels_latency(model, scores, budget, latency, input_size=input_size, method=method)
        times = compare_latency({"unpruned": model, "pruned": slice_model(model, sel.keep)}, input_size,
                                latency.batch_size, latency.dtype, rounds=12, max_seconds=15.0)
        ratio = times["pruned"] / times["unpruned"]
        log.append(f"cost-model budget {budget:.4f} ms: predicted {sel.predicted_ms:.4f} ms, measured "
                   f"{ratio:.4f} of the unpruned model side by side (goal {goal:.4f})")
        if ratio <= goal * (1 + tolerance):
            best, lo = sel, budget
            if hi is None or best.value_kept > 0.999:
                break
            budget = (lo + hi) / 2
        else:
            hi = budget
            budget = (lo + hi) / 2 if lo is not None else max(budget * goal / ratio, min_latency(latency, model))
    if best is None:
        best = sel
        log.append("the measured goal was not reached within the rounds: keeping the last, tightest selection")
    best.log = log + best.log
    best.target_ms, best.ratio, best.rounds = target_ms, goal, solves
    return best
