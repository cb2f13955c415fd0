"""Per-step learning-rate schedules: linear warmup, then step decay (0.97 every 2.4 epochs, as for
these models) or cosine, or constant."""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer

from .config import ConfigError, TrainConfig


class Scheduler:
    """Sets every parameter group's learning rate from the global step.

    The step decay is a staircase on fractional epochs (TF's `exponential_decay(staircase=True)`
    with decay_steps = decay_epochs * steps_per_epoch), counted from step 0 as TF does; cosine
    runs from the end of warmup to the last step. Call `step()` after each optimiser step.
    """

    def __init__(self, optimizer: Optimizer, base_lr: float, steps_per_epoch: int, epochs: int, kind: str = "step",
                 warmup_epochs: float = 0.0, warmup_lr: float = 0.0, decay_epochs: float = 2.4,
                 decay_rate: float = 0.97, min_lr: float = 0.0) -> None:
        if kind not in ("step", "cosine", "none"):
            raise ConfigError(f"unknown schedule {kind!r}: step, cosine or none")
        if steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.optimizer, self.base_lr, self.kind = optimizer, base_lr, kind
        self.steps_per_epoch, self.total_steps = steps_per_epoch, steps_per_epoch * epochs
        self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))
        self.warmup_lr, self.decay_epochs, self.decay_rate, self.min_lr = warmup_lr, decay_epochs, decay_rate, min_lr
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        """The learning rate for optimiser step number `step` (0-based)."""
        if step < self.warmup_steps:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup_steps
        if self.kind == "step":
            return self.base_lr * self.decay_rate ** math.floor(step / (self.decay_epochs * self.steps_per_epoch))
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t))
        return self.base_lr

    def _apply(self) -> None:
        lr = self.lr_at(self.last_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> None:
        """Advance one optimiser step."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """Current learning rate of each parameter group."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs: the step and the settings (checked on load)."""
        return dict(last_step=self.last_step, base_lr=self.base_lr, kind=self.kind,
                    steps_per_epoch=self.steps_per_epoch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved step."""
        self.last_step = int(state["last_step"])
        self._apply()


# timm's 5 warmup epochs, but never more than this share of the run: a 5-epoch run warmed up for all
# 5 never reaches its learning rate and never starts the cosine decay.
DEFAULT_WARMUP_EPOCHS = 5.0
MAX_DEFAULT_WARMUP_SHARE = 0.1


def warmup_epochs(cfg: TrainConfig) -> float:
    """`cfg.warmup_epochs`, or when unset, 5 epochs capped at a tenth of `cfg.epochs`."""
    if cfg.warmup_epochs is not None:
        return cfg.warmup_epochs
    return min(DEFAULT_WARMUP_EPOCHS, MAX_DEFAULT_WARMUP_SHARE * cfg.epochs)


def create_scheduler(cfg: TrainConfig, optimizer: Optimizer, base_lr: float, steps_per_epoch: int) -> Scheduler:
    """The schedule `cfg.sched` for a run of `cfg.epochs` epochs."""
    return Scheduler(optimizer, base_lr, steps_per_epoch, cfg.epochs, cfg.sched, warmup_epochs(cfg),
                     cfg.warmup_lr, cfg.decay_epochs, cfg.decay_rate, cfg.min_lr)
