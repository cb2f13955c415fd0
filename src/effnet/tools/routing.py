"""`effnet routing`: heatmaps of the mean CondConv routing weight per class and per block, plus
the values as JSON next to the image."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import EffnetError
from ..outputs import check_output_file
from ..routing import plot_routing, routing_statistics
from ..train import TrainConfig, build_dataset, config_from_args, data_config_for, eval_transform, make_eval_loader
from ..train.loop import resolve_device
from ..train.data import dataset_classes
from ..loading import load_source_model

HELP = "plot how CondConv experts are routed per class (PNG heatmaps + JSON of the values)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, metavar="NAME", help="a CondConv model name or local-dir:DIR")
    p.add_argument("--checkpoint", metavar="FILE", help="weights to load (sets the class count)")
    p.add_argument("--pretrained", action="store_true", help="use the published weights")
    p.add_argument("--random-weights", action="store_true", help="allow randomly initialised weights")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-dir", metavar="DIR", help="folder with train/ and val/ class folders")
    data.add_argument("--dataset", choices=("digits",), help="embedded dataset")
    p.add_argument("--split", default="val", choices=("train", "val"), help="which split to read (default: val)")
    p.add_argument("--img-size", type=int, metavar="N", help="image size (default: the model's)")
    p.add_argument("-b", "--batch-size", type=int, default=64, metavar="N")
    p.add_argument("-j", "--workers", type=int, default=0, metavar="N")
    p.add_argument("--max-batches", type=int, metavar="N", help="stop after N batches")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--output", required=True, metavar="PNG", help="the heatmap image; its values go to "
                   "the same name with .json")


def run(args: argparse.Namespace) -> int:
    out = Path(args.output).expanduser()
    if out.suffix.lower() not in (".png", ".svg", ".pdf", ".jpg", ".jpeg"):
        raise EffnetError(f"--output {args.output!r}: give an image name such as routing.png")
    for path in (out, out.with_suffix(".json")):
        check_output_file(path, inputs=[args.checkpoint])
    given = {k: v for k, v in vars(args).items()
             if k in ("model", "pretrained", "data_dir", "dataset", "img_size", "batch_size", "workers",
                      "device") and v is not None}
    cfg = config_from_args(given, TrainConfig())
    dataset = build_dataset(cfg, "val" if args.split == "val" else "train", eval_transform(data_config_for(cfg)))
    classes = dataset_classes(dataset)
    model = load_source_model(cfg.model, args.checkpoint, pretrained=cfg.pretrained, data_classes=len(classes),
                              random_weights=args.random_weights).to(resolve_device(cfg))
    if not model.cfg.experts:
        raise EffnetError(f"{args.model} has no CondConv layers, so there is no routing to plot")
    loader = make_eval_loader(dataset, cfg.batch_size, cfg.workers)
    torch.manual_seed(0)
    stats = routing_statistics(model, loader, len(classes), class_names=classes, max_batches=args.max_batches)
    stats["model"] = args.model
    stats["checkpoint"] = args.checkpoint
    png, js = plot_routing(stats, out, title=f"{model.cfg.name}: mean routing weight per class")
    spread = max(max(max(row) - min(row) for row in zip(*block)) for block in stats["mean"])
    print(f"{sum(stats['counts'])} images, {len(stats['blocks'])} CondConv blocks x {stats['experts']} experts; "
          f"largest spread of an expert's mean weight across classes: {spread:.3f}; wrote {png} and {js}")
    return 0
