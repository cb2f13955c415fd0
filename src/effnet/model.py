"""The EfficientNet model and its multi-scale feature extractor."""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Stage, batch_norm, make_block
from .config import ModelConfig
from .features import OUTPUT_FORMATS, FeatureInfo, PretrainedCfgAlias, feature_take_indices
from .layers import CondConv2d, Conv2dSame, GlobalPool, Routing, register_notrace_function


def build_stages(cfg: ModelConfig, drop_path_rate: float) -> nn.Sequential:
    """`blocks.<stage>.<index>`: one Sequential per stage; drop-path grows linearly with depth."""
    specs = cfg.blocks()
    stages: list[list[nn.Module]] = [[] for _ in cfg.stages]
    for i, spec in enumerate(specs):
        stages[spec.stage].append(make_block(spec, cfg.bn_eps, cfg.bn_momentum,
                                             drop_path_rate * i / len(specs)))
    return nn.Sequential(*[Stage(*blocks) for blocks in stages])


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


@register_notrace_function
@torch.fx.wrap
def check_input(x: Tensor, in_chans: int, name: str) -> None:
    """Fail with the expected shape instead of a shape error from deep inside a conv."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor of shape (B, {in_chans}, H, W); got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"{name} expects input of shape (B, {in_chans}, H, W); got {tuple(x.shape)}")


def check_num_classes(num_classes: Any) -> int:
    """num_classes as an int, or ValueError naming it."""
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative integer (0: no classifier); got {num_classes!r}")
    return int(num_classes)


def check_rate(value: Any, name: str) -> float:
    """A dropout-style rate in [0, 1), or ValueError naming it."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1); got {value!r}")
    return float(value)


class _Trunk(PretrainedCfgAlias, nn.Module):
    """Stem and stages, and the timm API over them, shared by the classifier and the extractor.

    Feature levels are counted as timm counts them: level i is the output of stage
    `stage_ends[i] - 1`, the last stage at each resolution (reductions 2, 4, 8, 16, 32).
    """

    __jit_ignored_attributes__ = ["cfg", "pretrained_cfg", "feature_info"]
    conv_bn_pairs: tuple[tuple[str, str], ...] = (("conv_stem", "bn1"),)

    def __init__(self, cfg: ModelConfig, in_chans: int, drop_path_rate: float) -> None:
        super().__init__()
        if not isinstance(in_chans, numbers.Integral) or isinstance(in_chans, bool) or in_chans < 1:
            raise ValueError(f"in_chans must be an integer >= 1; got {in_chans!r}")
        self.cfg = cfg
        self.in_chans = in_chans
        self.grad_checkpointing = False
        self.conv_stem = Conv2dSame(in_chans, cfg.stem_width, 3, stride=2)
        self.bn1 = batch_norm(cfg.stem_width, cfg.bn_eps, cfg.bn_momentum)
        self.blocks = build_stages(cfg, check_rate(drop_path_rate, "drop_path_rate"))
        self.stage_ends = [s + 1 for s in cfg.feature_stages()]  # 0 would be the stem
        # timm's mutable dict, derived from the frozen record; changed only through its overlay
        self.pretrained_cfg = cfg.pretrained.to_dict()

    def _level_dicts(self) -> list[dict[str, Any]]:
        """timm's feature_info entries for the five levels."""
        specs, stages = self.cfg.blocks(), self.cfg.stages
        out = []
        for end in self.stage_ends:
            s = end - 1
            reduction = 2 * math.prod(st.stride for st in stages[:s + 1])
            chs = [b.out_chs for b in specs if b.stage == s][-1]
            out.append(dict(stage=end, reduction=reduction, module=f"blocks.{s}", num_chs=chs))
        return out

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward instead of storing them: each block keeps only its
        input, and is re-run (same dropout masks, BatchNorm statistics updated once) when its
        gradient is needed."""
        self.grad_checkpointing = enable
        for stage in self.blocks:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes grouping parameter names as timm's layer-wise tools expect: the stem, then one
        group per block (per stage with `coarse`), the head conv last; the classifier is unmatched."""
        return dict(stem=r"^conv_stem|bn1",
                    blocks=[(r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)", None),
                            (r"conv_head|bn2", (99999,))])

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names to exempt from weight decay beyond the 1-D ones (BatchNorm, biases)
        that optimizer factories already exempt: none for EfficientNet."""
        return set()

    def _head(self, x: Tensor) -> Tensor:
        return x

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs at the feature levels `indices`, as timm 1.0 returns them.

        Args:
            indices: None: all five levels; int n: the last n; a sequence: those levels (negative
                ones count from the end).
            norm: accepted for timm compatibility; EfficientNet has no norm to apply to intermediates.
            stop_early: run no stage after the deepest requested level (the final features are then
                that stage's output, not the head's).
            output_fmt: 'NCHW', or 'NHWC' for intermediates permuted to channels-last order (the
                final features stay NCHW).
            intermediates_only: return only the list of intermediates.

        Returns:
            the intermediates, or (final features, intermediates); the final features are what
            `forward_features` returns when every stage ran.
        """
        check_input(x, self.in_chans, self.cfg.name)
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}; got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stage_ends), indices)
        take_stages = {self.stage_ends[i] for i in take}
        last = self.stage_ends[max_index] if stop_early else len(self.blocks)
        intermediates = []
        x = F.silu(self.bn1(self.conv_stem(x)))
        if 0 in take_stages:
            intermediates.append(x)
        for i, stage in enumerate(self.blocks[:last]):
            x = stage(x)
            if i + 1 in take_stages:
                intermediates.append(x)
        if output_fmt == "NHWC":
            intermediates = [t.permute(0, 2, 3, 1) for t in intermediates]
        if intermediates_only:
            return intermediates
        if last == len(self.blocks) == self.stage_ends[-1]:
            x = self._head(x)
        return x, intermediates

    def _prune_stages(self, indices: int | Sequence[int]) -> list[int]:
        take, max_index = feature_take_indices(len(self.stage_ends), indices)
        self.blocks = self.blocks[:self.stage_ends[max_index]]
        return take


