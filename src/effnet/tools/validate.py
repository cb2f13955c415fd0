"""`effnet validate`: top-1/top-5 accuracy, loss and throughput of weights on a labelled image set."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_state_dict
from ..data import ImageFolder
from ..errors import CheckpointError, EffnetError
from ..registry import LOCAL_DIR_PREFIX, create_model, load_weights
from ..train.config import DATASETS, TrainConfig
from ..train.data import (build_dataset, data_config_for, dataset_classes, eval_transform, make_eval_loader,
                          split_dir)
from ..train.loop import evaluate

HELP = "measure top-1/top-5 accuracy of a model's weights on class folders or the digits (JSON like timm's)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME", help="model name or local-dir:DIR")
    p.add_argument("--pretrained", action="store_true", help="use the published weights")
    p.add_argument("--checkpoint", metavar="FILE", help="weights file (.pth.tar, .pth, .safetensors)")
    p.add_argument("--use-ema", action="store_true", help="take a training checkpoint's EMA weights")
    p.add_argument("--data-dir", metavar="DIR", help="class folders, or a folder with a --split sub-folder")
    p.add_argument("--dataset", choices=DATASETS, help="embedded dataset (its validation split)")
    p.add_argument("--split", default="val", help="sub-folder of --data-dir to use when present (default: val)")
    p.add_argument("--img-size", type=int, help="image size (default: the model's)")
    p.add_argument("--crop-pct", type=float, help="centre-crop fraction (default: the model's)")
    p.add_argument("--interpolation", help="resize interpolation (default: the model's)")
    p.add_argument("--mean", type=float, nargs="+", help="normalisation mean")
    p.add_argument("--std", type=float, nargs="+", help="normalisation std")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="(default: 256)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: from the checkpoint or the data)")
    p.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")


def _dataset(args: argparse.Namespace, cfg: TrainConfig, transform: Any) -> Any:
    if args.dataset:
        return build_dataset(cfg, "val", transform)
    if not args.data_dir:
        raise EffnetError("no data: give --data-dir DIR (class folders) or --dataset digits")
    root = Path(args.data_dir)
    try:
        root = split_dir(args.data_dir, args.split)
    except EffnetError:
        pass  # no split sub-folder: DIR holds the class folders itself
    return ImageFolder(root, transform=transform)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise EffnetError(f"--batch-size must be >= 1, got {args.batch_size}")
    is_local = args.model.startswith(LOCAL_DIR_PREFIX)
    if not (args.pretrained or args.checkpoint or is_local):
        raise EffnetError("no weights to validate: give --pretrained, --checkpoint FILE or a local-dir: model")
    cfg = TrainConfig(model=args.model, dataset=args.dataset, data_dir=args.data_dir, img_size=args.img_size,
                      crop_pct=args.crop_pct, interpolation=args.interpolation,
                      mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None)
    data_config = data_config_for(cfg)
    dataset = _dataset(args, cfg, eval_transform(data_config))
    classes = dataset_classes(dataset)
    state_dict = read_state_dict(args.checkpoint, use_ema=args.use_ema) if args.checkpoint else None
    num_classes = args.num_classes
    if num_classes is None and state_dict is not None and "classifier.weight" in state_dict:
        num_classes = int(state_dict["classifier.weight"].shape[0])
    if num_classes is None and not (args.pretrained or is_local):
        num_classes = len(classes)
    model = create_model(args.model, pretrained=args.pretrained and state_dict is None, num_classes=num_classes)
    if state_dict is not None:
        load_weights(model, state_dict, args.checkpoint)
    n_out = int(getattr(model, "num_classes", 0) or 0)
    if n_out < len(classes):
        raise CheckpointError(f"the model has {n_out} outputs but the data has {len(classes)} classes")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = make_eval_loader(dataset, args.batch_size, args.workers)
    m = evaluate(model, loader, device=device, amp=args.amp, channels_last=args.channels_last)
    result = dict(model=args.model, top1=round(m["top1"], 4), top1_err=round(100 - m["top1"], 4),
                  top5=round(m["top5"], 4), top5_err=round(100 - m["top5"], 4), loss=round(m["loss"], 6),
                  count=m["count"], img_per_sec=round(m["img_per_sec"], 2),
                  param_count=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                  img_size=data_config["input_size"][-1], crop_pct=data_config["crop_pct"],
                  interpolation=data_config["interpolation"], num_classes=n_out)
    if args.format == "json":
        print(json.dumps(result, indent=4))
    else:
        print(f"{args.model}: top-1 {result['top1']:.2f}% ({result['top1_err']:.2f}% error), top-5 "
              f"{result['top5']:.2f}%, loss {result['loss']:.4f}, {result['count']} images, "
              f"{result['img_per_sec']:.0f} img/s", file=sys.stdout)
    return 0
