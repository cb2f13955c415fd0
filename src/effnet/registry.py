"""Model names -> configs, and `create_model` with the keywords timm users type."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from torch import nn

from . import hub
from .checkpoint import HEAD_PREFIXES, load_weights, read_state_dict  # noqa: F401 (HEAD_PREFIXES: public here)
from .config import ModelConfig, PretrainedCfg
from .errors import CheckpointError, UnknownModelError
from .features import wrap_features
from .model import EfficientNet, EfficientNetFeatures
from .pretrained import load_pretrained
from .variants import VARIANTS

_REGISTRY: dict[str, ModelConfig] = {cfg.name: cfg for cfg in VARIANTS}
LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"


def split_model_name_tag(model_name: str, no_tag: str = "") -> tuple[str, str]:
    """'efficientnet_b1_pruned.in1k' -> ('efficientnet_b1_pruned', 'in1k'); no tag gives `no_tag`."""
    name, _, tag = model_name.partition(".")
    return name, tag or no_tag


def register_variant(cfg: ModelConfig) -> None:
    """Add a variant at runtime, as a row of `effnet.variants.VARIANTS` would: `create_model`,
    `list_models` and the tests then know it. Raises ValueError for a name already registered
    or a config whose stage table does not resolve."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"register_variant needs an effnet.config.ModelConfig, got {type(cfg).__name__}")
    if not cfg.name or "." in cfg.name or cfg.name.startswith((LOCAL_DIR_PREFIX, HF_HUB_PREFIX)):
        raise ValueError(f"variant name {cfg.name!r}: must be non-empty, without '.' or a prefix")
    if cfg.name in _REGISTRY:
        raise ValueError(f"a variant named {cfg.name!r} is already registered")
    cfg.blocks()  # a pruned table that does not fit the stages fails here, not at create_model
    _REGISTRY[cfg.name] = cfg


def pretrained_tags(cfg: ModelConfig) -> list[str]:
    """The tags of a variant's published weights, read off its hub id (`timm/NAME.TAG`)."""
    hub_id = cfg.pretrained.hf_hub_id or ""
    stem = hub_id.rsplit("/", 1)[-1]
    return [stem[len(cfg.name) + 1:]] if stem.startswith(cfg.name + ".") else []


def _patterns(value: str | Iterable[str]) -> list[str]:
    return [p for p in ([value] if isinstance(value, str) else list(value)) if p]


def _with_tag(pattern: str) -> str:
    """A filter matched against tagged names: an untagged pattern matches every tag."""
    name, tag = split_model_name_tag(pattern)
    return f"{name}.{tag or '*'}"


def list_models(filter: str | Iterable[str] = "", pretrained: bool = False,
                exclude_filters: str | Iterable[str] = (), include_tags: bool | None = None) -> list[str]:
    """Registered model names, sorted, matching any of the fnmatch patterns in `filter`.

    As in timm, `include_tags` (default: `pretrained`) lists one name per published weight set,
    `NAME.TAG` (e.g. 'efficientnet_b1_pruned.in1k'), and `pretrained=True` keeps only models
    that have published weights.
    """
    include, exclude = _patterns(filter), _patterns(exclude_filters)
    tagged = pretrained if include_tags is None else include_tags
    if pretrained:
        configs = [cfg for cfg in _REGISTRY.values() if pretrained_tags(cfg)]
    else:
        configs = list(_REGISTRY.values())
    if tagged:
        names = sorted(f"{cfg.name}.{tag}" for cfg in configs for tag in pretrained_tags(cfg))
        include, exclude = [_with_tag(p) for p in include], [_with_tag(p) for p in exclude]
    else:
        names = sorted(cfg.name for cfg in configs)
    if include:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in include)]
    return [n for n in names if not any(fnmatch.fnmatch(n, p) for p in exclude)]


def list_pretrained(filter: str | Iterable[str] = "", exclude_filters: str | Iterable[str] = ()) -> list[str]:
    """Tagged names of every published weight set (`NAME.TAG`), as `timm.list_pretrained`."""
    return list_models(filter, pretrained=True, exclude_filters=exclude_filters, include_tags=True)


def is_model(model_name: str) -> bool:
    """Whether the architecture of `model_name` (a tag is ignored) is registered."""
    return split_model_name_tag(model_name)[0] in _REGISTRY


