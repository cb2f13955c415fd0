"""effnet: EfficientNet-CondConv and knapsack-pruned EfficientNet for PyTorch.

    import effnet
    model = effnet.create_model("tf_efficientnet_cc_b0_4e", pretrained=True).eval()
"""

from .config import ModelConfig
from .data import create_transform, resolve_data_config, resolve_model_data_config
from .errors import CheckpointError, EffnetError, PretrainedUnavailableError, UnknownModelError
from .flops import count_macs
from .model import EfficientNet, EfficientNetFeatures
from .optimize import optimize_for_inference
from .registry import (build_model, create_model, get_config, get_pretrained_cfg, is_model, list_models,
                       list_pretrained, model_info, register_variant)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "EfficientNet", "EfficientNetFeatures", "EffnetError", "ModelConfig",
    "PretrainedUnavailableError", "UnknownModelError", "build_model", "count_macs", "create_model",
    "get_config", "get_pretrained_cfg", "is_model", "list_models", "list_pretrained", "model_info",
    "optimize_for_inference", "register_variant",
    "create_transform", "resolve_data_config", "resolve_model_data_config",
]
