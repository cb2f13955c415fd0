"""Knapsack channel pruning with inner distillation (Aflalo et al., 2020, arXiv 2002.08258).

    groups = channel_groups(model)
    scores = taylor_importance(model, calibration_batches, groups)
    small, selection = prune_model(model, scores, 0.5, input_size=(3, 224, 224))
    criterion = InnerDistillationLoss(small, model, weight=1.0, keep=selection.keep)

To a latency budget measured on this machine instead of MACs:

    latency = measure_latency_model(model, (3, 224, 224), batch_size=1, dtype="fp32")
    selection = fit_latency_budget(model, scores, 0.5 * latency.base_ms, latency, input_size=(3, 224, 224))
"""

from .distill import InnerDistillationLoss
from .groups import ChannelGroup, LayerCost, Member, channel_groups, exact_macs, layer_costs
from .importance import taylor_importance
from .knapsack import knapsack_dp, knapsack_greedy
from .latency import (LatencyModel, compare_latency, fit_latency_budget, measure_latency_model,
                      select_channels_latency)
from .select import Selection, prune_model, select_channels
from .slicing import pruned_config, slice_model, slice_state_dict

__all__ = [
    "ChannelGroup", "InnerDistillationLoss", "LatencyModel", "LayerCost", "Member", "Selection", "channel_groups",
    "compare_latency", "exact_macs", "fit_latency_budget", "knapsack_dp", "knapsack_greedy", "layer_costs",
    "measure_latency_model", "prune_model", "pruned_config", "select_channels", "select_channels_latency", "slice_model",
    "slice_state_dict", "taylor_importance",
]
