"""`effnet export`: write a model as ONNX, TorchScript or a torch.export program, then verify it."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import __version__
from ..data.calibration import add_calibration_arguments, calibration_from_args, check_calibration_flags
from ..export import FORMATS, export_model, onnx_metadata
from ..loading import add_model_arguments, load_from_args
from ..errors import EffnetError
from ..validators import Rule, arg_type

OPSETS = (7, 20)  # what torch's TorchScript-based ONNX exporter writes (onnxruntime reads 7 and newer)

HELP = "export a model to ONNX, TorchScript or .pt2 and check the file against PyTorch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, device=False)
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--output", required=True, help="file to write (replaced atomically)")
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    p.add_argument("--opset", type=arg_type(Rule(int, *OPSETS)), default=17,
                   help=f"ONNX opset, {OPSETS[0]} to {OPSETS[1]} (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip running the exported file")
    p.add_argument("--dtype", choices=("fp32", "int8"), default="fp32",
                   help="int8: ONNX quantized by onnxruntime (QDQ), calibrated on --calib-dir/--calib-dataset")
    add_calibration_arguments(p)


def model_folder(model: str | None) -> str | None:
    """The folder a `local-dir:DIR` (or run folder) model is read from, so the export never lands on its files."""
    if model is None:
        return None
    folder = model[len("local-dir:"):] if model.startswith("local-dir:") else model
    return folder if Path(folder).expanduser().is_dir() else None


def run(args: argparse.Namespace) -> int:
    int8 = args.dtype == "int8"
    if int8 and args.format != "onnx":
        raise EffnetError(f"--dtype int8 writes ONNX only (--format onnx), not {args.format}")
    check_calibration_flags(args, int8)
    loaded = load_from_args(args, device="cpu")
    size = loaded.img_size
    calibration = calibration_from_args(args, loaded.data_config) if int8 else None
    metadata = onnx_metadata(loaded.name, loaded.data_config, loaded.label_names, __version__)
    if int8:
        metadata["dtype"] = "int8"
    errors = export_model(loaded.model, args.output, args.format, img_size=size, dynamic_batch=args.dynamic_batch,
                          opset=args.opset, check=not args.no_check, inputs=[args.checkpoint, model_folder(args.model)],
                          metadata=metadata, dtype=torch.int8 if int8 else torch.float32, calibration=calibration)
    if int8:
        checked = (f"top-1 same as fp32 on {100 * errors['agreement']:.1f}% of {errors['images']:.0f} calibration "
                   f"images, max relative logit error {errors['max_rel_err']:.2f}") if errors else "not checked"
        print(f"wrote {args.output} (onnx int8 QDQ, {size}px, dynamic batch); {checked}")
        return 0
    checked = ", ".join(f"batch {b}: {e:.1e}" for b, e in errors.items()) or "not checked"
    print(f"wrote {args.output} ({args.format}, {size}px, "
          f"{'dynamic' if args.dynamic_batch else 'fixed'} batch); max relative error vs PyTorch: {checked}")
    return 0
