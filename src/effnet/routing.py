"""How specialised are the experts? Mean CondConv routing weight per class and per block.

Every CondConv block computes one routing vector per image, sigmoid(W * pooled input + b), in
(0, 1) per expert. Averaging those per true class shows whether experts respond to particular
classes (rows that differ) or act as one wider conv (flat maps).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from .blocks import InvertedResidual
from .errors import EffnetError
from .hf_dir import atomic_write


def condconv_blocks(model: nn.Module) -> list[tuple[str, InvertedResidual]]:
    """(name, block) of every block with a routing layer, in execution order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, InvertedResidual) and m.routing_fn is not None]


@torch.no_grad()
def routing_statistics(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
                       class_names: Sequence[str] | None = None, max_batches: int | None = None) -> dict[str, Any]:
    """Mean routing weight per class, block and expert over labelled images.

    Returns a JSON-able dict: `blocks` (names), `experts`, `classes` (names of the classes that
    had images; the others are left out rather than given made-up values), `counts` (images per
    class), `mean` (blocks x classes x experts) and `overall` (blocks x experts, all images).
    """
    blocks = condconv_blocks(model)
    if not blocks:
        name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
        raise EffnetError(f"{name} has no CondConv blocks, so it has no routing to show")
    experts = blocks[0][1].routing_fn.out_features
    sums = torch.zeros(len(blocks), num_classes, experts, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.long)
    labels: list[Tensor] = []

    def hook(i: int):
        def record(module: nn.Module, args: tuple, out: Tensor) -> None:
            sums[i].index_add_(0, labels[0], torch.sigmoid(out.float()).double().cpu())
        return record

    handles = [b.routing_fn.register_forward_hook(hook(i)) for i, (_, b) in enumerate(blocks)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for step, (x, y) in enumerate(batches):
            if max_batches is not None and step >= max_batches:
                break
            y = torch.as_tensor(y).long().cpu()
            if y.dim() != 1 or (y < 0).any() or (y >= num_classes).any():
                raise EffnetError(f"routing statistics need class indices in [0, {num_classes}); "
                                  f"got labels of shape {tuple(y.shape)}")
            labels[:] = [y]
            model(x.to(device))
            counts += torch.bincount(y, minlength=num_classes)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if counts.sum() == 0:
        raise EffnetError("routing statistics: the data yielded no images")
    present = torch.nonzero(counts).flatten()
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    mean = sums[:, present] / counts[present].view(1, -1, 1)
    overall = sums.sum(1) / counts.sum()
    return dict(blocks=[n for n, _ in blocks], experts=experts,
                classes=[names[int(c)] for c in present], counts=[int(counts[c]) for c in present],
                mean=mean.tolist(), overall=overall.tolist())


def plot_routing(stats: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> tuple[Path, Path]:
    """Heatmaps (classes x experts, one per block) to `path` and the values to `<path stem>.json`.

    Needs matplotlib (the `plots` extra); raises EffnetError saying so when it is missing.
    """
    from .extras import require
    require("matplotlib", extra="plots", purpose="the routing plot").use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise EffnetError(f"output folder {str(path.parent)!r} does not exist")
    fmt = path.suffix.lstrip(".").lower() or "png"
    n = len(stats["blocks"])
    cols = min(4, n)
    rows = -(-n // cols)
    n_cls, n_exp = len(stats["classes"]), stats["experts"]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (1.2 + 0.35 * n_exp), rows * (1.0 + 0.28 * n_cls)),
                             squeeze=False, constrained_layout=True)
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        image = ax.imshow(stats["mean"][k], vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_title(stats["blocks"][k], fontsize=9)
        ax.set_xticks(range(n_exp))
        ax.set_xlabel("expert", fontsize=8)
        ax.set_yticks(range(n_cls))
        ax.set_yticklabels(stats["classes"], fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    fig.colorbar(image, ax=axes, shrink=0.8, label="mean routing weight")
    fig.suptitle(title or "mean CondConv routing weight per class")
    json_path = path.with_suffix(".json")
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110))
    finally:
        plt.close(fig)
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(stats, indent=1) + "\n"))
    return path, json_path
