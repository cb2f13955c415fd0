"""`effnet validate`: top-1/top-5 accuracy, loss and throughput of weights on a labelled image set."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..data import ImageFolder
from ..checkpoint import has_ema_weights
from ..errors import CheckpointError, EffnetError
from ..loading import add_model_arguments, load_from_args
from ..train.config import DATASETS, TrainConfig
from ..train.data import build_dataset, dataset_classes, eval_transform, make_eval_loader, split_dir
from ..train.evaluate import evaluate
from ..validators import COMMON, arg_type

HELP = "measure top-1/top-5 accuracy of a model's weights on class folders or the digits (JSON like timm's)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--use-ema", action="store_true",
                   help="take a training checkpoint's EMA weights (default: those that validated best)")
    p.add_argument("--data-dir", metavar="DIR", help="class folders, or a folder with a --split sub-folder")
    p.add_argument("--dataset", choices=DATASETS, help="embedded dataset (its validation split)")
    p.add_argument("--split", default=None,
                   help="sub-folder of --data-dir to use (default: val when present, else DIR holds the class folders)")
    p.add_argument("-b", "--batch-size", type=arg_type(COMMON["batch_size"]), default=256, metavar="N", help="(default: 256)")
    p.add_argument("-j", "--workers", type=arg_type(COMMON["workers"]), default=2, help="DataLoader workers (default: 2)")
    p.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")


# Folder names that mark DIR as holding splits rather than class folders.
_SPLIT_NAMES = frozenset({"train", "training", "val", "validation", "valid", "test", "testing"})


def _dataset(args: argparse.Namespace, cfg: TrainConfig, transform: Any) -> Any:
    if args.dataset and args.data_dir:
        raise EffnetError(f"--data-dir and --dataset {args.dataset} both name the data; give only one")
    if args.dataset:
        if args.split not in (None, "val"):
            raise EffnetError(f"--split {args.split}: --dataset {args.dataset} has only its val split")
        return build_dataset(cfg, "val", transform)
    if not args.data_dir:
        raise EffnetError("no data: give --data-dir DIR (class folders) or --dataset digits")
    root = Path(args.data_dir)
    if not root.is_dir():
        raise EffnetError(f"--data-dir {args.data_dir}: no such folder")
    try:
        root = split_dir(args.data_dir, args.split or "val")
    except EffnetError:
        splits = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.lower() in _SPLIT_NAMES)
        if args.split is not None or splits:
            # a missing split must not fall back to reading the split folders as classes
            raise EffnetError(f"--split {args.split or 'val'}: no such sub-folder in {args.data_dir} (it has "
                              f"{', '.join(splits) if splits else 'no split folders'}); pick one of those, or give "
                              "the folder of class folders as --data-dir without --split") from None
    return ImageFolder(root, transform=transform)


def _check_classes(loaded: Any, classes: list[str], n_out: int, source: str) -> None:
    """The model's outputs must be the data's classes: same count, and same names where both are known."""
    if n_out != len(classes):
        raise CheckpointError(f"the model ({loaded.weights or loaded.name}) has {n_out} classes but {source} has "
                              f"{len(classes)}; labels would not line up: validate on data with the classes the "
                              "model was trained on")
    names = list(loaded.label_names or [])
    if names and set(names) & set(classes) and names != list(classes):
        differ = [f"{i}: model {a!r} vs data {b!r}" for i, (a, b) in enumerate(zip(names, classes)) if a != b]
        raise CheckpointError(f"the model's classes differ from those of {source} ({'; '.join(differ[:3])}); "
                              "labels would not line up")


def _check_ema(args: argparse.Namespace, loaded: Any) -> None:
    """--use-ema needs a training checkpoint that holds EMA weights; otherwise it would silently use others."""
    if not args.use_ema:
        return
    path = loaded.weights
    if path is None or not Path(path).is_file():
        raise EffnetError("--use-ema needs a training checkpoint (--checkpoint FILE) holding EMA weights")
    if not has_ema_weights(path):
        raise CheckpointError(f"--use-ema: {path} holds no EMA weights (train with --model-ema); drop --use-ema "
                              "to validate its weights")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise EffnetError(f"--batch-size must be >= 1, got {args.batch_size}")
    loaded = load_from_args(args)
    _check_ema(args, loaded)
    model, data_config, device = loaded.model, loaded.data_config, loaded.device
    cfg = TrainConfig(model=loaded.name, dataset=args.dataset, data_dir=None if args.dataset else args.data_dir)
    dataset = _dataset(args, cfg, eval_transform(data_config))
    classes = dataset_classes(dataset)
    n_out = int(getattr(model, "num_classes", 0) or 0)
    source = f"--dataset {args.dataset}" if args.dataset else f"--data-dir {args.data_dir}"
    _check_classes(loaded, classes, n_out, source)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = make_eval_loader(dataset, args.batch_size, args.workers)
    m = evaluate(model, loader, device=device, amp=args.amp, channels_last=args.channels_last, desc="validate")
    result = dict(model=loaded.name, top1=round(m["top1"], 4), top1_err=round(100 - m["top1"], 4),
                  top5=round(m["top5"], 4), top5_err=round(100 - m["top5"], 4), loss=round(m["loss"], 6),
                  count=m["count"], img_per_sec=round(m["img_per_sec"], 2),
                  param_count=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                  img_size=data_config["input_size"][-1], crop_pct=data_config["crop_pct"],
                  interpolation=data_config["interpolation"], num_classes=n_out, skipped=m["skipped"])
    if m["skipped"]:
        noun = "image" if m["skipped"] == 1 else "images"
        print(f"val: skipped {m['skipped']} unreadable {noun} (left out of every number, not replaced)",
              file=sys.stderr)
    if args.format == "json":
        print(json.dumps(result, indent=4))
    else:
        print(f"{loaded.name}: top-1 {result['top1']:.2f}% ({result['top1_err']:.2f}% error), top-5 "
              f"{result['top5']:.2f}%, loss {result['loss']:.4f}, {result['count']} images at "
              f"{result['img_size']} px (crop {result['crop_pct']:g}, {result['interpolation']}), "
              f"{result['img_per_sec']:.0f} img/s", file=sys.stdout)
    return 0
