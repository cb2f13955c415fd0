"""`effnet prune`: knapsack-prune a trained model to a MACs budget, fine-tune it with inner
distillation from the unpruned model, and write a Hugging Face-layout folder that
`effnet.create_model('local-dir:DIR')` loads."""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EffnetError
from ..flops import count_macs
from ..hf_dir import atomic_write, save_hf_dir
from ..model import EfficientNet
from ..outputs import fresh_dir
from ..validators import Rule, arg_type, at_least, positive
from ..loading import load_source_model, model_spec
from ..train import (TrainConfig, add_train_arguments, build_loaders, config_from_args, data_config_for, evaluate,
                     fit)
from ..train.loop import resolve_device
from ..train.losses import create_criterion

HELP = "knapsack-prune a model to a MACs budget, fine-tune with inner distillation, save a local-dir: folder"

# Fine-tuning after pruning: short and gentle, the weights are already trained.
PRUNE_DEFAULTS = TrainConfig(opt="sgd", epochs=5, warmup_epochs=0.0, lr_base=0.01, sched="cosine", smoothing=0.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p, model_required=True)
    g = p.add_argument_group("pruning")
    g.add_argument("--checkpoint", metavar="FILE", help="weights to prune (e.g. a model_best.pth.tar of effnet "
                   "train); their classifier sets the class count")
    g.add_argument("--random-weights", action="store_true", help="allow pruning randomly initialised weights")
    g.add_argument("--macs-ratio", type=arg_type(Rule(float, 0.0, 1.0, lo_open=True)), required=True, metavar="R",
                   help="keep at most R x the model's MACs (0 < R <= 1), counted at --img-size")
    g.add_argument("--calib-batches", type=arg_type(positive(int)), default=16, metavar="N",
                   help="training batches the Taylor importance is summed over (default: 16)")
    g.add_argument("--distill-weight", type=arg_type(at_least(0.0)), default=1.0, metavar="G",
                   help="weight of the block-output MSE in the fine-tuning loss (default: 1.0; 0: labels only)")
    g.add_argument("--knapsack", choices=("dp", "greedy"), default="dp",
                   help="exact dynamic programme on scaled costs, or greedy by importance per MAC (default: dp)")
    p.epilog = ("--output DIR receives config.json, model.safetensors and prune_report.json; the fine-tuning "
                "run's checkpoints go to DIR/train. Fine-tuning defaults: 5 epochs, cosine, lr-base 0.01; "
                "--epochs 0 skips it.")


def train_config(args: argparse.Namespace, base: TrainConfig) -> tuple[TrainConfig, int]:
    """The run's TrainConfig and the number of fine-tuning epochs (0 allowed, unlike `effnet train`)."""
    given = dict(vars(args))
    epochs = int(given.get("epochs", base.epochs))
    if epochs < 0:
        raise EffnetError(f"--epochs must be >= 0, got {epochs}")
    given["epochs"] = max(1, epochs)
    if given.get("model"):
        given["model"] = model_spec(given["model"])
    if not given.get("output"):
        raise EffnetError("--output DIR is required: the folder the result is written to")
    if Path(given["output"]).expanduser().exists() and not Path(given["output"]).expanduser().is_dir():
        raise EffnetError(f"--output {given['output']!r} is a file, not a folder; give a folder name")
    return config_from_args(given, base), epochs


