"""Export to ONNX, TorchScript or a torch.export program (.pt2), verified by running the written file.

CondConv exports with a dynamic batch dimension: while a graph is recorded its depthwise convs use
the tap-sum formulation (see `CondConv2d`), which has no batch-sized group count.

int8 ONNX is the fp32 export quantized by onnxruntime's static quantizer (QDQ format: int8 weights per
output channel, int8 activations with ranges from calibration images), the form every ONNX runtime
reads; it is verified against the fp32 PyTorch model on those images.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import outputs
from .errors import EffnetError, first_line
from .extras import require
from .optimize import optimize_for_inference
from .quantize import calibration_batches

FORMATS = ("onnx", "torchscript", "pt2")
VERIFY_BATCHES = (1, 3)


class ExportError(EffnetError):
    """Export failed, or the exported file does not reproduce the PyTorch model (exit status 1)."""

    exit_code = 1


def _export_onnx(model: nn.Module, x: Tensor, path: str, dynamic_batch: bool, opset: int) -> None:
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter is several times faster than the dynamo one on these models
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset)


def _export_torchscript(model: nn.Module, x: Tensor, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,), check_trace=False)
    torch.jit.save(traced, path)


def _export_pt2(model: nn.Module, x: Tensor, path: str, dynamic_batch: bool) -> None:
    shapes = {"x": {0: torch.export.Dim.DYNAMIC}} if dynamic_batch else None
    program = torch.export.export(model, (x,), dynamic_shapes=shapes)
    torch.export.save(program, path)


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over a list of input batches."""

    def __init__(self, batches: list[Tensor], input_name: str) -> None:
        self._feeds = iter([{input_name: b.numpy()} for b in batches])

    def get_next(self) -> dict[str, Any] | None:
        return next(self._feeds, None)


def _quantize_onnx(fp32_path: str, path: str, batches: list[Tensor]) -> None:
    quantization = require("onnxruntime.quantization", extra="export", purpose="int8 ONNX export")
    reader = _Batches(batches, "input")
    quiet = logging.getLogger()  # the quantizer logs advice on the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # per output channel weights, as the PyTorch int8 path does; QDQ so any runtime can read it
            quantization.quantize_static(fp32_path, path, reader, quant_format=quantization.QuantFormat.QDQ,
                                         per_channel=True, weight_type=quantization.QuantType.QInt8,
                                         activation_type=quantization.QuantType.QInt8)
    finally:
        quiet.setLevel(level)


def verify_int8(path: Path, model: nn.Module, batches: list[Tensor], min_agreement: float = 0.9) -> dict[str, float]:
    """Run an int8 ONNX file on the calibration images against the fp32 model: the share of identical
    top-1 predictions and the max relative logit error. Refuses a file whose predictions mostly differ."""
    run = load_runner("onnx", path)
    same = total = 0
    err = 0.0
    with torch.no_grad():
        for x in batches:
            expected, got = model(x).float(), run(x).float()
            if got.shape != expected.shape or not torch.isfinite(got).all():
                raise ExportError(f"{path}: the int8 model's output is {tuple(got.shape)} or not finite")
            same += int((got.argmax(1) == expected.argmax(1)).sum())
            total += x.shape[0]
            err = max(err, ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item())
    agreement = same / total
    if agreement < min_agreement:
        raise ExportError(f"{path}: the int8 model agrees with fp32 on only {100 * agreement:.1f}% of the "
                          f"{total} calibration images' top-1 (need {100 * min_agreement:.0f}%): calibrate on "
                          "more representative images")
    return {"agreement": agreement, "max_rel_err": err, "images": float(total)}


def load_runner(fmt: str, path: Path) -> Callable[[Tensor], Tensor]:
    """A function running an exported file (onnx via onnxruntime, torchscript, pt2) on a batch."""
    if fmt == "onnx":
        ort = require("onnxruntime", extra="export", purpose="verifying an ONNX export")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if fmt == "torchscript":
        module = torch.jit.load(str(path))
        return lambda x: module(x)
    program = torch.export.load(str(path)).module()
    return lambda x: program(x)


def verify(fmt: str, path: Path, model: nn.Module, img_size: tuple[int, int], batches: tuple[int, ...],
           rtol: float = 1e-4) -> dict[int, float]:
    """Run the exported file and `model` on the same random input per batch size; max relative error."""
    try:
        run = load_runner(fmt, path)
    except EffnetError:
        raise
    except Exception as e:  # noqa: BLE001 - a file its own runtime cannot load is a failed export
        detail = first_line(e)
        raise ExportError(f"the exported {fmt} file cannot be loaded back ({type(e).__name__}: {detail})") from e
    g = torch.Generator().manual_seed(0)
    errors: dict[int, float] = {}
    for b in batches:
        x = torch.randn(b, model.in_chans, *img_size, generator=g)
        with torch.no_grad():
            expected = model(x).float()
            try:
                got = run(x).float()
            except Exception as e:  # noqa: BLE001 - any runtime failure means the file is unusable
                raise ExportError(f"{path}: running the exported {fmt} model at batch {b} failed: {e}") from e
        if got.shape != expected.shape:
            raise ExportError(f"{path}: output shape {tuple(got.shape)} at batch {b}, expected "
                              f"{tuple(expected.shape)}")
        err = ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()
        errors[b] = err
        if not err <= rtol:
            raise ExportError(f"{path}: exported {fmt} model differs from PyTorch at batch {b}: "
                              f"relative error {err:.2e} > {rtol:.0e}")
    return errors


