"""Preprocessing settings a model's weights expect, merged with user overrides (timm's rules)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from torch import nn

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
DEFAULT_CROP_PCT = 0.875
DEFAULT_CROP_MODE = "center"
CROP_MODES = ("center", "squash", "border")

_logger = logging.getLogger(__name__)


def _per_channel(values: Any, in_chans: int, key: str) -> tuple[float, ...]:
    """A mean/std override: one value is repeated for every channel, otherwise one per channel."""
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        return values * in_chans
    if len(values) != in_chans:
        raise ValueError(f"{key} has {len(values)} values; expected 1 or {in_chans} (one per channel)")
    return values


def resolve_data_config(args: Mapping[str, Any] | None = None, model: nn.Module | None = None,
                        pretrained_cfg: Mapping[str, Any] | None = None, use_test_size: bool = False,
                        verbose: bool = False) -> dict[str, Any]:
    """The preprocessing config: input_size, interpolation, mean, std, crop_pct, crop_mode.

    Each entry comes from `args` when set there (keys `input_size` (C, H, W) or `img_size`,
    `in_chans`, `interpolation`, `mean`, `std`, `crop_pct`, `crop_mode`), else from
    `pretrained_cfg`, else from `model.pretrained_cfg`, else the ImageNet defaults.
    """
    if args is None and model is None and pretrained_cfg is None:
        raise ValueError("resolve_data_config needs at least one of args, model or pretrained_cfg")
    args = dict(args or {})
    cfg: Mapping[str, Any] = pretrained_cfg or {}
    if not cfg and model is not None:
        cfg = getattr(model, "pretrained_cfg", None) or {}

    in_chans = int(args.get("in_chans") or args.get("chans") or 3)
    input_size: tuple[int, ...] = (in_chans, 224, 224)
    if args.get("input_size") is not None:
        input_size = tuple(int(v) for v in args["input_size"])
        if len(input_size) != 3:
            raise ValueError(f"input_size must be (channels, height, width); got {args['input_size']!r}")
        in_chans = input_size[0]
    elif args.get("img_size") is not None:
        size = args["img_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        input_size = (in_chans, int(h), int(w))
    elif use_test_size and cfg.get("test_input_size") is not None:
        input_size = tuple(cfg["test_input_size"])
    elif cfg.get("input_size") is not None:
        input_size = tuple(cfg["input_size"])

    interpolation = args.get("interpolation") or cfg.get("interpolation") or "bicubic"
    if args.get("mean") is not None:
        mean = _per_channel(args["mean"], in_chans, "mean")
    else:
        mean = tuple(cfg.get("mean") or IMAGENET_DEFAULT_MEAN)
    if args.get("std") is not None:
        std = _per_channel(args["std"], in_chans, "std")
    else:
        std = tuple(cfg.get("std") or IMAGENET_DEFAULT_STD)

    if args.get("crop_pct"):
        crop_pct = float(args["crop_pct"])
    elif use_test_size and cfg.get("test_crop_pct"):
        crop_pct = float(cfg["test_crop_pct"])
    else:
        crop_pct = float(cfg.get("crop_pct") or DEFAULT_CROP_PCT)
    crop_mode = args.get("crop_mode") or cfg.get("crop_mode") or DEFAULT_CROP_MODE

    data_config = dict(input_size=input_size, interpolation=interpolation, mean=mean, std=std,
                       crop_pct=crop_pct, crop_mode=crop_mode)
    if verbose:
        _logger.info("data config: %s", ", ".join(f"{k}={v}" for k, v in data_config.items()))
    return data_config


def resolve_model_data_config(model: nn.Module, args: Mapping[str, Any] | None = None,
                              pretrained_cfg: Mapping[str, Any] | None = None, use_test_size: bool = False,
                              verbose: bool = False) -> dict[str, Any]:
    """`resolve_data_config` with the model first: the preprocessing `model`'s weights expect."""
    return resolve_data_config(args=args, model=model, pretrained_cfg=pretrained_cfg,
                               use_test_size=use_test_size, verbose=verbose)
