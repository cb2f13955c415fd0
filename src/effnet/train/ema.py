"""Exponential moving average of a model's weights, evaluated on its own."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    """A copy of the model whose floating-point parameters and buffers track
    `ema = d * ema + (1 - d) * model` after every optimiser step.

    As TF's `ExponentialMovingAverage(num_updates=step)` used by the published recipe, the decay is
    capped at (1 + n) / (10 + n) for the n-th update, so short runs are not dominated by the random
    initialisation. Integer buffers (BatchNorm's counters) are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards `model`'s current weights."""
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        ema_float, model_float = [], []
        model_sd = model.state_dict()
        for k, v in self.module.state_dict().items():
            src = model_sd[k]
            if v.is_floating_point():
                ema_float.append(v)
                model_float.append(src.detach())
            else:
                v.copy_(src)
        if ema_float:
            torch._foreach_lerp_(ema_float, model_float, 1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any], updates: int = 0) -> None:
        """Restore averaged weights and the update count."""
        self.module.load_state_dict(state)
        self.updates = updates