def get_pretrained_cfg(model_name: str, allow_unregistered: bool = True) -> PretrainedCfg | None:
    """The pretrained config of `NAME` or `NAME.TAG`, as `timm.models.get_pretrained_cfg`.

    An unknown architecture gives None (or UnknownModelError with `allow_unregistered=False`);
    a tag the architecture has no weights for is always an UnknownModelError.
    """
    name, tag = split_model_name_tag(model_name)
    if name not in _REGISTRY:
        if allow_unregistered:
            return None
        raise UnknownModelError(f"model architecture {name!r} has no pretrained config registered")
    return _tagged_config(name, tag).pretrained


def _tagged_config(name: str, tag: str) -> ModelConfig:
    cfg = _REGISTRY[name]
    if tag and tag not in pretrained_tags(cfg):
        known = ", ".join(f"{name}.{t}" for t in pretrained_tags(cfg)) or "none"
        raise UnknownModelError(f"unknown pretrained tag {tag!r} for {name}; published weights: {known}")
    return cfg


def get_config(name: str) -> ModelConfig:
    """The config of a registered model (`NAME` or `NAME.TAG`), a `local-dir:` folder or an
    `hf-hub:ORG/NAME` repo."""
    if name.startswith(LOCAL_DIR_PREFIX):
        return _local_dir_config(Path(name[len(LOCAL_DIR_PREFIX):]))[0]
    if name.startswith(HF_HUB_PREFIX):
        return _hub_config(name[len(HF_HUB_PREFIX):])[0]
    arch, tag = split_model_name_tag(name)
    if arch not in _REGISTRY:
        close = difflib.get_close_matches(arch, list(_REGISTRY), n=3, cutoff=0.5)
        close += [n for n in _REGISTRY if arch and arch in n and n not in close]
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(sorted(_REGISTRY))}"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return _tagged_config(arch, tag)


def model_info(name: str) -> dict[str, Any]:
    """The published metadata of a model (FLOPs, file size, image size, recipe, paper) and its
    pretrained config."""
    cfg = get_config(name)
    info = dataclasses.asdict(cfg.info) if cfg.info else {}
    return dict(name=cfg.name, **info, pretrained_cfg=cfg.pretrained.to_dict())


