"""Upcycling a dense EfficientNet into its CondConv twin (Yang et al., 2019, arXiv 1904.04971).

The twin has the same widths, with `experts` experts in every conv of the stages the table marks
CondConv. Routing weights are sigmoid(W x + b); with W = 0 and b = 0 every expert gets 0.5, so
setting each expert to dense / (0.5 * experts) makes the mixed kernel equal the dense one and the
twin computes exactly what the dense model computes. Identical experts would receive identical
gradients forever, so each expert gets a small perturbation that sums to zero over the experts:
the mixed kernel is unchanged at initialisation, but the experts can diverge during training.
"""

from __future__ import annotations

import dataclasses

import torch

from .checkpoint import load_state_dict_into
from .layers import CondConv2d
from .model import EfficientNet


def upcycle(model: EfficientNet, experts: int, *, noise: float = 0.01, seed: int = 0,
            name: str | None = None) -> EfficientNet:
    """The CondConv twin of dense `model`, with outputs equal to its outputs.

    Args:
        model: a dense EfficientNet (no CondConv layers).
        experts: experts per CondConv layer (>= 2).
        noise: std of each expert's zero-sum perturbation, relative to the dense kernel's std.
        seed: seed of that perturbation.
        name: the new config's name (default: `<name>_upcycled_<experts>e`).
    """
    cfg = model.cfg
    if experts < 2:
        raise ValueError(f"upcycling needs at least 2 experts, got {experts}")
    if cfg.experts:
        raise ValueError(f"{cfg.name} is already a CondConv model ({cfg.experts} experts); upcycle a dense one")
    if not any(stage.condconv for stage in cfg.stages):
        raise ValueError(f"{cfg.name}: no stage of its table is marked condconv, so there is nothing to upcycle")
    new_cfg = dataclasses.replace(cfg, experts=experts, name=name or f"{cfg.name}_upcycled_{experts}e")
    drop_path = max((b.drop_path.p for stage in model.blocks for b in stage), default=0.0)
    n_blocks = sum(len(stage) for stage in model.blocks)
    twin = EfficientNet(new_cfg, num_classes=model.num_classes, in_chans=model.in_chans,
                        drop_rate=model.drop_rate,
                        drop_path_rate=drop_path * n_blocks / max(1, n_blocks - 1),
                        global_pool=model.global_pool.pool_type)
    twin.pretrained_cfg = new_cfg.pretrained.overlay(model.pretrained_cfg).to_dict()
    dense = model.state_dict()
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, target in twin.state_dict().items():
        module_name = key.rsplit(".", 1)[0]
        module = twin.get_submodule(module_name)
        if isinstance(module, CondConv2d):
            w = dense[key].detach().float().reshape(1, -1).cpu()
            bank = w.repeat(experts, 1) / (0.5 * experts)
            if noise > 0:
                eps = torch.randn(bank.shape, generator=g) * (noise * float(w.std()) / (0.5 * experts))
                bank += eps - eps.mean(0, keepdim=True)  # zero-sum: the mixed kernel is unchanged
            sd[key] = bank.to(dense[key].dtype)
        elif key.split(".")[-2] == "routing_fn":
            sd[key] = torch.zeros_like(target)
        else:
            sd[key] = dense[key].detach().cpu().clone()
    load_state_dict_into(twin, sd, f"{cfg.name} upcycled")
    param = next(model.parameters())
    return twin.to(device=param.device).train(model.training)
