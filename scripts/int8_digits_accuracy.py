"""int8 accuracy on digits-trained runs: fp32 vs PyTorch int8 (PT2E, compiled) vs ONNX Runtime int8 (QDQ).

For each run folder (or checkpoint) given, calibrates on 256 images of the digits' train split, then
reports on the validation split: top-1 of each, and the share of images whose top-1 prediction is
the same as fp32's. The README's int8 accuracy table comes from this script:

    .venv/bin/python scripts/int8_digits_accuracy.py RUN [RUN ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from effnet.data.calibration import calibration_from_args
from effnet.export import load_runner, export_model
from effnet.loading import load_model
from effnet.optimize import optimize_for_inference
from effnet.train.config import TrainConfig
from effnet.train.data import build_dataset, eval_transform, make_eval_loader


def _predictions(fn, loader) -> tuple[torch.Tensor, torch.Tensor]:
    preds, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            preds.append(fn(x).float().argmax(1))
            targets.append(y)
    return torch.cat(preds), torch.cat(targets)


def measure(run: str, calib_images: int) -> dict[str, object]:
    """fp32, PyTorch int8 and ONNX Runtime int8 figures of one run on the digits' val split."""
    source = Path(run)
    loaded = load_model(None, str(source)) if source.is_file() else load_model(f"local-dir:{source}", None)
    model = loaded.model.eval()
    data_config = loaded.data_config
    val = make_eval_loader(build_dataset(TrainConfig(model=loaded.name, dataset="digits"), "val",
                                         eval_transform(data_config)), 128, 0)
    calib = calibration_from_args(argparse.Namespace(calib_dir=None, calib_dataset="digits",
                                                     calib_images=calib_images), data_config)
    t0 = time.perf_counter()
    q = optimize_for_inference(model, dtype=torch.int8, calibration=calib, compile=True)
    ref, target = _predictions(model, val)
    got, _ = _predictions(q, val)
    quantize_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "int8.onnx"
        export_model(model, path, "onnx", dtype=torch.int8, calibration=calib, check=False)
        ort, _ = _predictions(load_runner("onnx", path), val)
    top1 = lambda p: round(100.0 * (p == target).float().mean().item(), 2)  # noqa: E731
    same = lambda p: round(100.0 * (p == ref).float().mean().item(), 2)  # noqa: E731
    return {"run": run, "model": loaded.name, "images": len(target), "calibration_images": calib_images,
            "top1_fp32": top1(ref), "top1_int8": top1(got), "same_int8": same(got),
            "top1_onnx_int8": top1(ort), "same_onnx_int8": same(ort),
            "quantize_and_compile_s": round(quantize_s, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders (config.json + model.safetensors) or checkpoints")
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    rows = [measure(run, args.calib_images) for run in args.runs]
    print("| model | val images | top-1 fp32 | top-1 int8 (PyTorch) | same top-1 as fp32 | top-1 int8 (ONNX Runtime) "
          "| same top-1 as fp32 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['images']} | {r['top1_fp32']:.2f}% | {r['top1_int8']:.2f}% | {r['same_int8']:.2f}% "
              f"| {r['top1_onnx_int8']:.2f}% | {r['same_onnx_int8']:.2f}% |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
