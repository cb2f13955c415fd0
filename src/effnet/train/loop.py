"""The training loop (`fit`) and evaluation (`evaluate`)."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..data.samples import SkipReport, unreadable_of
from ..errors import EffnetError
from ..log import ensure_logging
from ..progress import bar
from . import distributed as D
from .checkpoint import atomic_copy, atomic_save, load_training_checkpoint, rng_state, set_rng_state
from .config import TrainConfig
from .artifact import write_model_folder
from .data import build_mixup, set_loader_epoch
from .ema import ModelEma
from .losses import create_criterion
from .optim import create_optimizer
from .output import Progress, write_args_yaml, write_plot, write_summary
from .scheduler import create_scheduler
from .tracking import Tracking

_LOG = logging.getLogger(__name__)


class TrainingDivergedError(EffnetError, RuntimeError):
    """The loss became NaN or infinite."""


def resolve_device(cfg: TrainConfig, info: D.DistInfo | None = None) -> torch.device:
    """--device, else this rank's CUDA device, else the CPU."""
    if cfg.device:
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank if info else 0)
    return torch.device("cpu")


def autocast(device: torch.device, enabled: bool, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision: bfloat16 on CPU, float16 or bfloat16 on CUDA."""
    if not enabled:
        return contextlib.nullcontext()
    amp_dtype = torch.bfloat16 if device.type == "cpu" or dtype == "bfloat16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], *, device: torch.device | str | None = None,
             amp: bool = False, amp_dtype: str = "bfloat16", channels_last: bool = False,
             desc: str = "eval") -> dict[str, float]:
    """Top-1/top-5 accuracy (%), mean cross-entropy, image count and throughput of `model` on `loader`
    (with a progress bar labelled `desc` on a terminal); under torchrun the numbers cover every rank's share.

    Images the loader could not read are left out of every number; `skipped` counts them.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct1 = correct5 = loss_sum = 0.0
    count = 0
    skips = SkipReport(desc)
    start = time.perf_counter()
    for batch in bar(loader, total=len(loader) if hasattr(loader, "__len__") else None, desc=desc,
                     unit="batch", show=D.current().is_main):
        skips.add(unreadable_of(batch), show=D.current().is_main)
        x, target = batch[0], batch[1]
        if x.shape[0] == 0:
            continue
        x, target = x.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp, amp_dtype):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(target.unsqueeze(1))
        correct1 += hits[:, :1].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += x.shape[0]
    elapsed = time.perf_counter() - start
    correct1, correct5, loss_sum, count_f, skipped = D.all_reduce_sum(
        [correct1, correct5, loss_sum, float(count), float(skips.count)], device)
    model.train(was_training)
    n = max(count_f, 1.0)
    return dict(top1=100.0 * correct1 / n, top5=100.0 * correct5 / n, loss=loss_sum / n, count=int(count_f),
                img_per_sec=count_f / max(elapsed, 1e-9), skipped=int(skipped))


class _StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks after each step, so the run saves and exits cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _classifier_params(model: nn.Module) -> set[int]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        raise EffnetError(f"--freeze-epochs needs a model with get_classifier(); {type(model).__name__} has none")
    return {id(p) for p in head.parameters()}


def _set_frozen(model: nn.Module, frozen: bool, trainable: set[int]) -> None:
    """Freeze (or thaw) everything but the classifier; frozen layers keep their BatchNorm statistics."""
    for p in model.parameters():
        p.requires_grad_(not frozen or id(p) in trainable)


def _train_mode(model: nn.Module, frozen: bool) -> None:
    model.train()
    if frozen:
        model.eval()
        head = model.get_classifier()
        head.train()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Run:
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


def _batches(loader: Iterable[Any], skips: SkipReport, run: _Run) -> Iterator[tuple[Tensor, Tensor]]:
    """(images, targets) of each step. Samples the loader could not read are counted in `skips`; a
    batch left with no image makes no update, but the schedule and step count move on as planned."""
    for batch in loader:
        skips.add(unreadable_of(batch), show=run.info.is_main)
        if batch[0].shape[0] == 0:
            run.scheduler.step()
            run.step += 1
            run.batch += 1
            continue
        yield batch[0], batch[1]


