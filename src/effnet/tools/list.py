"""`effnet list`: the registered models with their size and cost."""

from __future__ import annotations

import argparse
import json

from ..flops import count_macs
from ..registry import build_model, get_config, list_models

HELP = "list the models: parameters, GMACs (our counter), input size, crop"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("filter", nargs="?", default="", help="fnmatch pattern, e.g. '*cc*'")
    p.add_argument("--format", choices=("text", "json"), default="text")


def rows(pattern: str = "") -> list[dict]:
    """One dict per matching model: name, params, gmacs, input_size, crop_pct."""
    out = []
    for name in list_models(pattern):
        cfg = get_config(name)
        model = build_model(cfg)
        out.append(dict(name=name, params=sum(p.numel() for p in model.parameters()),
                        gmacs=count_macs(model) / 1e9, input_size=cfg.pretrained.input_size[-1],
                        crop_pct=cfg.pretrained.crop_pct))
    return out


def run(args: argparse.Namespace) -> int:
    table = rows(args.filter)
    if args.format == "json":
        print(json.dumps(table, indent=2))
        return 0
    print(f"{'model':<26} {'params (M)':>10} {'GMACs':>7} {'input':>6} {'crop':>6}")
    for r in table:
        print(f"{r['name']:<26} {r['params'] / 1e6:>10.2f} {r['gmacs']:>7.3f} {r['input_size']:>6} {r['crop_pct']:>6.3f}")
    return 0
