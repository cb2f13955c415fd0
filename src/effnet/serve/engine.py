"""The served model: loaded through effnet's model-loading path, put on its fastest inference path
(`optimize_for_inference`, optionally compiled), and warmed up before the server says it is ready."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import EffnetError
from ..optimize import compile_frozen, optimize_for_inference

# the precisions optimize_for_inference offers that make sense for serving; int8 also needs calibration images
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


@dataclass
class Loaded:
    """What the model-loading path gives: the model, its label names and its preprocessing."""

    name: str
    model: nn.Module
    labels: list[str] | None
    data_cfg: dict[str, Any]
    transform: Callable[[Any], Tensor]


def load(args: argparse.Namespace) -> Loaded:
    """Model, label names and preprocessing for `effnet serve` arguments, through effnet.loading
    (the flags of `effnet.loading.add_model_arguments`).

    A registered name without --checkpoint means its published weights: a server of random weights
    answers nonsense, so those need --random-weights as everywhere else.
    """
    from ..loading import load_from_args
    if not getattr(args, "checkpoint", None) and not getattr(args, "random_weights", False):
        args.pretrained = True
    loaded = load_from_args(args)
    n = int(getattr(loaded.model, "num_classes", 0) or 0)
    labels = (loaded.label_names or [str(i) for i in range(n)]) if n > 0 else None
    return Loaded(loaded.name, loaded.model, labels, dict(loaded.data_config), loaded.transform)


class _FeaturesAndLogits(nn.Module):
    """One forward pass giving both answers the server offers: pooled features and logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        x = x.to(dtype=m.input_dtype, memory_format=m.input_format)  # as the optimised forward() does
        feats = m.forward_head(m.forward_features(x), pre_logits=True)
        return feats, m.classifier(feats)


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes a compiled (static-shape) model is built for: powers of two up to max_batch, and
    max_batch; a batch is padded up to the next one so nothing compiles after start."""
    sizes = {max_batch}
    b = 1
    while b < max_batch:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


@dataclass
class ServedModel:
    """A model ready to answer batches: `run(batch)` gives (features, probabilities or None)."""

    name: str
    labels: list[str] | None
    data_cfg: dict[str, Any]
    transform: Callable[[Any], Tensor]
    dtype: str
    device: str
    num_features: int
    forward: Callable[[Tensor], tuple[Tensor, Tensor]]
    buckets: tuple[int, ...] | None = None  # padded batch sizes when compiled; None: any size
    compiled: bool = False
    warmup_s: float | None = field(default=None)

    def run(self, batch: Tensor) -> tuple[Tensor, Tensor | None]:
        """Features and softmax probabilities (float32, on the CPU) for a batch of preprocessed images."""
        n = batch.shape[0]
        if self.buckets is not None:
            size = next((b for b in self.buckets if b >= n), n)
            if size > n:
                batch = torch.cat([batch, batch.new_zeros((size - n, *batch.shape[1:]))])
        with torch.inference_mode():
            feats, logits = self.forward(batch.to(self.device))
            feats, logits = feats[:n].float().cpu(), logits[:n].float().cpu()
        return feats, (logits.softmax(dim=-1) if self.labels is not None else None)

    def warm_up(self, max_batch: int) -> float:
        """Run (and, when compiled, compile) every batch shape the server will use; returns seconds."""
        start = time.perf_counter()
        c, h, w = self.data_cfg["input_size"]
        for size in self.buckets or sorted({1, max_batch}):
            for _ in range(2):  # the first call of a shape pays one-time costs (primitives, compiling)
                self.run(torch.zeros(size, c, h, w))
        self.warmup_s = time.perf_counter() - start
        return self.warmup_s

    def card(self) -> dict[str, Any]:
        """The model card `GET /v1/model` returns."""
        from .. import __version__
        cfg = self.data_cfg
        return {
            "name": self.name,
            "num_classes": len(self.labels) if self.labels is not None else 0,
            "label_names": self.labels or [],
            "num_features": self.num_features,
            "input_size": list(cfg["input_size"]),
            "interpolation": cfg["interpolation"],
            "crop_pct": cfg["crop_pct"],
            "crop_mode": cfg["crop_mode"],
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
            "dtype": self.dtype,
            "device": self.device,
            "compiled": self.compiled,
            "effnet_version": __version__,
        }


def prepare(loaded: Loaded, dtype: str, max_batch: int, compile: bool = False,
            calibration: list[Tensor] | None = None) -> ServedModel:
    """Put a loaded model on the fast path: BatchNorm folded, static padding, channels-last, `dtype`,
    and with `compile` torch.compile'd for each batch bucket. int8 (quantized on `calibration`, see
    `effnet.quantize`) is always compiled: uncompiled, its quantize/dequantize steps run one by one."""
    if dtype not in DTYPES:
        raise EffnetError(f"--dtype {dtype}: not available here; choose from {', '.join(DTYPES)}")
    model = loaded.model
    device = next(model.parameters()).device
    size = tuple(loaded.data_cfg["input_size"][1:])
    forward: Callable[[Tensor], tuple[Tensor, Tensor]]
    if dtype == "int8":
        from ..quantize import calibration_batches, quantize_int8
        fp32 = optimize_for_inference(model, input_size=size, channels_last=False)
        batches = calibration_batches(calibration, int(model.in_chans))
        forward = quantize_int8(fp32, batches, compile=True, module=_FeaturesAndLogits(fp32))
        compile = True
    else:
        forward = _FeaturesAndLogits(optimize_for_inference(model, dtype=DTYPES[dtype], input_size=size))
    if compile and dtype != "int8":
        # compiled as optimize_for_inference(compile=True) compiles, on the two-output forward
        forward = compile_frozen(forward)
    width = int(getattr(model, "num_features", 0)) * int(model.global_pool.feat_mult())
    return ServedModel(loaded.name, loaded.labels, loaded.data_cfg, loaded.transform, dtype, str(device), width,
                       forward, buckets=batch_buckets(max_batch) if compile else None, compiled=compile)
