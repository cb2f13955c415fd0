"""Deterministic synthetic weights and inputs, computed identically here and in the reference
environment (scripts/make_parity_fixtures.py), so parity needs no published weights."""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

# Which BatchNorm follows each conv of a block: gives a CondConv bank's output width.
_BN_AFTER = {"conv_pw": "bn1", "conv_dw": "bn2", "conv_pwl": "bn3"}


def synthetic_state_dict(manifest: list[tuple[str, list[int]]], seed: int = 0) -> dict[str, Tensor]:
    """Weights that keep activations O(1) through the whole network, from (key, shape) pairs."""
    g = torch.Generator().manual_seed(seed)
    shapes = {k: tuple(s) for k, s in manifest}
    sd: dict[str, Tensor] = {}
    for key, shape in manifest:
        shape = tuple(shape)
        name = key.rsplit(".", 1)[-1]
        if name == "num_batches_tracked":
            sd[key] = torch.zeros((), dtype=torch.long)
        elif name == "running_mean":
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        elif name == "running_var":
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif re.search(r"^blocks\.\d+\.\d+\.bn3\.weight$", key) or (
                re.search(r"^blocks\.0\.\d+\.bn2\.weight$", key)):
            # a block's last BatchNorm scales its residual branch: small, as in trained networks,
            # so rounding differences are not amplified from block to block
            sd[key] = 0.2 + 0.3 * torch.rand(shape, generator=g)
        elif re.search(r"(^|\.)bn\d\.weight$", key):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif name == "bias":
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 2 and re.search(r"\.conv_(pw|dw|pwl)\.weight$", key):
            # CondConv bank (experts, out * in/groups * k * k); sigmoid routing ~0.5 per expert
            prefix, conv = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1]
            out = shapes[f"{prefix}.{_BN_AFTER[conv]}.weight"][0]
            fan_in = shape[1] // out
            sd[key] = torch.randn(shape, generator=g) * (2.0 / math.sqrt(shape[0] * fan_in))
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return sd


def synthetic_input(batch: int, height: int, width: int, seed: int = 1, chans: int = 3) -> Tensor:
    """A reproducible (B, C, H, W) input."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, chans, height, width, generator=g)


def parity_sizes(native: int) -> dict[str, tuple[int, int, int]]:
    """(batch, height, width) per fixture: native size, an odd size, and an odd non-square size."""
    return {"native": (3, native, native), "odd": (2, native - 31, native - 31), "features": (2, 45, 53)}


def calibration_size(native: int) -> tuple[int, int, int, int]:
    """(batch, height, width, seed) of the batch that sets the fixtures' BatchNorm statistics."""
    return 4, native, native, 2
