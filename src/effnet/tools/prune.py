"""`effnet prune`: knapsack-prune a trained model to a MACs or latency budget, fine-tune it with inner
distillation from the unpruned model, and write a Hugging Face-layout folder that
`effnet.create_model('local-dir:DIR')` loads."""

from __future__ import annotations

import argparse
import csv
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
from ..loading import load_source_model, model_spec, starting_point
from ..train import (TrainConfig, add_train_arguments, build_loaders, config_from_args, data_config_for, evaluate,
                     fit)
from ..train.evaluate import resolve_device
from ..train.losses import create_criterion

HELP = ("knapsack-prune a model to a MACs or latency budget, fine-tune with inner distillation, save a "
        "local-dir: folder")

# Fine-tuning after pruning: short and gentle, the weights are already trained.
PRUNE_DEFAULTS = TrainConfig(opt="sgd", epochs=5, warmup_epochs=0.0, lr_base=0.01, sched="cosine", smoothing=0.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p)
    g = p.add_argument_group("pruning")
    g.add_argument("--checkpoint", metavar="FILE", help="weights to prune: a run's model_best.pth.tar alone names "
                   "the model and its preprocessing; their classifier sets the class count")
    g.add_argument("--random-weights", action="store_true", help="allow pruning randomly initialised weights")
    g.add_argument("--budget", choices=("macs", "latency"), default="macs",
                   help="what the budget limits: MACs counted at --img-size, or latency measured on this "
                        "machine's CPU at --latency-batch and --latency-dtype (default: macs)")
    g.add_argument("--macs-ratio", type=arg_type(Rule(float, 0.0, 1.0, lo_open=True)), metavar="R",
                   help="keep at most R x the model's MACs (0 < R <= 1), counted at --img-size")
    g.add_argument("--target-ratio", type=arg_type(Rule(float, 0.0, 1.0, lo_open=True)), metavar="R",
                   help="keep at most R x the unpruned model's MACs or measured latency, as --budget says "
                        "(--ratio is the crop aspect range, as in timm)")
    g.add_argument("--target-ms", type=arg_type(positive(float)), metavar="MS",
                   help="--budget latency: at most MS milliseconds per batch of --latency-batch images")
    g.add_argument("--latency-batch", type=arg_type(positive(int)), default=1, metavar="N",
                   help="batch size the latency is measured and budgeted at (default: 1)")
    g.add_argument("--latency-dtype", choices=("fp32", "bf16"), default="fp32",
                   help="precision the latency is measured and budgeted at (default: fp32)")
    g.add_argument("--calib-batches", type=arg_type(positive(int)), default=16, metavar="N",
                   help="training batches the Taylor importance is summed over (default: 16)")
    g.add_argument("--distill-weight", type=arg_type(at_least(0.0)), default=1.0, metavar="G",
                   help="weight of the block-output MSE in the fine-tuning loss (default: 1.0; 0: labels only)")
    g.add_argument("--knapsack", choices=("dp", "greedy"), default="dp",
                   help="exact dynamic programme on scaled costs, or greedy by importance per MAC (default: dp)")
    p.epilog = ("--output DIR receives config.json, model.safetensors and prune_report.json (with the measured "
                "latency table under --budget latency); the fine-tuning run's checkpoints go to DIR/train. "
                "Fine-tuning defaults: 5 epochs, cosine, lr-base 0.01; --epochs 0 skips it. The model: --model "
                "NAME[.TAG], local-dir:DIR or a run folder, or --checkpoint RUN/model_best.pth.tar alone.")


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
    model.pretrained_cfg = model.cfg.pretrained.overlay(
        model.pretrained_cfg, input_size=tuple(data["input_size"]), mean=tuple(data["mean"]),
        std=tuple(data["std"]), interpolation=data["interpolation"], crop_pct=data["crop_pct"],
        crop_mode=data["crop_mode"], num_classes=num_classes, url=None, hf_hub_id=None, file=None).to_dict()
    return tuple(data["input_size"])


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def resolve_start(args: argparse.Namespace) -> None:
    """Name the model the way every command does (effnet.loading): `--checkpoint RUN/model_best.pth.tar`
    alone gives the run's model and preprocessing, `--model RUN` or local-dir:RUN its folder's; flags
    typed on the command line win."""
    given = vars(args)
    if not given.get("model") and not args.checkpoint:
        raise EffnetError("no model: give --model NAME (or a run folder) or --checkpoint RUN/model_best.pth.tar")
    model, checkpoint, settings = starting_point(given.get("model"), args.checkpoint)
    if model is None:
        raise EffnetError(f"no model: --checkpoint {args.checkpoint} does not say which model it holds; "
                          f"give --model NAME")
    args.model, args.checkpoint = model, checkpoint
    for key, value in settings.items():
        given.setdefault(key, value)


