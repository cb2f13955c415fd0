"""The six published variants, as data.

CondConv models (Yang et al., 2019) keep EfficientNet's widths and give the last three stages
4 or 8 experts. The pruned models (Aflalo et al., 2020) keep the stage table but replace every
width by the one the knapsack kept; those widths were read once off the published checkpoints
(scripts/derive_pruned_widths.py) and are checked against them by tests/test_variants.py.
A new variant is one more row here (README: "Adding a variant").
"""

from __future__ import annotations

from .config import ModelConfig, ModelInfo, PretrainedCfg, PrunedWidths

_RELEASES = "https://github.com/rwightman/pytorch-image-models/releases/download/"

_CONDCONV_PAPER = ("CondConv: Conditionally Parameterized Convolutions for Efficient Inference",
                   "https://arxiv.org/abs/1904.04971")
_PRUNED_PAPER = ("Knapsack Pruning with Inner Distillation", "https://arxiv.org/abs/2002.08258")

# The recipe the CondConv weights were trained with (the papers' published model index).
_CONDCONV_RECIPE = dict(
    epochs=350, batch_size=2048, optimizer="rmsproptf", lr=0.256, momentum=0.9,
    rmsprop_decay=0.9, weight_decay=1e-5, label_smoothing=0.1, bn_momentum_tf=0.99,
    techniques=("AutoAugment", "Label Smoothing", "RMSProp", "Stochastic Depth", "Weight Decay"))


def _pretrained(file: str, size: int, crop: float) -> PretrainedCfg:
    """Published weights: the GitHub release `file` and its Hugging Face hub mirror."""
    return PretrainedCfg(url=_RELEASES + file, input_size=(3, size, size), crop_pct=crop,
                         pool_size=(-(-size // 32), -(-size // 32)))


def _condconv_info(flops: int, file_size: int, size: int, crop: float) -> ModelInfo:
    return ModelInfo("TF EfficientNet CondConv", *_CONDCONV_PAPER, flops, file_size, size, crop,
                     "bicubic", _CONDCONV_RECIPE)


def _pruned_info(flops: int, file_size: int, size: int, crop: float) -> ModelInfo:
    return ModelInfo("EfficientNet Pruned", *_PRUNED_PAPER, flops, file_size, size, crop, "bicubic")


VARIANTS: tuple[ModelConfig, ...] = (
    # CondConv:  name                       width depth experts
    ModelConfig("tf_efficientnet_cc_b0_4e", 1.0, 1.0, 4,
                pretrained=_pretrained("v0.1-weights/tf_efficientnet_cc_b0_4e-4362b6b2.pth", 224, 0.875),
                info=_condconv_info(224153788, 53490940, 224, 0.875)),
    ModelConfig("tf_efficientnet_cc_b0_8e", 1.0, 1.0, 8,
                pretrained=_pretrained("v0.1-weights/tf_efficientnet_cc_b0_8e-66184a25.pth", 224, 0.875),
                info=_condconv_info(224158524, 96287616, 224, 0.875)),
    ModelConfig("tf_efficientnet_cc_b1_8e", 1.0, 1.1, 8,
                pretrained=_pretrained("v0.1-weights/tf_efficientnet_cc_b1_8e-f7c79ae1.pth", 240, 0.882),
                info=_condconv_info(370427824, 159206198, 240, 0.882)),

    # Pruned: name                    width depth; then per stage (output width, ((mid, se) per block))
    ModelConfig("efficientnet_b1_pruned", 1.0, 1.1, pruned=PrunedWidths(*zip(
        (16, ((32, 8), (16, 4))),
        (12, ((48, 4), (62, 6), (48, 6))),
        (35, ((70, 6), (61, 10), (51, 10))),
        (74, ((175, 10), (188, 20), (137, 20), (164, 20))),
        (67, ((399, 20), (201, 28), (160, 28), (213, 28))),
        (192, ((637, 27), (806, 48), (798, 48), (891, 48), (990, 48))),
        (320, ((1152, 48), (1912, 80))),
    )), pretrained=_pretrained("v0.1-tresnet/effnetb1_pruned-bea43a3a.pth", 240, 0.882),
        info=_pruned_info(489653114, 25595162, 240, 0.882)),
    ModelConfig("efficientnet_b2_pruned", 1.1, 1.2, pruned=PrunedWidths(*zip(
        (16, ((32, 8), (16, 4))),
        (17, ((54, 4), (69, 6), (61, 6))),
        (42, ((86, 6), (72, 12), (98, 12))),
        (85, ((245, 12), (274, 22), (254, 22), (292, 22))),
        (116, ((502, 22), (315, 30), (354, 30), (443, 30))),
        (208, ((719, 30), (1148, 52), (1160, 52), (1182, 52), (1228, 52))),
        (352, ((1248, 52), (2112, 88))),
    )), pretrained=_pretrained("v0.1-tresnet/effnetb2_pruned-08c1b27c.pth", 260, 0.89),
        info=_pruned_info(878133915, 33555005, 260, 0.89)),
    ModelConfig("efficientnet_b3_pruned", 1.2, 1.4, pruned=PrunedWidths(*zip(
        (24, ((40, 10), (24, 6))),
        (12, ((27, 6), (49, 8), (48, 8))),
        (40, ((83, 8), (90, 12), (85, 12))),
        (93, ((215, 12), (261, 24), (219, 24), (254, 24), (236, 24))),
        (120, ((480, 24), (235, 34), (217, 34), (226, 33), (340, 34))),
        (232, ((802, 34), (1030, 58), (924, 58), (1016, 58), (1130, 58), (1266, 58))),
        (384, ((1392, 58), (2301, 96))),
    )), pretrained=_pretrained("v0.1-tresnet/effnetb3_pruned-59ecf72d.pth", 300, 0.904),
        info=_pruned_info(1239590641, 39770812, 300, 0.904)),
)

# Every variant with published weights is mirrored on the Hugging Face hub as timm/<name>.in1k.
VARIANTS = tuple(v.with_pretrained(hf_hub_id=f"timm/{v.name}.in1k") if v.pretrained.url else v
                 for v in VARIANTS)
