"""`effnet routing`: heatmaps of the mean CondConv routing weight per class and per block, plus
the values as JSON next to the image."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor

from ..data.samples import SkipReport, unreadable_of
from ..errors import EffnetError
from ..loading import add_model_arguments, load_from_args
from ..outputs import check_output_file
from ..routing import plot_routing, routing_statistics
from ..train import TrainConfig, build_dataset, make_eval_loader
from ..train.data import dataset_classes
from ..validators import COMMON, arg_type, positive

_LOG = logging.getLogger(__name__)

HELP = "plot how CondConv experts are routed per class (PNG heatmaps + JSON of the values)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-dir", metavar="DIR", help="folder with train/ and val/ class folders")
    data.add_argument("--dataset", choices=("digits",), help="embedded dataset")
    p.add_argument("--split", default="val", choices=("train", "val"), help="which split to read (default: val)")
    p.add_argument("-b", "--batch-size", type=arg_type(COMMON["batch_size"]), default=64, metavar="N",
                   help="(default: 64)")
    p.add_argument("-j", "--workers", type=arg_type(COMMON["workers"]), default=0, metavar="N",
                   help="DataLoader workers (default: 0)")
    p.add_argument("--max-batches", type=arg_type(positive(int)), metavar="N", help="stop after N batches")
    p.add_argument("--output", required=True, metavar="PNG", help="the heatmap image; its values go to "
                   "the same name with .json")


def readable(loader: Iterable[Any], skips: SkipReport) -> Iterator[tuple[Tensor, Tensor]]:
    """The loader's batches without the images it could not read, which `skips` counts."""
    for batch in loader:
        skips.add(unreadable_of(batch))
        if batch[0].shape[0]:
            yield batch[0], batch[1]


def run(args: argparse.Namespace) -> int:
    out = Path(args.output).expanduser()
    if out.suffix.lower() not in (".png", ".svg", ".pdf", ".jpg", ".jpeg"):
        raise EffnetError(f"--output {args.output!r}: give an image name such as routing.png")
    for path in (out, out.with_suffix(".json")):
        check_output_file(path, inputs=[args.checkpoint])
    loaded = load_from_args(args)
    model = loaded.model
    if not getattr(getattr(model, "cfg", None), "experts", 0):
        raise EffnetError(f"{loaded.name} has no CondConv layers, so there is no routing to plot")
    # the routing of the trunk is what is measured: the classifier's classes need not be the data's
    cfg = TrainConfig(model=loaded.name, dataset=args.dataset, data_dir=args.data_dir)
    dataset = build_dataset(cfg, args.split, loaded.transform)
    classes = dataset_classes(dataset)
    loader = make_eval_loader(dataset, args.batch_size, args.workers)
    torch.manual_seed(0)
    skips = SkipReport(args.split)
    stats = routing_statistics(model, readable(loader, skips), len(classes), class_names=classes,
                               max_batches=args.max_batches)
    if skips.count:
        noun = "image" if skips.count == 1 else "images"
        _LOG.warning(f"{args.split}: skipped {skips.count} unreadable {noun} (left out of every mean, not replaced)")
    stats.update(model=loaded.name, checkpoint=args.checkpoint, img_size=loaded.img_size, skipped=skips.count)
    png, js = plot_routing(stats, out, title=f"{model.cfg.name}: mean routing weight per class")
    spread = max(max(max(row) - min(row) for row in zip(*block)) for block in stats["mean"])
    print(f"{sum(stats['counts'])} images, {len(stats['blocks'])} CondConv blocks x {stats['experts']} experts; "
          f"largest spread of an expert's mean weight across classes: {spread:.3f}; wrote {png} and {js}")
    return 0
