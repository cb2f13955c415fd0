"""Counting multiply-accumulates (MACs) of a forward pass, per image."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import CondConv2d


def _conv_macs(out: Tensor, in_chs: int, groups: int, kernel: tuple[int, ...] | int) -> int:
    k = kernel * kernel if isinstance(kernel, int) else kernel[0] * kernel[1]
    return out.numel() * (in_chs // groups) * k


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int] | None = None, batch_size: int = 1) -> int:
    """MACs of one forward pass at `input_size` (C, H, W), divided by the batch size.

    Counts what the hardware multiplies: convolutions and linear layers, and for CondConv also
    the routing layer and the mixing of the expert kernels (routing @ experts), which is what
    `torch.utils.flop_counter` sees too (it reports FLOPs = 2 x MACs).
    """
    if input_size is None:
        input_size = tuple(model.pretrained_cfg["input_size"])
    total = 0

    def conv_hook(m: nn.Conv2d, inp: tuple[Tensor], out: Tensor) -> None:
        nonlocal total
        total += _conv_macs(out, m.in_channels, m.groups, m.kernel_size)

    def linear_hook(m: nn.Linear, inp: tuple[Tensor], out: Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    def condconv_hook(m: CondConv2d, inp: tuple[Tensor, Tensor], out: Tensor) -> None:
        nonlocal total
        routing = inp[1]
        total += routing.shape[0] * m.weight.numel()  # mixing: (B, E) @ (E, O*I*k*k)
        total += _conv_macs(out, m.in_chs, m.groups, m.kernel)

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, CondConv2d):
            hooks.append(m.register_forward_hook(condconv_hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(batch_size, *input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total // batch_size
