"""Evaluation (`evaluate`), and the device and autocast choices the training loop shares with it."""

from __future__ import annotations

import contextlib
import time
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.samples import SkipReport, unreadable_of
from ..progress import bar
from . import distributed as D
from .config import TrainConfig


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