def _local_dir_config(folder: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """Read a Hugging Face-layout folder's config.json: (architecture config, the json)."""
    path = folder / "config.json"
    if not path.is_file():
        raise UnknownModelError(f"local-dir:{folder} has no config.json")
    return config_from_json(path)


def config_from_json(path: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """A model config from a config.json in the layout timm reads: `effnet_config` when present
    (pruned widths, experts), else the registered `architecture`; `pretrained_cfg` and
    `num_classes` overlaid. Returns (config, the json)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnknownModelError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise UnknownModelError(f"{path} holds a {type(meta).__name__}, not a model config")
    try:
        if "effnet_config" in meta:
            cfg = ModelConfig.from_dict(meta["effnet_config"])
        else:
            cfg = get_config(str(meta.get("architecture", "")))
    except (TypeError, ValueError, KeyError) as e:
        raise UnknownModelError(f"{path}: effnet_config does not describe a model: {e}") from None
    pretrained = meta.get("pretrained_cfg")
    cfg = cfg.with_pretrained(pretrained if isinstance(pretrained, dict) else None,
                              {k: meta[k] for k in ("num_classes",) if k in meta})
    return cfg, meta


def label_names_of(meta: dict[str, Any]) -> list[str] | None:
    """The class names a config.json carries (`label_names` as timm writes it; older effnet
    folders used `class_names`)."""
    names = meta.get("label_names", meta.get("class_names"))
    if isinstance(names, dict):  # timm allows {index: name}
        names = [names[k] for k in sorted(names, key=int)]
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _hub_config(repo_id: str) -> tuple[ModelConfig, dict[str, Any]]:
    """The config of a Hugging Face hub repo: its config.json, or for `timm/NAME.TAG` of a
    registered model whose config.json cannot be had, the registered config."""
    path, why = hub.hf_hub_file(repo_id, "config.json")
    if path is not None:
        cfg, meta = config_from_json(path)
    else:
        org, _, stem = repo_id.partition("/")
        name, tag = split_model_name_tag(stem)
        if org != "timm" or name not in _REGISTRY:
            raise UnknownModelError(f"hf-hub:{repo_id}: cannot read its config.json ({why})")
        cfg, meta = _tagged_config(name, tag), {}
    return cfg.with_pretrained(hf_hub_id=repo_id, url=None, file=None), meta


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
                 out_indices: int | Sequence[int] | None = None, checkpoint_path: str | None = None,
                 pretrained_cfg_overlay: dict[str, Any] | None = None,
                 bn_momentum: float | None = None, feature_cls: str | type[nn.Module] | None = None,
                 feature_cfg: dict[str, Any] | None = None) -> nn.Module:
    """Build a model by name, as `timm.create_model` does.

    Args:
        model_name: a registered name (see `list_models`), optionally tagged as timm tags
            published weights (`efficientnet_b1_pruned.in1k`); `hf-hub:ORG/NAME`, a Hugging Face
            hub repo with config.json and model.safetensors; or `local-dir:DIR`, a folder in that
            layout such as a training run's output folder (its weights are always loaded).
        pretrained: load the published ImageNet weights (see `effnet.pretrained`), or for
            `hf-hub:` the repo's weights.
        num_classes: classifier outputs; 0 gives pooled features; default: the weights' 1000.
        in_chans: input channels; pretrained stem weights are adapted when not 3.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic-depth rate of the last block (earlier blocks scale linearly).
        global_pool: 'avg', 'max', 'avgmax', 'catavgmax', or '' (with num_classes=0).
        features_only: return the multi-scale feature extractor instead of the classifier.
        out_indices: which feature levels (0-4; negative count from the end; an int n: the last n)
            a features_only model returns.
        feature_cls: with features_only, wrap the classifier as timm does instead of building the
            feature extractor: 'getter' (the default when only feature_cfg is given), 'hook' or
            'fx' (see `effnet.features`).
        feature_cfg: keyword arguments of that wrapper, e.g. `dict(output_fmt='NHWC')`.
        checkpoint_path: a weights file loaded after building (strict; EMA weights preferred).
        pretrained_cfg_overlay: entries replacing the pretrained config's, e.g. `dict(file=PATH)`
            to take the pretrained weights from a local file, or `dict(hf_hub_id=None)`.
        bn_momentum: BatchNorm momentum (PyTorch convention), e.g. 0.01 for TF's 0.99 decay.
    """
    local_dir, meta = None, None
    if model_name.startswith(LOCAL_DIR_PREFIX):
        local_dir = Path(model_name[len(LOCAL_DIR_PREFIX):]).expanduser()
        cfg, meta = _local_dir_config(local_dir)
    elif model_name.startswith(HF_HUB_PREFIX):
        cfg, meta = _hub_config(model_name[len(HF_HUB_PREFIX):])
    else:
        cfg = get_config(model_name)
    if meta is not None and num_classes is None and "num_classes" in meta:
        num_classes = int(meta["num_classes"])
    try:
        cfg = cfg.with_pretrained(pretrained_cfg_overlay, strict=True)
    except TypeError as e:
        raise TypeError(f"pretrained_cfg_overlay: {e}") from None
    wrap = features_only and (feature_cls is not None or feature_cfg is not None)
    labels = label_names_of(meta or {})
    classes = cfg.pretrained.num_classes if num_classes is None else num_classes
    if labels is not None and len(labels) == classes and (wrap or not features_only):
        cfg = cfg.with_pretrained(label_names=labels)  # where timm keeps them
    if bn_momentum is not None:
        cfg = dataclasses.replace(cfg, bn_momentum=bn_momentum)
    model = build_model(cfg, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                        drop_path_rate=drop_path_rate, global_pool=global_pool,
                        features_only=features_only and not wrap, out_indices=out_indices)
    if local_dir is not None:
        weights = local_dir_weights(local_dir)
        load_weights(model, read_state_dict(weights), str(weights))
    elif pretrained:
        load_pretrained(model, cfg, num_classes=num_classes, in_chans=in_chans)
    if checkpoint_path is not None:
        load_weights(model, read_state_dict(checkpoint_path), str(checkpoint_path))
    if wrap:
        model = wrap_features(model, feature_cls, feature_cfg, out_indices)
    return model
