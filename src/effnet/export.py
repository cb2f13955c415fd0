"""Export to ONNX, TorchScript or a torch.export program (.pt2), verified by running the written file.

CondConv exports with a dynamic batch dimension: while a graph is recorded its depthwise convs use
the tap-sum formulation (see `CondConv2d`), which has no batch-sized group count.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .errors import EffnetError
from .optimize import optimize_for_inference

FORMATS = ("onnx", "torchscript", "pt2")
VERIFY_BATCHES = (1, 3)


class ExportError(EffnetError):
    """Export failed, or the exported file does not reproduce the PyTorch model."""


def _atomic_write(output: Path, write: Callable[[str], None]) -> None:
    """Have `write` fill a temporary file next to `output`, then move it into place."""
    output.parent.mkdir(parents=True, exist_ok=True)
    # the suffix stays last: torch.export.load only reads files named *.pt2
    fd, tmp = tempfile.mkstemp(prefix=f".{output.stem}.tmp-", suffix=output.suffix, dir=output.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would surprise whoever ships the file
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def _load_runner(fmt: str, path: Path) -> Callable[[Tensor], Tensor]:
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("verifying an ONNX export needs onnxruntime (pip install 'effnet[export]')") from None
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
    run = _load_runner(fmt, path)
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


def export_model(model: nn.Module, output: str | Path, fmt: str, *, img_size: int | tuple[int, int] = 224,
                 dynamic_batch: bool = True, opset: int = 17, check: bool = True) -> dict[int, float]:
    """Export an effnet classifier (BatchNorm folded, fp32) and verify the written file.

    Returns the relative error per verified batch size (1 and 3 with a dynamic batch, else the
    traced batch only). The file appears only once complete; on failure nothing is left behind.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    output = Path(output)
    if output.is_dir():
        raise ExportError(f"--output {output} is a directory; give a file name")
    hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    model = model.eval().float()
    prepared = optimize_for_inference(model, channels_last=False, input_size=hw)
    trace_batch = 2 if dynamic_batch else 1  # batch 1 would be specialised as a constant
    x = torch.randn(trace_batch, model.in_chans, *hw)
    writers = {"onnx": lambda p: _export_onnx(prepared, x, p, dynamic_batch, opset),
               "torchscript": lambda p: _export_torchscript(prepared, x, p),
               "pt2": lambda p: _export_pt2(prepared, x, p, dynamic_batch)}

    def write_and_check(tmp: str) -> None:
        try:
            with torch.no_grad():
                writers[fmt](tmp)
        except EffnetError:
            raise
        except Exception as e:  # noqa: BLE001 - exporter internals raise many types
            raise ExportError(f"exporting to {fmt} failed: {type(e).__name__}: {e}") from e
        if check:
            nonlocal errors
            errors = verify(fmt, Path(tmp), model, hw, VERIFY_BATCHES if dynamic_batch else (1,))

    errors: dict[int, float] = {}
    _atomic_write(output, write_and_check)
    return errors
