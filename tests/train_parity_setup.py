"""The training-parity run, defined once for both sides: the reference implementation's side
(scripts/make_train_parity_fixture.py, in its own environment) and effnet's (tests/test_train_parity.py).

Both start from the same deterministic synthetic weights and see the same batches, so any
difference in the losses comes from the model's forward/backward, the optimiser or the loss.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from synthetic import synthetic_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "train_parity.json"
REFERENCE = Path(__file__).parent / "fixtures" / "reference"

MODELS = ("tf_efficientnet_cc_b0_4e", "efficientnet_b1_pruned")
STEPS = 20
BATCH, SIZE = 4, 64
# Cycling a few batches lets the loss fall visibly in 20 steps, so the optimiser's updates show in it.
DISTINCT_BATCHES = 5
SMOOTHING = 0.1
# Training on random weights is chaotic: in float32 a rounding difference of 1e-7 (one more thread,
# another summation order) grew 3-10x a step and reached whole percents by step 20, in the reference
# alone; at 32 px (BatchNorm over 4 values at 1x1) or larger learning rates it grew 100x a step even
# in float64. In float64 at 64 px with these rates it stays below 1e-12, so the comparison measures
# the implementations, not their summation order.
DTYPE = torch.float64
# The reference's optimiser names and keyword arguments; effnet's TrainConfig takes the same values
# (momentum, weight_decay, opt_eps). Both SGD variants are Nesterov, as `--opt sgd` is in both.
OPTIMIZERS: dict[str, dict[str, float]] = {
    "sgd": dict(lr=2e-3, momentum=0.9, weight_decay=1e-4),
    "rmsproptf": dict(lr=3e-4, momentum=0.9, weight_decay=1e-4, eps=1e-3),
}


def initial_state_dict(name: str) -> dict[str, Tensor]:
    """The weights both sides start from (in DTYPE), regenerated from the checkpoint manifest
    (nothing in bulk is committed)."""
    manifest = json.loads((REFERENCE / f"{name}.json").read_text())
    return {k: v.to(DTYPE) if v.is_floating_point() else v
            for k, v in synthetic_state_dict(manifest["state_dict"], seed=0).items()}


def batch(step: int) -> tuple[Tensor, Tensor]:
    """The (images, labels) of a step: one of DISTINCT_BATCHES fixed batches, in turn."""
    g = torch.Generator().manual_seed(1000 + step % DISTINCT_BATCHES)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=DTYPE)
    labels = torch.randint(0, 1000, (BATCH,), generator=g)
    return images, labels


def train_losses(model: torch.nn.Module, optimizer: torch.optim.Optimizer, criterion: Any,
                 steps: int = STEPS) -> list[float]:
    """`steps` optimiser steps in train mode; the loss before each step."""
    model.train()
    losses = []
    for step in range(steps):
        images, labels = batch(step)
        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