def resolve_budget(args: argparse.Namespace) -> tuple[str, float | None, float | None]:
    """(budget, ratio, target ms) from the flags, with a one-line error naming the flag at fault."""
    ratio, target = args.target_ratio, args.target_ms
    if args.budget == "macs":
        if target is not None:
            raise EffnetError("--target-ms is a latency budget: add --budget latency (or give --macs-ratio R)")
        if args.macs_ratio is not None and ratio is not None and args.macs_ratio != ratio:
            raise EffnetError(f"--macs-ratio {args.macs_ratio:g} and --target-ratio {ratio:g} disagree; give one")
        ratio = args.macs_ratio if args.macs_ratio is not None else ratio
        if ratio is None:
            raise EffnetError("--budget macs needs --macs-ratio R (or --target-ratio R): keep at most R x the MACs")
        if not 0 < ratio <= 1:
            raise EffnetError(f"--macs-ratio must be in (0, 1], got {ratio}")
        return "macs", ratio, None
    if args.macs_ratio is not None:
        raise EffnetError("--macs-ratio is a MACs budget; with --budget latency give --target-ratio R or "
                          "--target-ms MS")
    if (ratio is None) == (target is None):
        raise EffnetError("--budget latency needs one of --target-ms MS or --target-ratio R (R x the measured "
                          "latency)")
    if target is not None and not (math.isfinite(target) and target > 0):
        raise EffnetError(f"--target-ms must be a positive number of milliseconds, got {target}")
    if ratio is not None and not 0 < ratio <= 1:
        raise EffnetError(f"--target-ratio must be in (0, 1], got {ratio}")
    return "latency", ratio, target


def finetune_skipped(run_dir: Path) -> int:
    """Unreadable training images the fine-tuning epochs left out (summary.csv's train_skipped column)."""
    summary = run_dir / "summary.csv"
    if not summary.is_file():
        return 0
    with summary.open(newline="") as f:
        return sum(int(float(row.get("train_skipped") or 0)) for row in csv.DictReader(f))


