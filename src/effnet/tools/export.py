"""`effnet export`: write a model as ONNX, TorchScript or a torch.export program, then verify it."""

from __future__ import annotations

import argparse

from ..export import FORMATS, export_model
from ..registry import create_model

HELP = "export a model to ONNX, TorchScript or .pt2 and check the file against PyTorch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name, see `effnet list`")
    p.add_argument("--checkpoint", default=None, help="weights to load (default: random initialisation)")
    p.add_argument("--pretrained", action="store_true", help="load the published weights")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--output", required=True, help="file to write (replaced atomically)")
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--img-size", type=int, default=None, help="square input size (default: the model's)")
    p.add_argument("--no-check", action="store_true", help="skip running the exported file")


def run(args: argparse.Namespace) -> int:
    model = create_model(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint)
    size = args.img_size or model.pretrained_cfg["input_size"][-1]
    errors = export_model(model, args.output, args.format, img_size=size, dynamic_batch=args.dynamic_batch,
                          opset=args.opset, check=not args.no_check)
    checked = ", ".join(f"batch {b}: {e:.1e}" for b, e in errors.items()) or "not checked"
    print(f"wrote {args.output} ({args.format}, {size}px, "
          f"{'dynamic' if args.dynamic_batch else 'fixed'} batch); max relative error vs PyTorch: {checked}")
    return 0
