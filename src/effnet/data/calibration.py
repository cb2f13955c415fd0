"""Calibration images for int8: a folder of images or an embedded dataset's train split, preprocessed with
the model's own evaluation transform, for the commands that quantize (`export`, `benchmark`, `validate`,
`serve` with `--dtype int8`)."""

from __future__ import annotations

import argparse
import logging
from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import EffnetError
from .datasets import DigitsDataset
from .images import find_images, load_image
from .transforms import create_transform

log = logging.getLogger("effnet")

CALIB_DATASETS = ("digits",)
DEFAULT_IMAGES = 256


def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    """--calib-dir / --calib-dataset / --calib-images, used with --dtype int8."""
    g = p.add_argument_group("int8 calibration (with --dtype int8)")
    g.add_argument("--calib-dir", metavar="DIR",
                   help="images representative of the inputs (searched recursively; class folders are fine)")
    g.add_argument("--calib-dataset", choices=CALIB_DATASETS, help="calibrate on an embedded dataset's train split")
    g.add_argument("--calib-images", type=int, default=DEFAULT_IMAGES, metavar="N",
                   help=f"how many images to calibrate on (default {DEFAULT_IMAGES})")


def check_calibration_flags(args: argparse.Namespace, int8: bool) -> None:
    """At parse time, before any model loads: int8 needs calibration images, and only int8 takes them."""
    if args.calib_dir and args.calib_dataset:
        raise EffnetError("--calib-dir and --calib-dataset both name calibration data; give only one")
    given = bool(args.calib_dir or args.calib_dataset)
    if given and not int8:
        raise EffnetError("--calib-dir/--calib-dataset are for --dtype int8")
    if int8 and not given:
        raise EffnetError("--dtype int8 needs calibration images: --calib-dir DIR (a few hundred images like "
                          "those the model will see) or --calib-dataset digits")
    if args.calib_images < 1:
        raise EffnetError(f"--calib-images must be >= 1, got {args.calib_images}")


def calibration_from_args(args: argparse.Namespace, data_config: Mapping[str, Any],
                          batch_size: int = 32) -> list[Tensor]:
    """The calibration batches the flags name, preprocessed as `data_config` says. Unreadable images are
    skipped and counted in one log line; none readable is an error."""
    check_calibration_flags(args, int8=True)
    transform = create_transform(**{k: data_config[k] for k in ("input_size", "interpolation", "mean", "std",
                                                                 "crop_pct", "crop_mode") if k in data_config})
    images: list[Tensor] = []
    if args.calib_dataset:
        data = DigitsDataset("train", transform=transform)
        # every k-th image, so the calibration set spans all classes rather than the first few
        step = max(1, len(data) // args.calib_images)
        images = [data[i][0] for i in range(0, len(data), step)][: args.calib_images]
    else:
        paths = find_images([args.calib_dir])
        if not paths:
            raise EffnetError(f"--calib-dir {args.calib_dir}: no image files found")
        skipped = 0
        for path in paths:
            if len(images) == args.calib_images:
                break
            try:
                images.append(transform(load_image(path)))
            except EffnetError:
                skipped += 1
        if skipped:
            log.warning("calibration: skipped %d unreadable image%s in %s", skipped, "s" * (skipped != 1),
                        args.calib_dir)
        if not images:
            raise EffnetError(f"--calib-dir {args.calib_dir}: none of its {len(paths)} images could be read")
    log.info("calibrating int8 on %d images", len(images))
    return [torch.stack(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