def _train_epoch(run: _Run, net: nn.Module, loader: Any, frozen: bool, stop: _StopRequest) -> bool:
    """Train until the epoch ends (True) or a stop signal arrives (False); updates run.partial."""
    cfg, device = run.cfg, run.device
    _train_mode(_unwrap(net), frozen)
    total = run.scheduler.steps_per_epoch
    progress = Progress(total, run.epoch, cfg.epochs, enabled=run.info.is_main, log_interval=cfg.log_interval)
    tic = time.perf_counter()
    skips = SkipReport("train")
    skipped_before = int(run.partial.get("skipped", 0))  # a resumed epoch continues its count
    for x, target in _batches(loader, skips, run):
        run.partial["skipped"] = skipped_before + skips.count
        x, target = x.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if run.mixup is not None:
            x, target = run.mixup(x, target)
        with autocast(device, cfg.amp, cfg.amp_dtype):
            output = net(x)
            loss = run.criterion(output, target)
        loss_value = loss.item()
        bad = not math.isfinite(loss_value)
        if D.broadcast_flag(bad, device):
            progress.close()
            last = run.output_dir / "last.pth.tar"
            kept = f"the last good checkpoint is {last} (epoch {run.epoch})" if last.is_file() else \
                "no checkpoint was written yet"
            raise TrainingDivergedError(
                f"loss is {loss_value} at epoch {run.epoch}, batch {run.batch} (step {run.step}); training "
                f"stopped; {kept}. Lower --lr, add --clip-grad, or check the data")
        run.optimizer.zero_grad(set_to_none=True)
        params = [p for g in run.optimizer.param_groups for p in g["params"]]
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            if cfg.clip_grad:
                run.scaler.unscale_(run.optimizer)
                _clip(params, cfg)
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            loss.backward()
            if cfg.clip_grad:
                _clip(params, cfg)
            run.optimizer.step()
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update(_unwrap(net))
        run.step += 1
        run.batch += 1
        run.partial["loss_sum"] += loss_value * x.shape[0]
        run.partial["count"] += x.shape[0]
        run.partial["images"] += x.shape[0] * run.info.world_size
        elapsed = run.partial["seconds"] + time.perf_counter() - tic
        progress.update(run.batch, run.partial["loss_sum"] / run.partial["count"],
                        run.optimizer.param_groups[0]["lr"], run.partial["images"] / max(elapsed, 1e-9))
        if D.broadcast_flag(stop.signum is not None, device):
            run.partial["seconds"] += time.perf_counter() - tic
            progress.close()
            return False
    run.partial["seconds"] += time.perf_counter() - tic
    run.partial["skipped"] = skipped_before + skips.count
    progress.close()
    return True


def _clip(params: list[nn.Parameter], cfg: TrainConfig) -> None:
    if cfg.clip_mode == "value":
        torch.nn.utils.clip_grad_value_(params, cfg.clip_grad)
    else:
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)


def _wrap(model: nn.Module, info: D.DistInfo) -> nn.Module:
    if not info.enabled:
        return model
    # each rank keeps its own BatchNorm statistics; average_bn_stats merges them before validation
    return DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                   broadcast_buffers=False)


def fit(model: nn.Module, train_loader: Any, val_loader: Any, cfg: TrainConfig, output_dir: str | Path, *,
        criterion: nn.Module | None = None, extra_params: Iterable[nn.Module | nn.Parameter] = ()) -> dict[str, Any]:
    """Train `model` for `cfg.epochs` epochs, validating after each, writing checkpoints, summary.csv,
    args.yaml and a plot to `output_dir` (rank 0 only under torchrun).

    `criterion(output, target)` replaces the default loss (label smoothing / soft-target CE);
    `extra_params` (modules or parameters) are optimised along with the model. `cfg.resume` continues a
    run exactly. Returns the final metrics (eval_* of the last epoch, best_metric, best_epoch, and
    `interrupted` when a signal stopped it).
    """
    ensure_logging()  # a script calling fit() sees the epoch lines as the command line does
    info = D.current()
    info = D.DistInfo(info.rank, info.world_size, info.local_rank, resolve_device(cfg, info))
    output_dir = Path(output_dir)
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch < 1:
        raise EffnetError("the training loader yields no batches (fewer images than --batch-size?)")
    model.to(info.device)
    if cfg.sync_bn and info.enabled and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    extra_params = list(extra_params)
    for extra in extra_params:
        if isinstance(extra, nn.Module):
            extra.to(info.device)
    if isinstance(criterion, nn.Module):
        criterion.to(info.device)
    class_names = (cfg.class_names or list(getattr(getattr(train_loader, "dataset", None), "classes", None) or [])
                   or [str(i) for i in range(int(getattr(model, "num_classes", 0) or 0))])
    run = _Run(model, cfg, output_dir, criterion, extra_params, steps_per_epoch, class_names, info)
    if cfg.resume:
        run.restore(cfg.resume)
    else:
        _seed_all(cfg.seed + info.rank)
    if info.is_main:
        write_args_yaml(output_dir / "args.yaml", cfg.to_dict())
    trainable = _classifier_params(model) if cfg.freeze_epochs else set()
    net, wrapped_frozen = model, None
    metrics: dict[str, Any] = {}
    with _StopRequest() as stop, Tracking(cfg, output_dir, enabled=info.is_main) as run.tracking:
        while run.epoch < cfg.epochs:
            frozen = run.epoch < cfg.freeze_epochs
            if wrapped_frozen is None or frozen != wrapped_frozen:
                _set_frozen(model, frozen, trainable)
                net, wrapped_frozen = _wrap(model, info), frozen
            set_loader_epoch(train_loader, run.epoch, cfg.seed, run.batch)
            if not _train_epoch(run, net, train_loader, frozen, stop):
                path = run.save("last.pth.tar")
                if info.is_main:
                    _LOG.warning(f"stopped at epoch {run.epoch}, batch {run.batch}; saved {path}; continue with "
                                 f"--resume {path}")
                return dict(metrics, interrupted=True, signal=stop.signum, epoch=run.epoch, step=run.step,
                            output_dir=str(output_dir))
            metrics = _end_epoch(run, val_loader)
    return metrics


