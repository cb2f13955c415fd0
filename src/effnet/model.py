"""The EfficientNet model and its multi-scale feature extractor."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .blocks import batch_norm, make_block
from .config import ModelConfig
from .layers import CondConv2d, Conv2dSame, GlobalPool, Routing


def build_stages(cfg: ModelConfig, drop_path_rate: float) -> nn.Sequential:
    """`blocks.<stage>.<index>`: one Sequential per stage; drop-path grows linearly with depth."""
    specs = cfg.blocks()
    stages: list[list[nn.Module]] = [[] for _ in cfg.stages]
    for i, spec in enumerate(specs):
        stages[spec.stage].append(make_block(spec, cfg.bn_eps, cfg.bn_momentum,
                                             drop_path_rate * i / len(specs)))
    return nn.Sequential(*[nn.Sequential(*blocks) for blocks in stages])


def init_weights(module: nn.Module) -> None:
    """Initialisation of the TF reference: He-normal (fan-out) convs, uniform classifier; CondConv
    experts and routing layers by their own `reset_parameters`."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (CondConv2d, Routing)):
            m.reset_parameters()
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.weight.shape[0])
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


def check_input(x: Tensor, in_chans: int, name: str) -> None:
    """Fail with the expected shape instead of a shape error from deep inside a conv."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor of shape (B, {in_chans}, H, W); got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"{name} expects input of shape (B, {in_chans}, H, W); got {tuple(x.shape)}")


def _run_stages(stages: nn.Sequential, x: Tensor, use_checkpoint: bool) -> list[Tensor]:
    """Run every stage, returning each stage's output."""
    outs = []
    for stage in stages:
        if use_checkpoint:
            x = checkpoint(stage, x, use_reentrant=False)
        else:
            x = stage(x)
        outs.append(x)
    return outs


class EfficientNet(nn.Module):
    """EfficientNet classifier: stem, seven stages of MBConv blocks, 1x1 head conv, pool, linear.

    The timm model API: `forward_features` (B, 3, H, W) -> (B, num_features, H/32, W/32),
    `forward_head` -> logits (or pooled features with `pre_logits=True`), `reset_classifier`,
    `get_classifier`, `pretrained_cfg`, `set_grad_checkpointing`.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg") -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        # stem
        self.conv_stem = Conv2dSame(in_chans, cfg.stem_width, 3, stride=2)
        self.bn1 = batch_norm(cfg.stem_width, cfg.bn_eps, cfg.bn_momentum)
        # stages
        self.blocks = build_stages(cfg, drop_path_rate)
        # head
        last_chs = cfg.blocks()[-1].out_chs
        self.num_features = self.head_hidden_size = cfg.head_width
        self.conv_head = Conv2dSame(last_chs, self.num_features, 1)
        self.bn2 = batch_norm(self.num_features, cfg.bn_eps, cfg.bn_momentum)
        self.global_pool = GlobalPool(global_pool)
        self.classifier = self._make_classifier(num_classes)
        self.pretrained_cfg: dict[str, Any] = cfg.pretrained.to_dict()
        init_weights(self)

    @property
    def default_cfg(self) -> dict[str, Any]:
        """Old timm name of `pretrained_cfg`."""
        return self.pretrained_cfg

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.global_pool.pool_type == "":
            raise ValueError("global_pool='' leaves a feature map; it needs num_classes=0")
        return nn.Linear(self.num_features * self.global_pool.feat_mult(), num_classes)

    def get_classifier(self) -> nn.Module:
        """The final linear layer (Identity when num_classes is 0)."""
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> EfficientNet:
        """Replace the classifier (freshly initialised) for `num_classes`; 0 gives pooled features.

        Returns the model, so `create_model(...).reset_classifier(n)` reads as one line.
        """
        if global_pool is not None:
            self.global_pool = GlobalPool(global_pool)
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)
        init_weights(self.classifier)
        return self.to(self.conv_stem.weight.device)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in backward instead of storing them."""
        self.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> (B, num_features, ceil(H/32), ceil(W/32))."""
        check_input(x, self.in_chans, self.cfg.name)
        x = F.silu(self.bn1(self.conv_stem(x)))
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        x = _run_stages(self.blocks, x, use_ckpt)[-1]
        return F.silu(self.bn2(self.conv_head(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, dropout, classify. `pre_logits=True` stops before the classifier."""
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class FeatureInfo:
    """Channels, reduction and module name of each returned feature map, as timm reports them."""

    def __init__(self, entries: Sequence[dict[str, Any]]) -> None:
        self.info = list(entries)

    def channels(self, idx: int | None = None) -> list[int] | int:
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None) -> list[int] | int:
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None) -> list[str] | str:
        return self._get("module", idx)

    def get_dicts(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self.info]

    def _get(self, key: str, idx: int | None) -> Any:
        return [d[key] for d in self.info] if idx is None else self.info[idx][key]

    def __len__(self) -> int:
        return len(self.info)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.info[idx]


class EfficientNetFeatures(nn.Module):
    """Stem and stages only; returns the feature map at the end of each resolution level.

    Levels are the last stage before every stride-2 drop (reductions 2, 4, 8, 16, 32);
    `out_indices` picks among them. State-dict keys are the classifier's, minus the head.
    """

    def __init__(self, cfg: ModelConfig, out_indices: Sequence[int] = (0, 1, 2, 3, 4), in_chans: int = 3,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_chans = in_chans
        self.grad_checkpointing = False
        levels = cfg.feature_stages()
        indices = [i + len(levels) if i < 0 else i for i in out_indices]
        bad = [i for i, j in zip(out_indices, indices) if not 0 <= j < len(levels)]
        if bad or not indices:
            raise ValueError(f"out_indices {tuple(out_indices)} out of range for {len(levels)} feature levels")
        self.out_indices = tuple(indices)
        self.conv_stem = Conv2dSame(in_chans, cfg.stem_width, 3, stride=2)
        self.bn1 = batch_norm(cfg.stem_width, cfg.bn_eps, cfg.bn_momentum)
        self.blocks = build_stages(cfg, drop_path_rate)
        self._stage_of_level = [levels[i] for i in self.out_indices]
        specs = cfg.blocks()
        reductions = [2 * math.prod(st.stride for st in cfg.stages[:s + 1]) for s in range(len(cfg.stages))]
        self.feature_info = FeatureInfo([
            dict(num_chs=[b.out_chs for b in specs if b.stage == s][-1], reduction=reductions[s],
                 module=f"blocks.{s}", index=i)
            for i, s in zip(self.out_indices, self._stage_of_level)])
        self.pretrained_cfg: dict[str, Any] = cfg.pretrained.to_dict()
        init_weights(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: Tensor) -> list[Tensor]:
        check_input(x, self.in_chans, self.cfg.name)
        x = F.silu(self.bn1(self.conv_stem(x)))
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        # stages after the deepest requested level are not run
        outs = _run_stages(self.blocks[:max(self._stage_of_level) + 1], x, use_ckpt)
        return [outs[s] for s in self._stage_of_level]
