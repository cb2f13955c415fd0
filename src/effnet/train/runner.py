"""A whole training or fine-tuning run from a TrainConfig: process group, data, model, `fit`, and the
final report. Shared by `effnet train` and `effnet finetune`."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
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
_LOG = logging.getLogger(__name__)


def config_for_run(args: Any, base: TrainConfig | None = None) -> TrainConfig:
    """Settings of a run from parsed flags; with --resume, the checkpoint's own settings are the base,
    so `--resume FILE` alone continues a run (flags typed now still win)."""
    cfg = config_from_args(args, base)
    if cfg.resume:
        saved = load_training_checkpoint(cfg.resume).get("args")
        if isinstance(saved, dict):
            # the saved `output` is where the run was written first; a copied run continues in its copy
            typed_output = cfg.output
            cfg = config_from_args(args, TrainConfig.from_dict(saved, f"{cfg.resume} args"))
            cfg.output = typed_output
            was = str(saved.get("opt") or cfg.opt)
            if was.lower() != cfg.opt.lower():  # its state would load into the wrong optimiser, then crash
                raise ConfigError(f"--opt {cfg.opt} differs from the optimiser {was} of the run in {cfg.resume}; a "
                                  f"resumed run keeps its optimiser (start a new run from its weights with "
                                  f"--initial-checkpoint to change it)")
    return cfg


def finished_message(cfg: TrainConfig) -> str | None:
    """When --resume names a run that already trained its --epochs: what to say instead of training."""
    done = int(load_training_checkpoint(cfg.resume).get("epoch", 0))
    if done < cfg.epochs:
        return None
    return (f"{cfg.resume} already finished its {done} epoch(s); nothing to do (give --epochs N with N > {done} "
            f"to train it further)")


def output_folder(cfg: TrainConfig) -> Path:
    """The run's folder, chosen (and created for a new run) by the main process and shared with the others."""
    info = D.current()
    folder = [str(resolve_output_dir(cfg)) if info.is_main else ""]
    if info.enabled:
        torch.distributed.broadcast_object_list(folder, src=0)
    return Path(folder[0])


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
                _LOG.info(f"new classifier for {num_classes} classes (the checkpoint's does not fit)")
        else:
            load_state_dict_into(model, read_state_dict(cfg.initial_checkpoint), cfg.initial_checkpoint)
    scale = cfg.head_init_scale
    if scale is None and not (cfg.pretrained or cfg.initial_checkpoint):
        # from scratch, the TF init's logits (std ~4 for 10 classes) start the loss near 2x ln(classes)
        # with gradients ~40x those of zero logits
        scale = 0.0
    if scale is not None and not cfg.resume:
        head = model.get_classifier()
        if isinstance(head, nn.Linear):
            with torch.no_grad():
                head.weight.mul_(scale)
                head.bias.mul_(scale)
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
        finished = finished_message(cfg) if cfg.resume else None
        if finished:
            if info.is_main:
                _LOG.info(finished)
            return 0
        output_dir = output_folder(cfg)
        if info.is_main:
            what = "fine-tuning" if finetune else "training"
            _LOG.info(f"{what} {cfg.model} on {len(train_loader.dataset)} images, {len(classes)} classes, "
                      f"{info.world_size} process(es) on {info.device.type}; output: {output_dir}")
        metrics = fit(model, train_loader, val_loader, cfg, output_dir)
        if metrics.get("interrupted"):
            return 128 + int(metrics.get("signal") or signal.SIGINT)
        if info.is_main:
            _LOG.info(f"done: top-1 {metrics['eval_top1']:.2f}% top-5 {metrics['eval_top5']:.2f}% (best "
                      f"{cfg.eval_metric} {metrics['best_metric']:.4g} at epoch {metrics['best_epoch'] + 1}); "
                      f"checkpoints in {output_dir}")
        return 0
    finally:
        D.destroy()
