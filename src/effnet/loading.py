"""One way to get "model + weights + class names + preprocessing" for every command.

A model is named by any of:
- a registered name, plain or tagged as timm tags published weights (`efficientnet_b1_pruned.in1k`);
- `hf-hub:ORG/NAME`, a Hugging Face hub repo (config.json + model.safetensors);
- `local-dir:DIR` or just `DIR`, a folder in that layout, such as any training run's output folder;
- nothing at all, when `--checkpoint RUN/model_best.pth.tar` says which model it holds (the run's
  args, and the config.json beside it).

Class count, class names and preprocessing (input size, crop, interpolation, mean, std) come from
the run or folder; flags typed on the command line override them. A command that would otherwise
run randomly initialised weights refuses unless asked for them (`--random-weights`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from .checkpoint import read_state_dict
from .config import ModelConfig
from .data import create_transform, imagenet_class_names, resolve_data_config
from .errors import CheckpointError, EffnetError
from .model import EfficientNet
from .registry import (HF_HUB_PREFIX, LOCAL_DIR_PREFIX, build_model, config_from_json, create_model,
                       label_names_of, load_weights)
from .validators import COMMON, arg_type

RUN_CHECKPOINT = "model_best.pth.tar"  # what a run folder without config.json is loaded from
DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_SAVED_DATA_ARGS = ("img_size", "crop_pct", "interpolation", "mean", "std", "in_chans")


@dataclass
class LoadedModel:
    """A model in eval mode on its device, what to call it, its class names (None: unknown) and the
    preprocessing its weights expect (`data_config`, also written into `model.pretrained_cfg`)."""

    model: nn.Module
    name: str
    label_names: list[str] | None
    data_config: dict[str, Any]
    device: torch.device
    weights: str | None  # where the weights came from; None for random initialisation

    @property
    def transform(self) -> Callable[[Any], Tensor]:
        """The evaluation transform: resize, centre crop, normalise."""
        c = self.data_config
        return create_transform(c["input_size"], interpolation=c["interpolation"], mean=c["mean"], std=c["std"],
                                crop_pct=c["crop_pct"], crop_mode=c["crop_mode"])

    @property
    def img_size(self) -> int:
        return int(self.data_config["input_size"][-1])


def add_model_arguments(p: argparse.ArgumentParser | Any, *, preprocessing: bool = True,
                        device: bool = True) -> None:
    """The model flags every command that loads a model shares."""
    p.add_argument("--model", "-m", metavar="NAME",
                   help="NAME or NAME.TAG (see `effnet list`), hf-hub:ORG/NAME, local-dir:DIR or a run folder "
                        "(default: the model --checkpoint was trained as)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="weights: a run's model_best.pth.tar (model, classes and preprocessing come with it), "
                        ".safetensors or .pth")
    p.add_argument("--pretrained", action="store_true", help="use the published weights of NAME")
    p.add_argument("--random-weights", action="store_true",
                   help="allow randomly initialised weights when no weights are given (for testing pipelines)")
    p.add_argument("--num-classes", type=arg_type(COMMON["num_classes"]), metavar="N",
                   help="classifier outputs (default: the weights')")
    if preprocessing:  # checked by the same rules as the training flags of these names
        p.add_argument("--img-size", type=arg_type(COMMON["img_size"]), metavar="N",
                       help="input size (default: the run's or model's)")
        p.add_argument("--crop-pct", type=arg_type(COMMON["crop_pct"]), metavar="F",
                       help="centre-crop fraction (default: the run's)")
        p.add_argument("--interpolation", type=arg_type(COMMON["interpolation"]),
                       help="resize interpolation (default: the run's)")
        p.add_argument("--mean", type=arg_type(COMMON["mean"]), nargs="+",
                       help="normalisation mean (default: the run's)")
        p.add_argument("--std", type=arg_type(COMMON["std"]), nargs="+", help="normalisation std (default: the run's)")
    if device:
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def resolve_device(name: str | None) -> torch.device:
    """`--device`, defaulting to CUDA when available; a clear error for unknown or absent devices."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EffnetError(f"--device {name!r}: unknown device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EffnetError("--device cuda: CUDA is not available on this machine (use --device cpu)")
    return device


def checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """What a weights file says about itself: a training checkpoint's `args`, `class_names`,
    `num_classes`, `arch`, `best_weights`; a safetensors file's metadata. Empty when nothing."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), "pt") as f:
                raw = dict(f.metadata() or {})
            return {k: json.loads(v) if k in ("class_names", "args") else v for k, v in raw.items()}
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable files are reported by read_state_dict with a proper message
        return {}
    if not isinstance(obj, dict):
        return {}
    return {k: obj[k] for k in ("args", "class_names", "num_classes", "arch", "best_weights") if k in obj}


def run_folder_of(path: Path) -> Path | None:
    """The folder `path` is a model folder of: itself when it holds config.json or a run checkpoint."""
    if path.is_dir() and ((path / "config.json").is_file() or (path / RUN_CHECKPOINT).is_file()):
        return path
    return None


@dataclass
class _Source:
    """Where the architecture, the weights and the metadata come from."""

    spec: str | None = None  # a name for create_model (registered, tagged, hf-hub:, local-dir:)
    folder_cfg: ModelConfig | None = None  # an architecture read off a config.json
    folder_meta: Mapping[str, Any] | None = None
    checkpoint: Path | None = None
    ckpt_meta: Mapping[str, Any] | None = None


def _resolve_source(model: str | None, checkpoint: str | None) -> _Source:
    src = _Source()
    if checkpoint:
        path = Path(checkpoint).expanduser()
        folder = run_folder_of(path)
        if folder is not None:
            path = folder / RUN_CHECKPOINT if not (folder / "config.json").is_file() else path
            if path.is_dir():  # a model folder given as --checkpoint: the same as --model DIR
                model = model or f"{LOCAL_DIR_PREFIX}{path}"
                checkpoint = None
        if checkpoint:
            if not path.is_file():
                raise CheckpointError(f"--checkpoint {checkpoint!r} does not exist or is not a file")
            src.checkpoint, src.ckpt_meta = path, checkpoint_metadata(path)
            beside = path.parent / "config.json"
            if model is None and beside.is_file():  # a run's checkpoint: its folder describes the model
                src.folder_cfg, src.folder_meta = config_from_json(beside)
    if model is not None and not model.startswith((LOCAL_DIR_PREFIX, HF_HUB_PREFIX)):
        folder = run_folder_of(Path(model).expanduser())
        if folder is not None:
            if (folder / "config.json").is_file():
                model = f"{LOCAL_DIR_PREFIX}{folder}"
            elif src.checkpoint is None:
                return _resolve_source(None, str(folder / RUN_CHECKPOINT))
    if model is not None:
        src.spec = model
    elif src.folder_cfg is None:
        saved = (src.ckpt_meta or {}).get("args") or {}
        name = saved.get("model") if isinstance(saved, dict) else None
        name = name or (src.ckpt_meta or {}).get("arch")
        if not name:
            what = f"--checkpoint {checkpoint}" if checkpoint else "nothing"
            raise EffnetError(f"no model: give --model NAME ({what} does not say which model it holds)")
        src.spec = str(name)
    return src


def _classifier_size(state_dict: Mapping[str, Tensor]) -> int | None:
    weight = state_dict.get("classifier.weight")
    return int(weight.shape[0]) if weight is not None else None


def load_model(model: str | None = None, checkpoint: str | None = None, *, pretrained: bool = False,
               random_weights: bool = False, num_classes: int | None = None, use_ema: bool | None = None,
               overrides: Mapping[str, Any] | None = None, device: str | torch.device | None = None,
               in_chans: int = 3) -> LoadedModel:
    """Build and load the model that `model` / `checkpoint` name (see the module docstring).

    `overrides` (img_size, crop_pct, interpolation, mean, std) replace the preprocessing the weights
    were trained with. `use_ema=None` takes, from a training checkpoint, the weights that validated
    best (EMA or not). Raises EffnetError when no weights are named and `random_weights` is False.
    """
    src = _resolve_source(model, checkpoint)
    spec = src.spec
    state_dict = None
    if src.checkpoint is not None:
        ema = use_ema if use_ema is not None else (src.ckpt_meta or {}).get("best_weights", "ema") != "model"
        state_dict = read_state_dict(src.checkpoint, use_ema=ema)
        if num_classes is None:
            num_classes = _classifier_size(state_dict)
    from_hub = spec is not None and spec.startswith(HF_HUB_PREFIX)
    from_folder = spec is not None and spec.startswith(LOCAL_DIR_PREFIX)
    use_published = (pretrained or from_hub) and state_dict is None and not from_folder
    if state_dict is None and not (use_published or from_folder) and not random_weights:
        raise EffnetError(f"no weights for {spec}: give --pretrained or --checkpoint FILE (or a run folder as "
                          f"--model), or --random-weights to run a randomly initialised model")
    if src.folder_cfg is not None:
        net = build_model(src.folder_cfg, num_classes=num_classes, in_chans=in_chans)
    elif from_folder and state_dict is not None:
        # the folder names the architecture; the checkpoint's weights replace the folder's
        config = Path(spec[len(LOCAL_DIR_PREFIX):]).expanduser() / "config.json"
        if not config.is_file():
            raise EffnetError(f"--model {spec}: the folder has no config.json")
        cfg, meta = config_from_json(config)
        src.folder_meta = meta
        net = build_model(cfg, num_classes=num_classes, in_chans=in_chans)
    else:
        net = create_model(spec, pretrained=use_published, num_classes=num_classes, in_chans=in_chans)
    if state_dict is not None:
        load_weights(net, state_dict, str(src.checkpoint))
    weights = (str(src.checkpoint) if state_dict is not None else spec if from_folder or from_hub
               else "published" if use_published else None)
    data_config = _data_config(net, src, overrides)
    labels = _label_names(net, src)
    net.pretrained_cfg = net.cfg.pretrained.overlay(net.pretrained_cfg, data_config,
                                                    {} if labels is None else {"label_names": labels}).to_dict()
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    name = spec or (src.folder_cfg.name if src.folder_cfg is not None else "model")
    return LoadedModel(net.eval().to(dev), name, labels, data_config, dev, weights)


def _data_config(net: nn.Module, src: _Source, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    folder = (src.folder_meta or {}).get("pretrained_cfg")
    base = net.cfg.pretrained.overlay(net.pretrained_cfg, folder if isinstance(folder, dict) else None).to_dict()
    saved = (src.ckpt_meta or {}).get("args")
    if src.folder_meta is None and isinstance(saved, dict):
        run = {k: saved.get(k) for k in _SAVED_DATA_ARGS}
        base = resolve_data_config(run, pretrained_cfg=base)
    base = resolve_data_config({}, pretrained_cfg=base)
    given = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    if "img_size" in given and given["img_size"] < 8:
        raise EffnetError(f"--img-size must be >= 8; got {given['img_size']}")
    try:
        resolved = resolve_data_config(given, pretrained_cfg=base)
    except ValueError as e:
        raise EffnetError(f"--mean/--std: {e}") from None
    return {k: resolved[k] for k in DATA_KEYS}


def _label_names(net: nn.Module, src: _Source) -> list[str] | None:
    n = int(getattr(net, "num_classes", 0) or 0)
    candidates = [(src.ckpt_meta or {}).get("class_names"), label_names_of(dict(src.folder_meta or {})),
                  (getattr(net, "pretrained_cfg", {}) or {}).get("label_names")]
    for names in candidates:
        if isinstance(names, (list, tuple)) and len(names) == n and all(isinstance(x, str) for x in names):
            return list(names)
    if n == 1000:  # the published weights' head, or one trained from them: ImageNet's classes
        return imagenet_class_names()
    return None


def load_from_args(args: argparse.Namespace, *, device: str | None = None) -> LoadedModel:
    """`load_model` with the flags of `add_model_arguments` (absent flags count as not given)."""
    get = lambda key: getattr(args, key, None)  # noqa: E731 - tools register different subsets
    if get("model") is None and get("checkpoint") is None:
        raise EffnetError("no model: give --model NAME (or a run folder) or --checkpoint RUN/model_best.pth.tar")
    overrides = {k: get(k) for k in ("img_size", "crop_pct", "interpolation", "mean", "std")}
    return load_model(get("model"), get("checkpoint"), pretrained=bool(get("pretrained")),
                      random_weights=bool(get("random_weights")), num_classes=get("num_classes"),
                      use_ema=True if get("use_ema") else None, overrides=overrides,
                      device=device or get("device"))


def model_spec(name: str) -> str:
    """A model name as the registry takes it: a folder path becomes `local-dir:PATH`."""
    if name.startswith((LOCAL_DIR_PREFIX, HF_HUB_PREFIX)):
        return name
    path = Path(name).expanduser()
    return f"{LOCAL_DIR_PREFIX}{path}" if path.is_dir() and (path / "config.json").is_file() else name


def load_source_model(model: str | None, checkpoint: str | None, *, pretrained: bool,
                      data_classes: int | None, num_classes: int | None = None, in_chans: int = 3,
                      random_weights: bool = False) -> EfficientNet:
    """The trained classifier that prune, upcycle and routing start from, on the CPU.

    Its class count comes from the checkpoint or folder; published ImageNet weights get a fresh
    classifier for the data's classes. A class count that differs from the data's is an error.
    """
    own_head = checkpoint is None and model is not None and not model_spec(model).startswith(
        (LOCAL_DIR_PREFIX, HF_HUB_PREFIX))
    n = num_classes if num_classes is not None else (data_classes if own_head else None)
    loaded = load_model(model, checkpoint, pretrained=pretrained, random_weights=random_weights, num_classes=n,
                        in_chans=in_chans, device="cpu")
    if not isinstance(loaded.model, EfficientNet):
        raise EffnetError(f"{loaded.name} is not an EfficientNet classifier")
    got = loaded.model.num_classes
    if data_classes is not None and got != data_classes:
        raise EffnetError(f"{checkpoint or loaded.name} has {got} classes but the data has {data_classes}; "
                          f"use a model trained on this data")
    return loaded.model


def registered_architecture(meta: Mapping[str, Any]) -> str | None:
    """The registered name a config.json's architecture is, or None when its widths or experts are
    its own (a pruned or upcycled model that only its effnet_config describes)."""
    from .registry import _REGISTRY  # the registered configs, not a lookup that also reads folders
    name = str(meta.get("architecture", ""))
    arch = _REGISTRY.get(name)
    if arch is None:
        return None
    ignore = ("name", "pretrained", "info", "bn_momentum")
    mine = {k: v for k, v in dict(meta.get("effnet_config") or {}).items() if k not in ignore}
    theirs = {k: v for k, v in json.loads(json.dumps(arch.to_dict())).items() if k not in ignore}
    return name if not mine or mine == theirs else None


def starting_point(model: str | None, checkpoint: str | None
                   ) -> tuple[str | None, str | None, dict[str, Any]]:
    """(model name, weights file, the run's preprocessing as training settings) that fine-tuning
    starts from when given a run: `--checkpoint RUN/model_best.pth.tar` or `--checkpoint RUN` alone
    names the run's model; `--model RUN` (or local-dir:RUN) alone names its architecture and weights."""
    folder = None
    if checkpoint:
        path = Path(checkpoint).expanduser()
        folder = run_folder_of(path) or run_folder_of(path.parent)
        if path.is_dir() and folder is not None:
            checkpoint = str(next((folder / n for n in ("model.safetensors", RUN_CHECKPOINT)
                                   if (folder / n).is_file()), path))
    elif model:
        spec = model_spec(model)
        if spec.startswith(LOCAL_DIR_PREFIX):
            folder = Path(spec[len(LOCAL_DIR_PREFIX):])
            if (folder / "model.safetensors").is_file():
                checkpoint = str(folder / "model.safetensors")
            model = None
    settings: dict[str, Any] = {}
    if folder is not None and (folder / "config.json").is_file():
        meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if model is None:
            model = registered_architecture(meta) or f"{LOCAL_DIR_PREFIX}{folder}"
        pre = meta.get("pretrained_cfg") or {}
        settings = dict(img_size=(pre.get("input_size") or [None])[-1], crop_pct=pre.get("crop_pct"),
                        interpolation=pre.get("interpolation"), mean=pre.get("mean"), std=pre.get("std"))
    elif checkpoint:
        saved = checkpoint_metadata(checkpoint).get("args")
        saved = saved if isinstance(saved, dict) else {}
        model = model or saved.get("model")
        settings = {k: saved.get(k) for k in ("img_size", "crop_pct", "interpolation", "mean", "std")}
    return model, checkpoint, {k: tuple(v) if isinstance(v, list) else v
                               for k, v in settings.items() if v is not None}
