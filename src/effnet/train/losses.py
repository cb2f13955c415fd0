"""Classification losses: label-smoothed cross-entropy and cross-entropy against soft targets
(what Mixup/CutMix produce)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _at_least_fp32(logits: Tensor) -> Tensor:
    # half-precision logits (AMP) are raised to fp32 for the softmax; fp64 ones are kept, as the
    # reference keeps them: casting them down would round the loss and its gradient to fp32
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy against (1 - smoothing) on the true class plus smoothing spread uniformly over
    all classes."""

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logprobs = F.log_softmax(_at_least_fp32(logits), dim=-1)
        nll = -logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        smooth = -logprobs.mean(dim=-1)
        return ((1.0 - self.smoothing) * nll + self.smoothing * smooth).mean()


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against a (B, classes) probability target."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return (-target * F.log_softmax(_at_least_fp32(logits), dim=-1)).sum(dim=-1).mean()


def create_criterion(smoothing: float, mixup: bool) -> nn.Module:
    """The training loss: soft-target CE under Mixup/CutMix (which smooth the labels themselves),
    else label smoothing CE, else plain CE."""
    if mixup:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing)
    return nn.CrossEntropyLoss()