def run(args: argparse.Namespace) -> int:
    from ..data.samples import SkipReport
    from ..prune import InnerDistillationLoss, channel_groups, prune_model, taylor_importance
    from ..prune.latency import compare_latency, fit_latency_budget, measure_latency_model, min_latency
    from ..prune.select import min_macs_ratio
    from ..prune.slicing import slice_model

    resolve_start(args)
    budget, ratio, target_ms = resolve_budget(args)
    cfg, epochs = train_config(args, PRUNE_DEFAULTS)
    if args.calib_batches < 1:
        raise EffnetError(f"--calib-batches must be >= 1, got {args.calib_batches}")
    device = resolve_device(cfg)
    torch.manual_seed(cfg.seed)
    train_loader, val_loader, classes = build_loaders(cfg)
    teacher = load_source_model(cfg.model, args.checkpoint, pretrained=cfg.pretrained, data_classes=len(classes),
                                num_classes=cfg.num_classes, in_chans=cfg.in_chans,
                                random_weights=args.random_weights).to(device)
    input_size = set_data_config(teacher, cfg, len(classes))
    bs, dtype = args.latency_batch, args.latency_dtype
    latency = None
    if budget == "macs":
        smallest = min_macs_ratio(teacher, input_size)
        if ratio < smallest:
            raise EffnetError(f"--macs-ratio {ratio:g} is below what pruning can reach for {cfg.model} at "
                              f"{input_size[-1]}px ({smallest:.3f}: one channel per group, the stem, first stage "
                              f"and head keep their widths); give --macs-ratio {math.ceil(smallest * 100) / 100:.2f}"
                              f" or more")
    else:
        print(f"measuring the per-channel latency of every group at batch {bs}, {dtype}, {input_size[-1]}px, "
              f"{torch.get_num_threads()} threads ...", flush=True)
        latency = measure_latency_model(teacher, input_size, bs, dtype)
        target_ms = target_ms if target_ms is not None else ratio * latency.base_ms
        floor = min_latency(latency, teacher)
        flag = f"--target-ms {args.target_ms:g}" if args.target_ms is not None else f"--target-ratio {ratio:g}"
        if target_ms < floor:
            raise EffnetError(f"{flag} asks for {target_ms:.3f} ms but pruning can reach about {floor:.3f} ms "
                              f"({floor / latency.base_ms:.3f} of the measured {latency.base_ms:.3f} ms at batch "
                              f"{bs}, {dtype}); what is left is the stem, first stage, head and per-layer overhead")
        print(f"unpruned: {latency.base_ms:.3f} ms per batch of {bs} measured; target {target_ms:.3f} ms "
              f"({target_ms / latency.base_ms:.3f}x)", flush=True)
    out = fresh_dir(cfg.output)  # never into an earlier result
    t0 = time.perf_counter()
    before = evaluate(teacher, val_loader, device=device)
    print(f"{cfg.model}: top-1 {before['top1']:.2f}% on {before['count']} validation images, "
          f"{count_macs(teacher, input_size) / 1e6:.2f} MMACs at {input_size[-1]}px", flush=True)
    groups = channel_groups(teacher)
    calib_skips = SkipReport("calibration")
    scores = taylor_importance(teacher, train_loader, groups, max_batches=args.calib_batches, skips=calib_skips)
    if latency is None:
        name = f"{teacher.cfg.name}_knapsack{round(ratio * 100)}"
        student, sel = prune_model(teacher, scores, ratio, input_size=input_size, method=args.knapsack, name=name)
    else:
        try:
            sel = fit_latency_budget(teacher, scores, target_ms, latency, input_size=input_size,
                                     method=args.knapsack)
        except ValueError as e:
            raise EffnetError(f"--budget latency: {e}") from None
        name = f"{teacher.cfg.name}_knapsack_latency{round(sel.ratio * 100)}"
        student = slice_model(teacher, sel.keep, name=name)
    teacher.eval().requires_grad_(False)
    sliced = evaluate(student, val_loader, device=device)
    cost = (f"{sel.macs / sel.base_macs:.4f} of the MACs" if latency is None else
            f"{sel.predicted_ms:.3f} ms predicted by the cost model ({sel.predicted_ms / latency.base_ms:.3f}x), "
            f"{sel.macs / sel.base_macs:.4f} of the MACs")
    print(f"pruned to {cost} ({args.knapsack}, {sel.rounds} knapsack solves, {100 * sel.value_kept:.1f}% of the "
          f"importance kept): top-1 {sliced['top1']:.2f}% before fine-tuning", flush=True)

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
    skipped = dict(calibration=calib_skips.count, fine_tuning=finetune_skipped(out / "train"),
                   validation_pass=before["skipped"])
    print(f"unreadable images: {skipped['calibration']} dropped in calibration, {skipped['fine_tuning']} in "
          f"fine-tuning, {skipped['validation_pass']} per validation pass (left out of every number, not "
          f"replaced)", flush=True)

    student.eval()
    ours, theirs = count_macs(student, input_size), torch_macs(student, input_size)
    base_ours, base_theirs = count_macs(teacher, input_size), torch_macs(teacher, input_size)
    if ours != theirs or base_ours != base_theirs:
        logging.getLogger(__name__).warning(f"warning: MAC counters disagree (effnet {ours}, torch {theirs})")
    measured = compare_latency({"unpruned": teacher, "pruned": student}, input_size, bs, dtype)
    predicted = (f"; the cost model predicted {sel.predicted_ms:.3f} ms, the goal was {sel.ratio:.3f}x"
                 if latency is not None else "")
    print(f"latency at batch {bs}, {dtype}, {torch.get_num_threads()} threads (medians, interleaved): unpruned "
          f"{measured['unpruned']:.3f} ms, pruned {measured['pruned']:.3f} ms measured "
          f"({measured['pruned'] / measured['unpruned']:.3f}x){predicted}", flush=True)
    save_hf_dir(student.cpu(), out, class_names=classes)
    report = dict(
        model=cfg.model, checkpoint=args.checkpoint, budget=budget, ratio=ratio,
        macs_ratio=ratio if budget == "macs" else None, target_ms=target_ms, knapsack=args.knapsack,
        input_size=list(input_size), calib_batches=args.calib_batches, distill_weight=args.distill_weight,
        epochs=epochs, macs=dict(original=base_ours, pruned=ours, ratio=ours / base_ours,
                                 torch_original=base_theirs, torch_pruned=theirs),
        latency=dict(batch_size=bs, dtype=dtype, threads=torch.get_num_threads(), measured_ms=measured,
                     predicted_ms=sel.predicted_ms, cost_model=latency.to_dict() if latency else None),
        params=dict(original=sum(p.numel() for p in teacher.parameters()),
                    pruned=sum(p.numel() for p in student.parameters())),
        top1=dict(original=before["top1"], sliced=sliced["top1"], fine_tuned=tuned["top1"]),
        top5=dict(original=before["top5"], sliced=sliced["top5"], fine_tuned=tuned["top5"]),
        unreadable_images=skipped,
        importance_kept=sel.value_kept, widths=dict(stage_out=list(student.cfg.pruned.stage_out),
                                                    blocks=[[list(b) for b in s] for s in student.cfg.pruned.blocks]),
        knapsack_log=sel.log, seconds=round(time.perf_counter() - t0, 1))
    write_json(out / "prune_report.json", report)
    print(f"done: {ours / 1e6:.2f} of {base_ours / 1e6:.2f} MMACs ({ours / base_ours:.3f}; torch counts "
          f"{theirs / 1e6:.2f}), top-1 {before['top1']:.2f}% -> {tuned['top1']:.2f}% "
          f"({tuned['top1'] - before['top1']:+.2f}); load it with create_model('local-dir:{out}')", flush=True)
    return 0
