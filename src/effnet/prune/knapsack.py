"""0/1 knapsack solvers: keep the items (channels) of most total value within a cost budget.

`knapsack_dp` is exact on costs scaled to integers (rounded up, so the chosen set never exceeds
the real capacity). Items of equal cost are interchangeable but for their value, so an optimal
set takes the most valuable ones of each cost class; the dynamic programme therefore runs over
cost classes and how many of each to take, which is the same optimum as the item-level table at
a fraction of its memory. (Pruning has one cost class per channel group.) `knapsack_greedy` takes items by value per cost.
"""

from __future__ import annotations

import math

import numpy as np


def _check(values: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64).ravel()
    costs = np.asarray(costs, dtype=np.float64).ravel()
    if values.shape != costs.shape:
        raise ValueError(f"knapsack: {values.size} values but {costs.size} costs")
    if (costs < 0).any() or not np.isfinite(costs).all():
        raise ValueError("knapsack: costs must be finite and non-negative")
    if not np.isfinite(values).all():
        raise ValueError("knapsack: values must be finite")
    return values, costs


def knapsack_dp(values: np.ndarray, costs: np.ndarray, capacity: float, resolution: int = 10_000) -> np.ndarray:
    """Exact 0/1 knapsack on integer-scaled costs; returns a boolean mask of the chosen items.

    Costs are counted in units of capacity / resolution. Items of one cost class are scaled
    together: taking k of them costs ceil(k * cost / unit) units, so rounding loses at most one
    unit per class (not per item) and never lets the chosen set exceed the real capacity.
    Zero-cost items with positive value are always taken; items without value never are.
    """
    values, costs = _check(values, costs)
    chosen = (costs == 0) & (values > 0)
    if capacity <= 0:
        return chosen
    unit = capacity / resolution
    candidates = np.flatnonzero((costs > 0) & (values > 0) & (costs <= capacity))
    classes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (items by value, weights, prefix sums)
    for cost in np.unique(costs[candidates]):
        items = candidates[costs[candidates] == cost]
        items = items[np.argsort(-values[items], kind="stable")]
        weights = np.ceil(np.arange(len(items) + 1) * (cost / unit) - 1e-9).astype(np.int64)
        n = int(np.searchsorted(weights, resolution, side="right")) - 1  # most that fit at all
        classes.append((items[:n], weights[: n + 1], np.concatenate([[0.0], np.cumsum(values[items[:n]])])))

    best = np.zeros(resolution + 1)  # best[c]: most value within c units
    choices = []
    for items, weights, prefix in classes:
        new = best.copy()
        choice = np.zeros(resolution + 1, dtype=np.int32)
        for k in range(1, len(items) + 1):
            shift = int(weights[k])
            cand = best[: resolution + 1 - shift] + prefix[k]
            better = cand > new[shift:]
            new[shift:][better] = cand[better]
            choice[shift:][better] = k
        best = new
        choices.append(choice)
    c = resolution
    for (items, weights, _), choice in zip(reversed(classes), reversed(choices)):
        k = int(choice[c])
        chosen[items[:k]] = True
        c -= int(weights[k])
    return chosen


def knapsack_greedy(values: np.ndarray, costs: np.ndarray, capacity: float) -> np.ndarray:
    """Greedy 0/1 knapsack by value per cost (items that no longer fit are skipped)."""
    values, costs = _check(values, costs)
    chosen = (costs == 0) & (values > 0)
    with np.errstate(divide="ignore"):
        density = np.where(costs > 0, values / np.where(costs > 0, costs, 1.0), math.inf)
    left = float(capacity)
    for i in np.argsort(-density, kind="stable"):
        if chosen[i] or values[i] <= 0:
            continue
        if costs[i] <= left:
            chosen[i] = True
            left -= costs[i]
    return chosen


def solve(values: np.ndarray, costs: np.ndarray, capacity: float, method: str = "dp",
          resolution: int = 10_000) -> np.ndarray:
    """Dispatch on `method`: 'dp' (exact on scaled costs) or 'greedy'."""
    if method == "dp":
        return knapsack_dp(values, costs, capacity, resolution)
    if method == "greedy":
        return knapsack_greedy(values, costs, capacity)
    raise ValueError(f"unknown knapsack method {method!r}; expected 'dp' or 'greedy'")
