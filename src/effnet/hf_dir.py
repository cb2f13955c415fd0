"""Writing a model as a Hugging Face-layout folder (config.json + model.safetensors).

`effnet.create_model('local-dir:DIR')` reads it back. The config carries the full effnet
architecture (`effnet_config`), so pruned widths or CondConv experts that no registered variant
has load without any registration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from . import outputs
from .model import EfficientNet


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)` on a temporary file next to `path`, then move it into place
    (effnet.outputs.atomic_write: umask permissions, no partial file under the final name)."""
    outputs.atomic_write(path, write)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def hf_config(model: EfficientNet, class_names: Sequence[str] | None = None,
              architecture: str | None = None, pretrained_overlay: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config.json content for `model`, in the layout timm's `local-dir:`/`hf-hub:` read:
    `architecture`, `num_classes`, `label_names` and `pretrained_cfg` (the preprocessing), plus
    effnet's full architecture under `effnet_config`. `pretrained_overlay` replaces entries of the
    model's pretrained config (e.g. a training run's input size)."""
    # label names go top-level, as timm writes them, not inside pretrained_cfg
    cfg = model.cfg.with_pretrained(model.pretrained_cfg, pretrained_overlay, num_classes=model.num_classes,
                                    file=None, label_names=None)
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
        meta["label_names"] = names
    return meta


def save_hf_dir(model: nn.Module, folder: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                architecture: str | None = None, pretrained_overlay: Mapping[str, Any] | None = None) -> Path:
    """Write `model` into `folder` (created if needed) as config.json and model.safetensors.

    Each file is written to a temporary name in the folder and then renamed, so a reader never
    sees half a file. Returns the folder.
    """
    if not isinstance(model, EfficientNet):
        raise TypeError(f"save_hf_dir needs an effnet EfficientNet classifier, got {type(model).__name__}")
    from safetensors.torch import save_file

    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise outputs.OutputPathError(f"output {str(folder)!r} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    meta = hf_config(model, class_names, architecture, pretrained_overlay)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors",
                  lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write(folder / "config.json",
                  lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return folder