def torch_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """torch.utils.flop_counter's count for one image (it reports FLOPs = 2 x MACs)."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def set_data_config(model: EfficientNet, cfg: TrainConfig, num_classes: int) -> tuple[int, int, int]:
    """Record the run's preprocessing in the model's pretrained_cfg (it travels to the output's
    config.json); returns the input size."""
    data = data_config_for(cfg)
    model.pretrained_cfg.update(input_size=tuple(data["input_size"]), mean=tuple(data["mean"]),
                                std=tuple(data["std"]), interpolation=data["interpolation"],
                                crop_pct=data["crop_pct"], crop_mode=data["crop_mode"], num_classes=num_classes,
                                url=None, hf_hub_id=None, file=None)
    return tuple(data["input_size"])


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def run(args: argparse.Namespace) -> int:
    from ..prune import InnerDistillationLoss, channel_groups, prune_model, taylor_importance
    from ..prune.select import min_macs_ratio

    cfg, epochs = train_config(args, PRUNE_DEFAULTS)
    if not 0 < args.macs_ratio <= 1:
        raise EffnetError(f"--macs-ratio must be in (0, 1], got {args.macs_ratio}")
    if args.calib_batches < 1:
        raise EffnetError(f"--calib-batches must be >= 1, got {args.calib_batches}")
    device = resolve_device(cfg)
    torch.manual_seed(cfg.seed)
    train_loader, val_loader, classes = build_loaders(cfg)
    teacher = load_source_model(cfg.model, args.checkpoint, pretrained=cfg.pretrained, data_classes=len(classes),
                                num_classes=cfg.num_classes, in_chans=cfg.in_chans,
                                random_weights=args.random_weights).to(device)
    input_size = set_data_config(teacher, cfg, len(classes))
    smallest = min_macs_ratio(teacher, input_size)
    if args.macs_ratio < smallest:
        raise EffnetError(f"--macs-ratio {args.macs_ratio:g} is below what pruning can reach for {cfg.model} at "
                          f"{input_size[-1]}px ({smallest:.3f}: one channel per group, the stem, first stage and "
                          f"head keep their widths); give --macs-ratio {math.ceil(smallest * 100) / 100:.2f} or more")
    out = fresh_dir(cfg.output)  # never into an earlier result
    t0 = time.perf_counter()
    before = evaluate(teacher, val_loader, device=device)
    print(f"{cfg.model}: top-1 {before['top1']:.2f}% on {before['count']} validation images, "
          f"{count_macs(teacher, input_size) / 1e6:.2f} MMACs at {input_size[-1]}px", flush=True)
    groups = channel_groups(teacher)
    scores = taylor_importance(teacher, train_loader, groups, max_batches=args.calib_batches)
    name = f"{teacher.cfg.name}_knapsack{round(args.macs_ratio * 100)}"
    student, sel = prune_model(teacher, scores, args.macs_ratio, input_size=input_size, method=args.knapsack,
                               name=name)
    teacher.eval().requires_grad_(False)
    sliced = evaluate(student, val_loader, device=device)
    print(f"pruned to {sel.macs / sel.base_macs:.4f} of the MACs ({args.knapsack}, {sel.rounds} knapsack "
          f"solves, {100 * sel.value_kept:.1f}% of the importance kept): top-1 {sliced['top1']:.2f}% before "
          f"fine-tuning", flush=True)

    tuned = sliced
    if epochs > 0:
        mixing = cfg.mixup > 0 or cfg.cutmix > 0
        criterion = InnerDistillationLoss(student, teacher, args.distill_weight, keep=sel.keep,
                                          base_criterion=create_criterion(cfg.smoothing, mixing))
        cfg.class_names = classes
        fit(student, train_loader, val_loader, cfg, out / "train", criterion=criterion,
            extra_params=[criterion.projections])
        criterion.detach_hooks()
        tuned = evaluate(student, val_loader, device=device)

    student.eval()
    ours, theirs = count_macs(student, input_size), torch_macs(student, input_size)
    base_ours, base_theirs = count_macs(teacher, input_size), torch_macs(teacher, input_size)
    if ours != theirs or base_ours != base_theirs:
        logging.getLogger(__name__).warning(f"warning: MAC counters disagree (effnet {ours}, torch {theirs})")
    save_hf_dir(student.cpu(), out, class_names=classes)
    report = dict(
        model=cfg.model, checkpoint=args.checkpoint, macs_ratio=args.macs_ratio, knapsack=args.knapsack,
        input_size=list(input_size), calib_batches=args.calib_batches, distill_weight=args.distill_weight,
        epochs=epochs, macs=dict(original=base_ours, pruned=ours, ratio=ours / base_ours,
                                 torch_original=base_theirs, torch_pruned=theirs),
        params=dict(original=sum(p.numel() for p in teacher.parameters()),
                    pruned=sum(p.numel() for p in student.parameters())),
        top1=dict(original=before["top1"], sliced=sliced["top1"], fine_tuned=tuned["top1"]),
        top5=dict(original=before["top5"], sliced=sliced["top5"], fine_tuned=tuned["top5"]),
        importance_kept=sel.value_kept, widths=dict(stage_out=list(student.cfg.pruned.stage_out),
                                                    blocks=[[list(b) for b in s] for s in student.cfg.pruned.blocks]),
        knapsack_log=sel.log, seconds=round(time.perf_counter() - t0, 1))
    write_json(out / "prune_report.json", report)
    print(f"done: {ours / 1e6:.2f} of {base_ours / 1e6:.2f} MMACs ({ours / base_ours:.3f}; torch counts "
          f"{theirs / 1e6:.2f}), top-1 {before['top1']:.2f}% -> {tuned['top1']:.2f}% "
          f"({tuned['top1'] - before['top1']:+.2f}); load it with create_model('local-dir:{out}')", flush=True)
    return 0