def onnx_metadata(model_name: str, data_config: Mapping[str, Any], label_names: Sequence[str] | None,
                  version: str) -> dict[str, str]:
    """What a consumer needs to use the file alone: preprocessing, class names, provenance.
    Lists are JSON; the rest plain strings."""
    meta = {"model_name": model_name, "effnet_version": version,
            "input_size": json.dumps([int(v) for v in data_config["input_size"]]),
            "interpolation": str(data_config["interpolation"]), "crop_pct": repr(float(data_config["crop_pct"])),
            "crop_mode": str(data_config.get("crop_mode", "center")),
            "mean": json.dumps([float(v) for v in data_config["mean"]]),
            "std": json.dumps([float(v) for v in data_config["std"]])}
    if label_names is not None:
        meta["label_names"] = json.dumps(list(label_names))
    return meta


def _set_onnx_metadata(path: str, metadata: Mapping[str, str]) -> None:
    import onnx
    proto = onnx.load(path)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, path)


def export_model(model: nn.Module, output: str | Path, fmt: str, *, img_size: int | tuple[int, int] = 224,
                 dynamic_batch: bool = True, opset: int = 17, check: bool = True,
                 inputs: Iterable[str | os.PathLike | None] = (),
                 metadata: Mapping[str, str] | None = None, dtype: torch.dtype = torch.float32,
                 calibration: Iterable[Any] | None = None) -> dict[Any, float]:
    """Export an effnet classifier (BatchNorm folded, fp32) and verify the written file.

    Returns the relative error per verified batch size (1 and 3 with a dynamic batch, else the
    traced batch only). With `dtype=torch.int8` (ONNX only) the file is quantized on `calibration`
    (preprocessed input batches, or (input, target) pairs) at their size, and the returned figures
    are its top-1 agreement with fp32 and max relative error on those images (see `verify_int8`). The file appears only once complete; on failure nothing is left behind.
    `output` may not be a folder, link, device or one of `inputs` (the files the model came from).
    `metadata` (string pairs, see `onnx_metadata`) goes into an ONNX file's metadata_props.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    if dtype not in (torch.float32, torch.int8):
        raise ExportError(f"export dtype {dtype}: float32 or int8")
    batches: list[Tensor] = []
    if dtype == torch.int8:
        if fmt != "onnx":
            raise ExportError(f"int8 export writes ONNX (QDQ) only, not {fmt}; in PyTorch use "
                              "effnet.optimize_for_inference(model, dtype=torch.int8, calibration=...)")
        batches = calibration_batches(calibration, int(model.in_chans))
        img_size = (int(batches[0].shape[-2]), int(batches[0].shape[-1]))
        dynamic_batch = True
    if fmt == "onnx":
        require("onnx", extra="export", purpose="ONNX export")
        if check:
            require("onnxruntime", extra="export", purpose="verifying an ONNX export")
    output = outputs.check_output_file(output, inputs=inputs)
    hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    model = model.eval().float()
    prepared = optimize_for_inference(model, channels_last=False, input_size=hw)
    trace_batch = 2 if dynamic_batch else 1  # batch 1 would be specialised as a constant
    x = torch.randn(trace_batch, model.in_chans, *hw)
    writers = {"onnx": lambda p: _export_onnx(prepared, x, p, dynamic_batch, opset),
               "torchscript": lambda p: _export_torchscript(prepared, x, p),
               "pt2": lambda p: _export_pt2(prepared, x, p, dynamic_batch)}

    def write_and_check(tmp: str) -> None:
        nonlocal errors
        with tempfile.TemporaryDirectory() as scratch:
            # int8: the fp32 file is only the quantizer's input, written beside nothing the user owns
            first = str(Path(scratch) / "fp32.onnx") if batches else tmp
            try:
                with torch.no_grad():
                    writers[fmt](first)
                if batches:
                    _quantize_onnx(first, tmp, batches)
            except EffnetError:
                raise
            except Exception as e:  # noqa: BLE001 - exporter and quantizer internals raise many types
                step = "int8 quantization of the ONNX file" if batches and Path(first).exists() else f"exporting to {fmt}"
                raise ExportError(f"{step} failed: {type(e).__name__}: {e}") from e
        if fmt == "onnx" and metadata:
            _set_onnx_metadata(tmp, metadata)
        if check and batches:
            errors = verify_int8(Path(tmp), model, batches)  # type: ignore[assignment]
        elif check:
            errors = verify(fmt, Path(tmp), model, hw, VERIFY_BATCHES if dynamic_batch else (1,))

    errors: dict[int, float] = {}
    # the suffix stays last: torch.export.load only reads files named *.pt2
    outputs.atomic_write(output, write_and_check, keep_suffix=True)
    return errors
