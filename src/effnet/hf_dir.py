"""Writing a model as a Hugging Face-layout folder (config.json + model.safetensors).

`effnet.create_model('local-dir:DIR')` reads it back. The config carries the full effnet
architecture (`effnet_config`), so pruned widths or CondConv experts that no registered variant
has load without any registration.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from .config import PretrainedCfg
from .model import EfficientNet


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)` on a temporary file next to `path`, then move it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def hf_config(model: EfficientNet, class_names: Sequence[str] | None = None,
              architecture: str | None = None) -> dict[str, Any]:
    """The config.json content for `model`."""
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    overlay = {k: tuple(v) if isinstance(v, list) else v for k, v in model.pretrained_cfg.items() if k in known}
    overlay.update(num_classes=model.num_classes, file=None)
    cfg = dataclasses.replace(model.cfg, pretrained=dataclasses.replace(model.cfg.pretrained, **overlay))
    meta: dict[str, Any] = {
        "architecture": architecture or cfg.name,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "pretrained_cfg": _jsonable(cfg.pretrained.to_dict()),
        "effnet_config": _jsonable(cfg.to_dict()),
    }
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(names) != model.num_classes:
            raise ValueError(f"{len(names)} class names for a model with {model.num_classes} classes")
        meta["class_names"] = names
    return meta


def save_hf_dir(model: nn.Module, folder: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                architecture: str | None = None) -> Path:
    """Write `model` into `folder` (created if needed) as config.json and model.safetensors.

    Each file is written to a temporary name in the folder and then renamed, so a reader never
    sees half a file. Returns the folder.
    """
    if not isinstance(model, EfficientNet):
        raise TypeError(f"save_hf_dir needs an effnet EfficientNet classifier, got {type(model).__name__}")
    from safetensors.torch import save_file

    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output {str(folder)!r} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    meta = hf_config(model, class_names, architecture)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors",
                  lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write(folder / "config.json",
                  lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return folder
