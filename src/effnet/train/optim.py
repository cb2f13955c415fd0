"""Optimisers: TF-style RMSProp (as the published weights were trained), SGD, AdamW; parameter groups
that keep weight decay off norms and biases."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .config import ConfigError, TrainConfig


class RMSpropTF(Optimizer):
    """RMSProp with TensorFlow's semantics.

    Differences from `torch.optim.RMSprop`: epsilon inside the square root, the square average
    starts at 1 (not 0), and the learning rate is applied inside the momentum buffer, so a change of
    learning rate does not rescale the accumulated momentum. Per step, with g the gradient plus
    `weight_decay * p` (TF's L2 loss):

        ms  = decay * ms + (1 - decay) * g^2
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        p   = p - mom
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.01, decay: float = 0.9, momentum: float = 0.9,
                 eps: float = 1e-3, weight_decay: float = 0.0) -> None:
        if lr <= 0 or not 0.0 <= decay < 1.0 or momentum < 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"RMSpropTF: invalid lr={lr}, decay={decay}, momentum={momentum}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("RMSpropTF does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    if group["momentum"] > 0:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                square_avg = state["square_avg"]
                square_avg.mul_(group["decay"]).addcmul_(grad, grad, value=1.0 - group["decay"])
                denom = square_avg.add(group["eps"]).sqrt_()
                if group["momentum"] > 0:
                    buf = state["momentum_buffer"]
                    buf.mul_(group["momentum"]).addcdiv_(grad, denom, value=group["lr"])
                    p.sub_(buf)
                else:
                    p.addcdiv_(grad, denom, value=-group["lr"])
        return loss


def param_groups(modules: Iterable[nn.Module | nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: decayed weights, and undecayed norms/biases/1-d parameters (and scalars).

    Accepts modules and loose parameters (e.g. a distillation projection's); each parameter once.
    """
    decay, no_decay, seen = [], [], set()
    params: list[nn.Parameter] = []
    for item in modules:
        params.extend([item] if isinstance(item, nn.Parameter) else list(item.parameters()))
    for p in params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def weight_decay(cfg: TrainConfig) -> float:
    """`cfg.weight_decay`, or when unset, 0.05 for AdamW (decoupled from the gradient) and timm's 2e-5
    for the optimisers that add it to the gradient, where 0.05 would swamp it."""
    if cfg.weight_decay is not None:
        return cfg.weight_decay
    return 0.05 if cfg.opt.lower() == "adamw" else 2e-5


def create_optimizer(cfg: TrainConfig, params: Iterable[nn.Module | nn.Parameter], lr: float) -> Optimizer:
    """The optimiser `cfg.opt` over `params` (modules or parameters) at learning rate `lr`."""
    opt = cfg.opt.lower()
    groups = [g for g in param_groups(params, weight_decay(cfg)) if g["params"]]
    if not groups:
        raise ConfigError("nothing to train: the model has no parameters that require gradients")
    if opt in ("sgd", "momentum", "nesterov"):
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=opt != "momentum" and cfg.momentum > 0)
    if opt == "rmsproptf":
        return RMSpropTF(groups, lr=lr, decay=0.9, momentum=cfg.momentum,
                         eps=cfg.opt_eps if cfg.opt_eps is not None else 1e-3)
    if opt == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, momentum=cfg.momentum,
                                   eps=cfg.opt_eps if cfg.opt_eps is not None else 1e-8)
    eps = cfg.opt_eps if cfg.opt_eps is not None else 1e-8
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr, eps=eps)
    if opt == "adam":
        return torch.optim.Adam(groups, lr=lr, eps=eps)
    raise ConfigError(f"unknown optimiser {cfg.opt!r}")
