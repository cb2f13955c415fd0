"""Typed records that describe an EfficientNet variant, and the one place its widths are resolved.

A variant is data: a stage table (the EfficientNet-B0 rows), width and depth multipliers, CondConv
experts, optional pruned widths read off a published checkpoint, and its pretrained config.
`ModelConfig.blocks()` turns that into one `BlockSpec` per block; the model is built from those.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping


@dataclass(frozen=True)
class StageSpec:
    """One row of the stage table, before width and depth scaling."""

    block: Literal["ds", "ir"]  # ds: depthwise-separable (no expansion); ir: inverted residual
    repeats: int  # blocks in the stage at depth multiplier 1.0
    kernel: int  # depthwise kernel size
    stride: int  # stride of the stage's first block; the others use 1
    expand: int  # expansion ratio of the inverted bottleneck (1 for ds)
    out: int  # output channels at width multiplier 1.0
    condconv: bool = False  # the stage's convs are CondConv with ModelConfig.experts experts


# EfficientNet-B0 (Tan & Le, 2019, table 1), stages 2-8; the stem conv (stage 1) and head (stage 9)
# are fixed fields of ModelConfig. The last three stages are the ones CondConv parameterises.
EFFICIENTNET_B0_STAGES: tuple[StageSpec, ...] = (
    #          block  repeats kernel stride expand out  condconv
    StageSpec("ds",   1,      3,     1,     1,     16),
    StageSpec("ir",   2,      3,     2,     6,     24),
    StageSpec("ir",   2,      5,     2,     6,     40),
    StageSpec("ir",   3,      3,     2,     6,     80),
    StageSpec("ir",   3,      5,     1,     6,     112, True),
    StageSpec("ir",   4,      5,     2,     6,     192, True),
    StageSpec("ir",   1,      3,     1,     6,     320, True),
)


@dataclass(frozen=True)
class PrunedWidths:
    """Channel widths of a knapsack-pruned network, one entry per stage.

    `stage_out[s]` is stage s's output width (every block of a stage shares it because of the
    residual sums). `blocks[s][i]` is `(mid, se)` for block i of stage s: the expanded width the
    depthwise conv runs at, and the squeeze-and-excitation bottleneck width.
    """

    stage_out: tuple[int, ...]
    blocks: tuple[tuple[tuple[int, int], ...], ...]


@dataclass(frozen=True)
class PretrainedCfg:
    """What the published weights expect: where they live and how images are preprocessed."""

    url: str | None = None
    hf_hub_id: str | None = None
    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # the TF ports use Inception normalisation
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    num_classes: int = 1000
    pool_size: tuple[int, int] = (7, 7)
    first_conv: str = "conv_stem"
    classifier: str = "classifier"
    license: str = "apache-2.0"
    file: str | None = None  # a local weights file; set through pretrained_cfg_overlay
    label_names: tuple[str, ...] | None = None  # class names of a trained head, where known

    def overlay(self, *sources: Mapping[str, Any] | None, strict: bool = False, **entries: Any) -> PretrainedCfg:
        """A copy with the entries of `sources` (in order, then `entries`) replacing this record's.

        The one way a pretrained config changes: a caller's pretrained_cfg_overlay, a folder's
        config.json, a run's preprocessing, a model's live `pretrained_cfg` dict. JSON lists become
        tuples. Keys that are no field (timm's `tag`, `test_input_size`, ...) are dropped, or with
        `strict` refused with a TypeError naming them.
        """
        merged: dict[str, Any] = {}
        for source in (*sources, entries):
            merged.update(source or {})
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(merged) - known)
        if strict and unknown:
            raise TypeError(f"unknown pretrained config key(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in merged.items() if k in known})

    def to_dict(self, head: bool = True) -> dict[str, Any]:
        """The timm-style `pretrained_cfg` dict (tuples kept as tuples; `label_names`, a list, only
        when set). Without `head`, the dict of a features-only model: no classifier entries."""
        d = dataclasses.asdict(self)
        labels = d.pop("label_names")
        if labels is not None:
            d["label_names"] = list(labels)
        if not head:
            for key in HEAD_ENTRIES:
                d.pop(key)
        return d


# pretrained_cfg entries about the classifier, which a features-only model does not have (as in timm)
HEAD_ENTRIES = ("num_classes", "classifier")


@dataclass(frozen=True)
class ModelInfo:
    """The published model-index metadata of a variant (from the papers' releases)."""

    collection: str
    paper: str
    paper_url: str
    flops: int  # as published in the model index
    file_size: int  # bytes of the published checkpoint
    image_size: int
    crop_pct: float
    interpolation: str
    recipe: dict[str, Any] = field(default_factory=dict)  # training recipe, where published


@dataclass(frozen=True)
class BlockSpec:
    """One block after scaling/pruning: everything the block's constructor needs."""

    stage: int
    index: int  # position inside the stage
    block: Literal["ds", "ir"]
    in_chs: int
    mid_chs: int  # width the depthwise conv runs at (= in_chs for ds blocks)
    out_chs: int
    se_chs: int  # squeeze-and-excitation bottleneck width
    kernel: int
    stride: int
    experts: int  # 0: static convs; >0: CondConv with this many experts


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines one EfficientNet variant."""

    name: str
    width_mult: float = 1.0  # scales every width (then rounded to multiples of 8)
    depth_mult: float = 1.0  # scales repeats per stage, rounded up as in the paper
    experts: int = 0  # CondConv experts in the stages marked condconv (0: all convs static)
    pruned: PrunedWidths | None = None  # when set, replaces the computed stage/block widths
    stages: tuple[StageSpec, ...] = EFFICIENTNET_B0_STAGES
    stem_chs: int = 32  # before width scaling
    head_chs: int = 1280  # before width scaling
    se_ratio: float = 0.25  # SE bottleneck relative to the block's input width
    bn_eps: float = 1e-3  # TensorFlow's BatchNorm epsilon, which all published weights use
    bn_momentum: float = 0.1  # PyTorch convention (TF's 0.99 decay is 0.01 here)
    pretrained: PretrainedCfg = field(default_factory=PretrainedCfg)
    info: ModelInfo | None = None

    @property
    def stem_width(self) -> int:
        return make_divisible(self.stem_chs * self.width_mult)

    @property
    def head_width(self) -> int:
        return make_divisible(self.head_chs * self.width_mult)

    def stage_depths(self) -> list[int]:
        """Blocks per stage after depth scaling (or as pruned)."""
        if self.pruned is not None:
            return [len(b) for b in self.pruned.blocks]
        return [max(1, math.ceil(s.repeats * self.depth_mult)) for s in self.stages]

    def blocks(self) -> list[BlockSpec]:
        """Resolve the stage table into one record per block, in execution order."""
        if self.pruned is not None and len(self.pruned.stage_out) != len(self.stages):
            raise ValueError(f"{self.name}: pruned widths name {len(self.pruned.stage_out)} "
                             f"stages, the stage table has {len(self.stages)}")
        specs = []
        in_chs = self.stem_width
        for s, (stage, depth) in enumerate(zip(self.stages, self.stage_depths())):
            out_chs = (self.pruned.stage_out[s] if self.pruned
                       else make_divisible(stage.out * self.width_mult))
            for i in range(depth):
                if self.pruned is not None:
                    mid_chs, se_chs = self.pruned.blocks[s][i]
                else:
                    mid_chs = in_chs if stage.block == "ds" else make_divisible(in_chs * stage.expand)
                    se_chs = max(1, round(in_chs * self.se_ratio))
                specs.append(BlockSpec(
                    stage=s, index=i, block=stage.block, in_chs=in_chs, mid_chs=mid_chs,
                    out_chs=out_chs, se_chs=se_chs, kernel=stage.kernel,
                    stride=stage.stride if i == 0 else 1,
                    experts=self.experts if stage.condconv else 0))
                in_chs = out_chs
        return specs

    def feature_stages(self) -> list[int]:
        """Stages whose output is a feature level: the last one before each resolution drop."""
        return [s for s in range(len(self.stages))
                if s == len(self.stages) - 1 or self.stages[s + 1].stride > 1]

    def with_pretrained(self, *sources: Mapping[str, Any] | None, strict: bool = False,
                        **entries: Any) -> ModelConfig:
        """This config with `PretrainedCfg.overlay(*sources, strict=strict, **entries)` as its
        pretrained config."""
        return dataclasses.replace(self, pretrained=self.pretrained.overlay(*sources, strict=strict, **entries))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description, enough to rebuild the architecture with `from_dict`."""
        d = dataclasses.asdict(self)
        d["pretrained"] = self.pretrained.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict` (lists from JSON become the tuples the records hold)."""
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config field(s): {', '.join(sorted(unknown))}")
        if d.get("pruned") is not None:
            p = d["pruned"]
            d["pruned"] = PrunedWidths(
                stage_out=tuple(p["stage_out"]),
                blocks=tuple(tuple((int(m), int(e)) for m, e in stage) for stage in p["blocks"]))
        if "stages" in d:
            d["stages"] = tuple(StageSpec(**s) for s in d["stages"])
        if d.get("pretrained") is not None:
            d["pretrained"] = PretrainedCfg().overlay(d["pretrained"], strict=True)
        if d.get("info") is not None:
            info = dict(d["info"])
            info["recipe"] = {k: tuple(v) if isinstance(v, list) else v for k, v in info.get("recipe", {}).items()}
            d["info"] = ModelInfo(**info)
        return cls(**d)
