"""The training loop: `fit`, one epoch of steps, and the end-of-epoch validation and checkpoints.
`evaluate` lives in `evaluate.py` and is re-exported here."""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..data.samples import SkipReport, unreadable_of
from .. import kernels
from ..errors import EffnetError
from ..log import ensure_logging
from . import distributed as D
from .artifact import write_model_folder
from .checkpoint import atomic_copy
from .config import TrainConfig
from .data import set_loader_epoch
from .evaluate import autocast, evaluate, resolve_device
from .output import Progress, write_args_yaml, write_plot, write_summary
from .run_state import RunState, StopRequest
from .tracking import Tracking

__all__ = ["TrainingDivergedError", "autocast", "evaluate", "fit", "resolve_device"]

_LOG = logging.getLogger(__name__)


class TrainingDivergedError(EffnetError, RuntimeError):
    """The loss became NaN or infinite."""


def _plain(model: nn.Module) -> nn.Module:
    """The module under a torch.compile wrapper (whose state_dict keys would carry `_orig_mod.`)."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


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


def _batches(loader: Iterable[Any], skips: SkipReport, run: RunState) -> Iterator[tuple[Tensor, Tensor]]:
    """(images, targets) of each step. Samples the loader could not read are counted in `skips`.

    A batch that unreadable files left with fewer than 2 images (1 with --batch-size 1) makes no
    update: BatchNorm cannot normalise one value per channel. Under torchrun every rank skips that step
    together, since one rank leaving out its backward would leave the others waiting in the gradient
    all-reduce. The schedule and step count move on as planned; `run.partial` counts skipped steps."""
    fewest = min(2, run.cfg.batch_size)
    for batch in loader:
        skips.add(unreadable_of(batch), show=run.info.is_main)
        if D.broadcast_flag(batch[0].shape[0] < fewest, run.device):
            run.scheduler.step()
            run.step += 1
            run.batch += 1
            run.partial["skipped_steps"] = run.partial.get("skipped_steps", 0) + 1
            if run.info.is_main and run.partial["skipped_steps"] == 1:
                _LOG.warning(f"train: skipping step {run.step} (epoch {run.epoch + 1}): unreadable images left a "
                             f"batch with fewer than {fewest} images{' on some process' if run.info.enabled else ''}")
            continue
        yield batch[0], batch[1]


def _train_epoch(run: RunState, net: nn.Module, loader: Any, frozen: bool, stop: StopRequest) -> bool:
    """Train until the epoch ends (True) or a stop signal arrives (False); updates run.partial."""
    cfg, device = run.cfg, run.device
    _train_mode(run.model, frozen)
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
            run.ema.update(run.model)
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


def _wrap(model: nn.Module, info: D.DistInfo, backend: str | None) -> nn.Module:
    """The module the steps call: `model` itself, in DDP under torchrun, compiled with `backend`
    (after DDP, as DDP's bucketing expects). Checkpoints, EMA and validation keep using `model`."""
    net = model
    if info.enabled:
        # each rank keeps its own BatchNorm statistics; average_bn_stats merges them before validation
        net = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                      broadcast_buffers=False)
    if backend:
        kernels.load()  # built before compiling: a graph being traced uses the native kernels only if loaded
        return torch.compile(net, backend=backend)
    return net


def fit(model: nn.Module, train_loader: Any, val_loader: Any, cfg: TrainConfig, output_dir: str | Path, *,
        criterion: nn.Module | None = None, extra_params: Iterable[nn.Module | nn.Parameter] = ()) -> dict[str, Any]:
    """Train `model` for `cfg.epochs` epochs, validating after each, writing checkpoints, summary.csv,
    args.yaml and a plot to `output_dir` (rank 0 only under torchrun).

    `criterion(output, target)` replaces the default loss (label smoothing / soft-target CE);
    `extra_params` (modules or parameters) are optimised along with the model. `cfg.resume` continues a
    run exactly. Returns the final metrics (eval_* of the last epoch, best_metric, best_epoch, and
    `interrupted` when a signal stopped it).

    With `cfg.compile` the training forward runs through torch.compile; a model that is already
    compiled is trained through its plain module, compiled again (inductor unless `cfg.compile` names a
    backend), so the saved weights have plain key names.
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
    backend = cfg.compile or ("inductor" if _plain(model) is not model else None)
    model = _plain(model)
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
    run = RunState(model, cfg, output_dir, criterion, extra_params, steps_per_epoch, class_names, info)
    if cfg.resume:
        run.restore(cfg.resume)
    else:
        _seed_all(cfg.seed + info.rank)
    if info.is_main:
        write_args_yaml(output_dir / "args.yaml", cfg.to_dict())
    trainable = _classifier_params(model) if cfg.freeze_epochs else set()
    net, wrapped_frozen = model, None
    metrics: dict[str, Any] = {}
    with StopRequest() as stop, Tracking(cfg, output_dir, enabled=info.is_main) as run.tracking:
        while run.epoch < cfg.epochs:
            frozen = run.epoch < cfg.freeze_epochs
            if wrapped_frozen is None or frozen != wrapped_frozen:
                _set_frozen(model, frozen, trainable)
                net, wrapped_frozen = _wrap(model, info, backend), frozen
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


def _end_epoch(run: RunState, val_loader: Any) -> dict[str, Any]:
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
    skipped_steps = int(run.partial.get("skipped_steps", 0))
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
        if skipped_steps:
            _LOG.warning(f"train: skipped {skipped_steps} step(s) in epoch {row['epoch'] + 1}, their batches too small "
                         "after leaving out unreadable images")
    D.barrier()
    return dict(row, best_metric=run.best_metric, best_epoch=run.best_epoch, output_dir=str(run.output_dir),
                count=ev["count"], step=run.step, interrupted=False)
