"""The model folder inside every run folder: config.json and model.safetensors in the Hugging Face
layout that timm's `local-dir:` and effnet's loaders read, written beside args.yaml, summary.csv and
the checkpoints whenever a better epoch is found."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..hf_dir import save_hf_dir
from ..model import EfficientNet
from .config import TrainConfig
from .data import data_config_for


def run_pretrained_cfg(cfg: TrainConfig) -> dict[str, Any]:
    """The preprocessing a run trained and validated with, as pretrained_cfg entries. The published
    weights' sources are cleared: the folder's own weights are not those."""
    data = data_config_for(cfg)
    _, h, w = data["input_size"]
    return dict(input_size=tuple(data["input_size"]), interpolation=data["interpolation"],
                mean=tuple(data["mean"]), std=tuple(data["std"]), crop_pct=float(data["crop_pct"]),
                crop_mode=data["crop_mode"], pool_size=(-(-h // 32), -(-w // 32)), url=None, hf_hub_id=None,
                file=None)


def write_model_folder(model: nn.Module, output_dir: str | Path, cfg: TrainConfig,
                       class_names: Sequence[str]) -> Path | None:
    """Write `model` (the run's best weights) and the run's preprocessing and class names into
    `output_dir` as config.json + model.safetensors. Models other than effnet classifiers are
    skipped (None): they have no config to write."""
    if not isinstance(model, EfficientNet):
        return None
    names = list(class_names) if len(class_names) == model.num_classes else None
    return save_hf_dir(model, output_dir, class_names=names, pretrained_overlay=run_pretrained_cfg(cfg))