def _improves(new: float, old: float, metric: str) -> bool:
    """Whether `new` beats `old` (lower is better for the loss, higher for accuracies)."""
    return new < old if metric == "loss" else new > old


def _end_epoch(run: _Run, val_loader: Any) -> dict[str, Any]:
    """Validate, record the epoch, write outputs and checkpoints; returns the epoch's metrics."""
    cfg, info = run.cfg, run.info
    D.average_bn_stats(run.model)
    ev = evaluate(run.model, val_loader, device=run.device, amp=cfg.amp, amp_dtype=cfg.amp_dtype,
                  channels_last=cfg.channels_last)
    row: dict[str, Any] = dict(epoch=run.epoch, train_loss=run.partial["loss_sum"] / max(1, run.partial["count"]),
                               eval_loss=ev["loss"], eval_top1=ev["top1"], eval_top5=ev["top5"])
    score_source, weights = ev, "model"
    if run.ema is not None:
        D.average_bn_stats(run.ema.module)
        ema_ev = evaluate(run.ema.module, val_loader, device=run.device, amp=cfg.amp, amp_dtype=cfg.amp_dtype,
                          channels_last=cfg.channels_last)
        row.update(ema_loss=ema_ev["loss"], ema_top1=ema_ev["top1"], ema_top5=ema_ev["top5"])
        if not _improves(ev[cfg.eval_metric], ema_ev[cfg.eval_metric], cfg.eval_metric):
            score_source, weights = ema_ev, "ema"  # the EMA validated at least as well: it is what gets kept
    train_loss, train_skipped = D.all_reduce_sum([row["train_loss"], float(run.partial.get("skipped", 0))],
                                                 run.device)
    row.update(train_loss=train_loss / info.world_size, lr=run.optimizer.param_groups[0]["lr"],
               **{"img/s": run.partial["images"] / max(run.partial["seconds"], 1e-9)},
               train_skipped=int(train_skipped), eval_skipped=ev["skipped"])
    run.history.append(row)
    run.tracking.log_epoch(row["epoch"], row)
    score = score_source[cfg.eval_metric]
    better = run.best_metric is None or _improves(score, run.best_metric, cfg.eval_metric)
    if better:
        run.best_metric, run.best_epoch, run.best_weights = score, run.epoch, weights
    run.epoch += 1
    run.batch = 0
    run.partial = dict(loss_sum=0.0, count=0, images=0, seconds=0.0)
    path = run.save("last.pth.tar")
    if info.is_main:
        if better:
            atomic_copy(path, run.output_dir / "model_best.pth.tar")
            write_model_folder(run.ema.module if weights == "ema" else run.model, run.output_dir, cfg,
                               run.class_names)
        write_summary(run.output_dir / "summary.csv", run.history)
        write_plot(run.output_dir / "summary.png", run.history)
        ema_part = f" ema_top1 {row['ema_top1']:.2f}" if "ema_top1" in row else ""
        _LOG.info(f"epoch {row['epoch'] + 1}/{cfg.epochs}: train_loss {row['train_loss']:.4f} eval_loss "
                  f"{row['eval_loss']:.4f} top-1 {row['eval_top1']:.2f} top-5 {row['eval_top5']:.2f}{ema_part} "
                  f"lr {row['lr']:.3g} {row['img/s']:.0f} img/s")
        for split, key in (("train", "train_skipped"), ("val", "eval_skipped")):
            if row[key]:
                noun = "image" if row[key] == 1 else "images"
                _LOG.warning(f"{split}: skipped {row[key]} unreadable {noun} in epoch {row['epoch'] + 1} "
                             "(left out, not replaced)")
    D.barrier()
    return dict(row, best_metric=run.best_metric, best_epoch=run.best_epoch, output_dir=str(run.output_dir),
                count=ev["count"], step=run.step, interrupted=False)
