"""What one `fit` call carries between steps and epochs: the model, optimiser, schedule, EMA and
counters (`RunState`, which checkpoints save and restore in one place), and the stop request that
SIGINT/SIGTERM set."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import EffnetError
from . import distributed as D
from .checkpoint import atomic_save, load_training_checkpoint, rng_state, set_rng_state
from .config import TrainConfig
from .data import build_mixup
from .ema import ModelEma
from .losses import create_criterion
from .optim import create_optimizer
from .scheduler import create_scheduler
from .tracking import Tracking

_LOG = logging.getLogger(__name__)


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks after each step, so the run saves and exits cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum
        if D.current().is_main:  # under torchrun every rank gets the signal; one line is enough
            _LOG.warning(f"received {signal.Signals(signum).name}: saving a checkpoint after this step")

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class RunState:
    """State of one fit() call, split out so checkpointing sees everything in one place."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, output_dir: Path, criterion: nn.Module | None,
                 extra_params: Iterable[nn.Module | nn.Parameter], steps_per_epoch: int, class_names: list[str],
                 info: D.DistInfo) -> None:
        self.cfg, self.output_dir, self.info = cfg, output_dir, info
        self.device = info.device
        self.model = model
        self.num_classes = int(getattr(model, "num_classes", 0) or 0)
        self.class_names = class_names
        self.global_batch = cfg.batch_size * info.world_size
        self.lr = cfg.scaled_lr(self.global_batch)
        self.optimizer = create_optimizer(cfg, [model, *extra_params], self.lr)
        self.scheduler = create_scheduler(cfg, self.optimizer, self.lr, steps_per_epoch)
        self.mixup = build_mixup(cfg, self.num_classes) if cfg.mixup > 0 or cfg.cutmix > 0 else None
        self.criterion = criterion if criterion is not None else create_criterion(cfg.smoothing, self.mixup is not None)
        self.ema = ModelEma(model, cfg.model_ema_decay) if cfg.model_ema else None
        use_scaler = cfg.amp and self.device.type == "cuda" and cfg.amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.epoch, self.batch, self.step = 0, 0, 0
        self.partial = dict(loss_sum=0.0, count=0, images=0, seconds=0.0)
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.best_weights = "model"  # or "ema": which weights model_best / model.safetensors hold
        self.history: list[dict[str, Any]] = []
        self.tracking = Tracking(cfg, output_dir, enabled=False)  # fit() puts the run's trackers here

    def state(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit."""
        rng = rng_state()
        ranks = [rng]
        if self.info.enabled:
            ranks = [None] * self.info.world_size
            torch.distributed.all_gather_object(ranks, rng)
        return dict(
            arch=self.cfg.model, state_dict=self.model.state_dict(),
            state_dict_ema=self.ema.state_dict() if self.ema else None,
            ema_updates=self.ema.updates if self.ema else 0,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler else None,
            epoch=self.epoch, batch=self.batch, step=self.step, partial=dict(self.partial),
            rng_state=rng, rng_state_ranks=ranks,
            worker_seeding=dict(seed=self.cfg.seed, world_size=self.info.world_size,
                                rule="worker seed = loader generator seeded from (seed, epoch, rank) + worker id"),
            args=self.cfg.to_dict(), class_names=list(self.class_names), num_classes=self.num_classes,
            best_metric=self.best_metric, best_epoch=self.best_epoch, best_weights=self.best_weights,
            history=list(self.history),
        )

    def restore(self, path: str) -> None:
        """Load a checkpoint written by `state` (every rank reads it)."""
        ckpt = load_training_checkpoint(path)
        from ..checkpoint import extract_state_dict, load_state_dict_into
        load_state_dict_into(self.model, extract_state_dict(ckpt, path, use_ema=False), path)
        if self.ema is not None:
            if ckpt.get("state_dict_ema"):
                self.ema.load_state_dict(ckpt["state_dict_ema"], int(ckpt.get("ema_updates", 0)))
            else:
                self.ema.load_state_dict(self.model.state_dict(), 0)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise EffnetError(f"{path}: optimizer state does not fit this run (different --opt or model?): "
                              f"{e}") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.batch, self.step = int(ckpt["epoch"]), int(ckpt.get("batch", 0)), int(ckpt["step"])
        self.partial = dict(ckpt.get("partial") or self.partial)
        self.best_metric, self.best_epoch = ckpt.get("best_metric"), ckpt.get("best_epoch")
        self.best_weights = str(ckpt.get("best_weights", "ema" if ckpt.get("state_dict_ema") else "model"))
        self.history = list(ckpt.get("history") or [])
        ranks = ckpt.get("rng_state_ranks") or []
        own = ranks[self.info.rank] if len(ranks) == self.info.world_size else ckpt["rng_state"]
        set_rng_state(own)

    def save(self, name: str) -> Path | None:
        """Write a checkpoint on rank 0 (the others only take part in gathering RNG states)."""
        state = self.state()
        if not self.info.is_main:
            return None
        return atomic_save(state, self.output_dir / name)
