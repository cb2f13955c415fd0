"""The peers a user could pick instead of effnet, built with effnet's weights for side-by-side timing:
the reference implementation (timm) eager and under torch.compile (with autocast for bf16), and
ONNX Runtime on effnet's own ONNX export."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .optimize import compile_frozen


PEERS = ("reference", "onnxruntime")


class Autocast(nn.Module):
    """Runs the wrapped model under torch.autocast at `dtype` (what a user of an fp32 model would do)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.model, self.dtype, self.device_type = model, dtype, device.type

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x)


def available(peer: str) -> bool:
    """Whether `peer` can run here: timm for the reference, onnx and onnxruntime for ONNX Runtime."""
    needs = {"reference": ("timm",), "onnxruntime": ("onnx", "onnxruntime")}[peer]
    return all(importlib.util.find_spec(m) is not None for m in needs)


def missing_reason(peer: str) -> str:
    """One line saying why `peer` is skipped."""
    what = {"reference": "the reference implementation (timm)", "onnxruntime": "onnx/onnxruntime"}[peer]
    return f"effnet benchmark: {what} not importable here; {peer} comparison skipped"


def compile_like_effnet(model: nn.Module) -> nn.Module:
    """torch.compile as optimize_for_inference(compile=True) does it (inductor, static shapes, weight freezing)."""
    return compile_frozen(model)


def reference_models(name: str, state_dict: dict[str, Tensor], device: torch.device,
                     autocast: torch.dtype | None = None) -> dict[tuple[str, str, str], nn.Module]:
    """(impl, mode, dtype label) -> the reference model with effnet's weights, channels-last: eager
    fp32, compiled fp32 and, with `autocast`, compiled under autocast at that dtype."""
    import timm  # optional: only for side-by-side comparison
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(state_dict)
    model = model.eval().to(device=device, memory_format=torch.channels_last)
    out: dict[tuple[str, str, str], nn.Module] = {("reference", "eager", "fp32"): model}
    out[("reference", "compiled", "fp32")] = compile_like_effnet(model)
    if autocast is not None:
        label = "bf16-autocast" if autocast == torch.bfloat16 else "fp16-autocast"
        out[("reference", "compiled", label)] = compile_like_effnet(Autocast(model, autocast, device).eval())
    return out


def int8_available() -> bool:
    """Whether effnet's int8 path can run here (it needs torchao, the `int8` extra)."""
    return importlib.util.find_spec("torchao") is not None


def onnxruntime_runner(model: nn.Module, size: int, threads: int, workdir: Path,
                       calibration: Sequence[Tensor] | None = None) -> Callable[[Any], Any]:
    """A function running effnet's ONNX export (fp32; int8 QDQ with `calibration`) in ONNX Runtime on
    a NumPy input, with `threads` intra-op threads. The file is written inside `workdir`."""
    import onnxruntime as ort

    from .export import export_model
    path = Path(tempfile.mkdtemp(dir=workdir)) / "model.onnx"
    if calibration is None:
        export_model(model, path, "onnx", img_size=size, check=False)
    else:
        export_model(model, path, "onnx", img_size=size, check=False, dtype=torch.int8, calibration=calibration)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's idle workers spin after each run by default, stealing the cores of whoever runs next in the rotation
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})
