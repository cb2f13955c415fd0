"""`effnet info NAME`: the published metadata and the pretrained config of one model."""

from __future__ import annotations

import argparse
import json

from ..registry import model_info

HELP = "show a model's published metadata (FLOPs, file size, recipe, paper) and pretrained config"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name, see `effnet list`")
    p.add_argument("--format", choices=("text", "json"), default="text")


def run(args: argparse.Namespace) -> int:
    info = model_info(args.model)
    if args.format == "json":
        print(json.dumps(info, indent=2, default=list))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:<16} {v}")
        else:
            print(f"{key:<18} {value}")
    return 0
