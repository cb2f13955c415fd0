"""First-order Taylor importance of every coupled channel group (Molchanov et al., 2019).

Removing a channel zeroes every weight that indexes it. To first order the loss then changes by
-sum(w * dL/dw) over those weights, so a channel's importance on one batch is
|sum over the group's tensors and the channel's elements of w * dL/dw|; the score is the sum of
that over the calibration batches. BatchNorm affine parameters count as weights of the channel;
running statistics do not (they are not trained).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.samples import SkipReport, unreadable_of
from ..progress import bar
from .groups import ChannelGroup, Member


def _channel_sum(t: Tensor, member: Member) -> Tensor:
    """Sum a (viewed) tensor over every axis but the member's channel axis."""
    if member.bank is not None:
        t = t.view(member.bank)
    dims = [d for d in range(t.dim()) if d != member.axis]
    return t.sum(dims) if dims else t


def taylor_importance(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                      groups: list[ChannelGroup], *, max_batches: int | None = None,
                      loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                      skips: SkipReport | None = None) -> dict[str, Tensor]:
    """Per-channel importance of each group, summed over calibration batches.

    Args:
        model: the network to score; run in eval mode (BatchNorm statistics are not touched).
        batches: (images, targets) pairs, e.g. a DataLoader over the training data.
        groups: from `channel_groups(model)`.
        max_batches: stop after this many batches (all when None).
        loss_fn: loss of (logits, targets); cross-entropy by default.
        skips: counts (and names the first few of) the images the loader could not read; a batch
            left empty by them does not count towards `max_batches`.

    Returns:
        group name -> float64 tensor of `group.size` non-negative scores (on the CPU).
    """
    loss_fn = loss_fn or F.cross_entropy
    skips = skips if skips is not None else SkipReport("calibration")
    params = dict(model.named_parameters())
    scores = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seen = 0
    total = min(len(batches), max_batches or len(batches)) if hasattr(batches, "__len__") else max_batches
    try:
        for batch in bar(batches, total=total, desc="importance", unit="batch"):
            if max_batches is not None and seen >= max_batches:
                break
            skips.add(unreadable_of(batch))
            x, y = batch[0], batch[1]
            if x.shape[0] == 0:
                continue
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(x.to(device)), y.to(device))
            loss.backward()
            with torch.no_grad():
                for g in groups:
                    total = torch.zeros(g.size, dtype=torch.float64, device=device)
                    for m in g.members:
                        p = params.get(m.key)
                        if p is None or p.grad is None:
                            continue  # a buffer (running statistics): not a weight
                        total += _channel_sum(p.detach() * p.grad, m).double()
                    scores[g.name] += total.abs().cpu()
            seen += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if seen == 0:
        raise ValueError("taylor_importance: the calibration data yielded no batches")
    return scores