class EfficientNet(_Trunk):
    """EfficientNet classifier: stem, seven stages of MBConv blocks, 1x1 head conv, pool, linear.

    The timm model API: `forward_features` (B, 3, H, W) -> (B, num_features, H/32, W/32),
    `forward_head` -> logits (or pooled features with `pre_logits=True`), `forward_intermediates`,
    `prune_intermediate_layers`, `feature_info`, `reset_classifier`, `get_classifier`,
    `pretrained_cfg` (alias `default_cfg`), `set_grad_checkpointing`, `group_matcher`,
    `no_weight_decay`.
    """

    conv_bn_pairs = (("conv_stem", "bn1"), ("conv_head", "bn2"))

    def __init__(self, cfg: ModelConfig, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg") -> None:
        super().__init__(cfg, in_chans, drop_path_rate)
        self.num_classes = check_num_classes(num_classes)
        self.drop_rate = check_rate(drop_rate, "drop_rate")
        self.feature_info = self._level_dicts()
        # head
        last_chs = cfg.blocks()[-1].out_chs
        self.num_features = self.head_hidden_size = cfg.head_width
        self.conv_head: nn.Module = Conv2dSame(last_chs, self.num_features, 1)
        self.bn2: nn.Module = batch_norm(self.num_features, cfg.bn_eps, cfg.bn_momentum)
        self.global_pool = GlobalPool(global_pool)
        self.classifier = self._make_classifier(self.num_classes)
        init_weights(self)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.global_pool.pool_type == "":
            raise ValueError("global_pool='' leaves a feature map; it needs num_classes=0")
        return nn.Linear(self.num_features * self.global_pool.feat_mult(), num_classes)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final linear layer (Identity when num_classes is 0)."""
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> EfficientNet:
        """Replace the classifier (freshly initialised) for `num_classes`; 0 gives pooled features.

        Returns the model, so `create_model(...).reset_classifier(n)` reads as one line.
        """
        num_classes = check_num_classes(num_classes)
        if global_pool is not None:
            self.global_pool = GlobalPool(global_pool)
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)
        init_weights(self.classifier)
        return self.to(self.conv_stem.weight.device)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the deepest of the feature levels `indices` (counted as in
        `forward_intermediates`); the head conv and its BatchNorm too when `prune_norm` or when
        stages were dropped (they no longer fit), and with `prune_head` the pooling and classifier.
        Returns the absolute level indices kept, for `forward_intermediates(indices=...)`."""
        take = self._prune_stages(indices)
        if prune_norm or len(self.blocks) < self.stage_ends[-1]:
            self.conv_head, self.bn2 = nn.Identity(), nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def _head(self, x: Tensor) -> Tensor:
        return F.silu(self.bn2(self.conv_head(x)))

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> (B, num_features, ceil(H/32), ceil(W/32))."""
        if not torch.jit.is_scripting():
            check_input(x, self.in_chans, self.cfg.name)
        x = F.silu(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        return F.silu(self.bn2(self.conv_head(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, dropout, classify. `pre_logits=True` stops before the classifier."""
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class EfficientNetFeatures(_Trunk):
    """Stem and stages only; returns the feature map at the end of each resolution level.

    Levels are the last stage before every stride-2 drop (reductions 2, 4, 8, 16, 32);
    `out_indices` picks among them (an int n: the last n). State-dict keys are the classifier's,
    minus the head. Also has `forward_intermediates` and `prune_intermediate_layers`.
    """

    def __init__(self, cfg: ModelConfig, out_indices: int | Sequence[int] = (0, 1, 2, 3, 4), in_chans: int = 3,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(cfg, in_chans, drop_path_rate)
        self.feature_info = FeatureInfo(self._level_dicts(), out_indices)
        self.out_indices = self.feature_info.out_indices
        self._out_stages = [self.stage_ends[i] - 1 for i in self.out_indices]
        self._last_stage = max(self._out_stages)
        self.pretrained_cfg = cfg.pretrained.to_dict(head=False)
        init_weights(self)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the deepest of the levels `indices`, which become the levels
        `forward` returns. There is no head or norm to prune. Returns the kept level indices."""
        take = self._prune_stages(indices)
        self.feature_info = self.feature_info.from_other(take)
        self.out_indices = self.feature_info.out_indices
        self._out_stages = [self.stage_ends[i] - 1 for i in self.out_indices]
        self._last_stage = max(self._out_stages)
        return take

    def forward(self, x: Tensor) -> list[Tensor]:
        if not torch.jit.is_scripting():
            check_input(x, self.in_chans, self.cfg.name)
        x = F.silu(self.bn1(self.conv_stem(x)))
        features = []
        for i, stage in enumerate(self.blocks):
            # stages after the deepest requested level are not run
            if i <= self._last_stage:
                x = stage(x)
                if i in self._out_stages:
                    features.append(x)
        return features
