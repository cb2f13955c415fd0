"""A whole training or fine-tuning run from a TrainConfig: process group, data, model, `fit`, and the
final report. Shared by `effnet train` and `effnet finetune`."""

from __future__ import annotations

import signal
import sys
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_state_dict_into, read_state_dict
from ..registry import create_model
from . import distributed as D
from .checkpoint import load_training_checkpoint
from .config import ConfigError, TrainConfig, config_from_args, resolve_output_dir
from .data import build_loaders
from .loop import fit

CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")


def config_for_run(args: Any, base: TrainConfig | None = None) -> TrainConfig:
    """Settings of a run from parsed flags; with --resume, the checkpoint's own settings are the base,
    so `--resume FILE` alone continues a run (flags typed now still win)."""
    cfg = config_from_args(args, base)
    if cfg.resume:
        saved = load_training_checkpoint(cfg.resume).get("args")
        if isinstance(saved, dict):
            cfg = config_from_args(args, TrainConfig.from_dict(saved, f"{cfg.resume} args"))
    return cfg


def load_backbone(model: nn.Module, path: str, use_ema: bool = True) -> list[str]:
    """Load a checkpoint into `model` except a classifier of another class count (kept freshly
    initialised); returns the keys left out."""
    sd = read_state_dict(path, use_ema=use_ema)
    own = model.state_dict()
    skipped = [k for k in CLASSIFIER_KEYS if k in sd and k in own and sd[k].shape != own[k].shape]
    sd.update({k: own[k] for k in skipped})
    load_state_dict_into(model, sd, path)
    return skipped


def build_train_model(cfg: TrainConfig, num_classes: int, finetune: bool = False) -> nn.Module:
    """The model of a run: architecture, dropout, BatchNorm momentum, and starting weights (published
    ones with --pretrained, or --initial-checkpoint; when fine-tuning, a classifier of another size is
    replaced by a fresh one)."""
    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=cfg.in_chans, bn_momentum=cfg.bn_momentum)
    if cfg.drop is not None:
        kwargs["drop_rate"] = cfg.drop
    if cfg.drop_path is not None:
        kwargs["drop_path_rate"] = cfg.drop_path
    use_pretrained = cfg.pretrained and not cfg.initial_checkpoint
    model = create_model(cfg.model, pretrained=use_pretrained, **kwargs)
    if cfg.initial_checkpoint:
        if finetune:
            skipped = load_backbone(model, cfg.initial_checkpoint)
            if skipped and D.current().is_main:
                print(f"new classifier for {num_classes} classes (the checkpoint's does not fit)", file=sys.stderr)
        else:
            load_state_dict_into(model, read_state_dict(cfg.initial_checkpoint), cfg.initial_checkpoint)
    if cfg.head_init_scale is not None and not cfg.resume:
        head = model.get_classifier()
        if isinstance(head, nn.Linear):
            with torch.no_grad():
                head.weight.mul_(cfg.head_init_scale)
                head.bias.mul_(cfg.head_init_scale)
    return model


def run_training(cfg: TrainConfig, finetune: bool = False) -> int:
    """Train (or fine-tune) as `cfg` says; exit status 0, or 128 + signal when SIGINT/SIGTERM stopped it."""
    info = D.init_distributed(cfg.device)
    try:
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        train_loader, val_loader, classes = build_loaders(cfg, info)
        num_classes = cfg.num_classes or len(classes)
        if cfg.num_classes and cfg.num_classes < len(classes):
            raise ConfigError(f"--num-classes {cfg.num_classes} is fewer than the data's {len(classes)} classes")
        model = build_train_model(cfg, num_classes, finetune)
        cfg.class_names = classes
        output_dir = resolve_output_dir(cfg)
        if info.is_main:
            what = "fine-tuning" if finetune else "training"
            print(f"{what} {cfg.model} on {len(train_loader.dataset)} images, {len(classes)} classes, "
                  f"{info.world_size} process(es) on {info.device.type}; output: {output_dir}", flush=True)
        metrics = fit(model, train_loader, val_loader, cfg, output_dir)
        if metrics.get("interrupted"):
            return 128 + int(metrics.get("signal") or signal.SIGINT)
        if info.is_main:
            print(f"done: top-1 {metrics['eval_top1']:.2f}% top-5 {metrics['eval_top5']:.2f}% (best "
                  f"{cfg.eval_metric} {metrics['best_metric']:.4g} at epoch {metrics['best_epoch'] + 1}); "
                  f"checkpoints in {output_dir}", flush=True)
        return 0
    finally:
        D.destroy()
