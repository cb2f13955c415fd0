"""Model names -> configs, and `create_model` with the keywords timm users type."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from torch import nn

from .checkpoint import load_state_dict_into, read_state_dict
from .config import ModelConfig
from .errors import CheckpointError, UnknownModelError
from .model import EfficientNet, EfficientNetFeatures
from .variants import VARIANTS

_REGISTRY: dict[str, ModelConfig] = {cfg.name: cfg for cfg in VARIANTS}
LOCAL_DIR_PREFIX = "local-dir:"
HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")  # keys a features_only model does not have


def list_models(filter: str | Iterable[str] = "", pretrained: bool = False,
                exclude_filters: str | Iterable[str] = ()) -> list[str]:
    """Registered model names, sorted, matching any of the fnmatch patterns in `filter`.

    Every registered model has published weights, so `pretrained` filters nothing; it is accepted
    for timm compatibility.
    """
    include = [filter] if isinstance(filter, str) else list(filter)
    exclude = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    names = sorted(_REGISTRY)
    if any(include):
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in include if p)]
    return [n for n in names if not any(fnmatch.fnmatch(n, p) for p in exclude)]


def get_config(name: str) -> ModelConfig:
    """The config of a registered model (or of a `local-dir:` folder)."""
    if name.startswith(LOCAL_DIR_PREFIX):
        return _local_dir_config(Path(name[len(LOCAL_DIR_PREFIX):]))[0]
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        close += [n for n in _REGISTRY if name and name in n and n not in close]
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(sorted(_REGISTRY))}"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def model_info(name: str) -> dict[str, Any]:
    """The seeds' metadata for a model (FLOPs, file size, image size, recipe, paper) and its
    pretrained config."""
    cfg = get_config(name)
    info = dataclasses.asdict(cfg.info) if cfg.info else {}
    return dict(name=cfg.name, **info, pretrained_cfg=cfg.pretrained.to_dict())


def _local_dir_config(folder: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """Read a Hugging Face-layout folder's config.json: (architecture config, the json)."""
    path = folder / "config.json"
    if not path.is_file():
        raise UnknownModelError(f"local-dir:{folder} has no config.json")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnknownModelError(f"{path} is not valid JSON: {e}") from None
    if "effnet_config" in meta:
        cfg = ModelConfig.from_dict(meta["effnet_config"])
    else:
        cfg = get_config(str(meta.get("architecture", "")))
    if "pretrained_cfg" in meta:
        known = {f.name for f in dataclasses.fields(cfg.pretrained)}
        overlay = {k: tuple(v) if isinstance(v, list) else v
                   for k, v in meta["pretrained_cfg"].items() if k in known}
        cfg = dataclasses.replace(cfg, pretrained=dataclasses.replace(cfg.pretrained, **overlay))
    return cfg, meta


def local_dir_weights(folder: Path) -> Path:
    """The weights file of a Hugging Face-layout folder."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"local-dir:{folder} has neither model.safetensors nor pytorch_model.bin")


def build_model(cfg: ModelConfig, *, num_classes: int | None = None, in_chans: int = 3,
                drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg",
                features_only: bool = False, out_indices: Sequence[int] | None = None) -> nn.Module:
    """An untrained model from a config (no registry lookup, no weights)."""
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if features_only:
        return EfficientNetFeatures(cfg, out_indices if out_indices is not None else (0, 1, 2, 3, 4),
                                    in_chans=in_chans, drop_path_rate=drop_path_rate)
    n = cfg.pretrained.num_classes if num_classes is None else num_classes
    return EfficientNet(cfg, num_classes=n, in_chans=in_chans, drop_rate=drop_rate,
                        drop_path_rate=drop_path_rate, global_pool=global_pool)


def create_model(model_name: str, pretrained: bool = False, *, num_classes: int | None = None,
                 in_chans: int = 3, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str = "avg", features_only: bool = False,
                 out_indices: Sequence[int] | None = None, checkpoint_path: str | None = None,
                 pretrained_cfg_overlay: dict[str, Any] | None = None,
                 bn_momentum: float | None = None) -> nn.Module:
    """Build a model by name, as `timm.create_model` does.

    Args:
        model_name: a registered name (see `list_models`) or `local-dir:DIR`, a folder with
            config.json and model.safetensors as the Hugging Face hub lays them out (its weights
            are always loaded).
        pretrained: load the published ImageNet weights (see `effnet.pretrained`).
        num_classes: classifier outputs; 0 gives pooled features; default: the weights' 1000.
        in_chans: input channels; pretrained stem weights are adapted when not 3.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic-depth rate of the last block (earlier blocks scale linearly).
        global_pool: 'avg', 'max', 'avgmax', 'catavgmax', or '' (with num_classes=0).
        features_only: return the multi-scale feature extractor instead of the classifier.
        out_indices: which feature levels (0-4) a features_only model returns.
        checkpoint_path: a weights file loaded after building (strict; EMA weights preferred).
        pretrained_cfg_overlay: entries replacing the pretrained config's, e.g. `dict(file=PATH)`
            to take the pretrained weights from a local file, or `dict(hf_hub_id=None)`.
        bn_momentum: BatchNorm momentum (PyTorch convention), e.g. 0.01 for TF's 0.99 decay.
    """
    local_dir = None
    if model_name.startswith(LOCAL_DIR_PREFIX):
        local_dir = Path(model_name[len(LOCAL_DIR_PREFIX):]).expanduser()
        cfg, meta = _local_dir_config(local_dir)
        if num_classes is None and "num_classes" in meta:
            num_classes = int(meta["num_classes"])
    else:
        cfg = get_config(model_name)
    if pretrained_cfg_overlay:
        known = {f.name for f in dataclasses.fields(cfg.pretrained)}
        unknown = set(pretrained_cfg_overlay) - known
        if unknown:
            raise TypeError(f"pretrained_cfg_overlay: unknown key(s) {', '.join(sorted(unknown))}")
        cfg = dataclasses.replace(cfg, pretrained=dataclasses.replace(cfg.pretrained, **pretrained_cfg_overlay))
    if bn_momentum is not None:
        cfg = dataclasses.replace(cfg, bn_momentum=bn_momentum)
    model = build_model(cfg, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                        drop_path_rate=drop_path_rate, global_pool=global_pool,
                        features_only=features_only, out_indices=out_indices)
    if local_dir is not None:
        weights = local_dir_weights(local_dir)
        load_weights(model, read_state_dict(weights), str(weights))
    elif pretrained:
        from .pretrained import load_pretrained
        load_pretrained(model, cfg, num_classes=num_classes, in_chans=in_chans)
    if checkpoint_path is not None:
        load_weights(model, read_state_dict(checkpoint_path), str(checkpoint_path))
    return model


def load_weights(model: nn.Module, state_dict: dict, source: str) -> None:
    """Load a full-model state dict strictly; a features_only model takes it without the head."""
    if isinstance(model, EfficientNetFeatures):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(HEAD_PREFIXES)}
    load_state_dict_into(model, state_dict, source)
