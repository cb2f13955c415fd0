"""Reading weight files and loading them into a model, with errors that say what does not fit.

`read_state_dict` reads any weights file; `load_weights` puts a full-model state dict into a
classifier or a features_only model (published, `--checkpoint`, `local-dir:` and run-folder weights
alike).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from .errors import CheckpointError, first_line
from .model import EfficientNetFeatures

# Where training scripts keep the weights inside a checkpoint dict, most preferred first.
STATE_DICT_ENTRIES = ("state_dict_ema", "model_ema", "state_dict", "model")
# Prefixes that wrappers (DistributedDataParallel, torch.compile) add to every key.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys of a classifier's state dict that a features_only model does not have.
HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")


def read_state_dict(path: str | os.PathLike, use_ema: bool = True) -> dict[str, Tensor]:
    """Read a .safetensors, .pth, .pth.tar or .bin file into a plain state dict.

    Pickle files go through `torch.load(weights_only=True)`, which refuses anything that would
    run code. Training checkpoints are unwrapped (EMA weights first unless `use_ema=False`) and
    `module.` / `_orig_mod.` prefixes are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            obj: object = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {e}") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = first_line(e, type(e).__name__)
            raise CheckpointError(f"refused to load {str(path)!r}: it is not a plain weights file "
                                  f"(weights_only=True rejected it: {first})") from None
        except Exception as e:  # torch.load fails on foreign bytes in many ways (IndexError, EOFError, ...)
            detail = first_line(e, type(e).__name__)
            raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint "
                                  f"(truncated or another format?): {detail}") from None
    return extract_state_dict(obj, str(path), use_ema)


def has_ema_weights(path: str | os.PathLike) -> bool:
    """Whether a weights file is a training checkpoint holding EMA weights (safetensors files never do)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable files are reported by read_state_dict, which the caller has already used
        return False
    return isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) and obj[k] for k in STATE_DICT_ENTRIES[:2])


def extract_state_dict(obj: object, source: str = "checkpoint", use_ema: bool = True) -> dict[str, Tensor]:
    """The tensor dict inside a loaded checkpoint object, with wrapper prefixes stripped."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict")
    entries = STATE_DICT_ENTRIES if use_ema else STATE_DICT_ENTRIES[2:]
    for key in entries:
        if isinstance(obj.get(key), Mapping) and obj[key]:
            obj = obj[key]
            break
    sd = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            continue
        for prefix in WRAPPER_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        sd[k] = v
    if not sd:
        raise CheckpointError(f"{source} contains no tensors (keys: {', '.join(map(str, list(obj)[:8]))})")
    check_finite(sd, source)
    return sd


def check_finite(state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Refuse weights holding NaN or infinity (a diverged or damaged file), naming the first tensor;
    a model loaded from them would print NaN probabilities rather than fail."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() or v.is_complex()
           if not bool(torch.isfinite(v).all())]
    if bad:
        more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise CheckpointError(f"{source}: tensor {bad[0]!r} holds NaN or infinite values{more}; "
                              "the weights are damaged or come from a diverged run")


def _listing(items: list[str], limit: int = 20) -> str:
    shown = "\n  ".join(items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {shown}{more}"


def load_state_dict_into(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint",
                         strict: bool = True) -> None:
    """Copy `state_dict` into `model`; on any mismatch, one error listing every bad key.

    Shape mismatches are always errors; missing or unexpected keys only when `strict`.
    """
    own = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es):{_listing(mismatched)}")
    if strict and missing:
        problems.append(f"{len(missing)} key(s) missing from the checkpoint:{_listing(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) in the checkpoint:{_listing(unexpected)}")
    if problems:
        name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
        raise CheckpointError(f"{source} does not fit {name}: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Load a full-model state dict strictly; a features_only model takes it without the head."""
    if isinstance(model, EfficientNetFeatures):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(HEAD_PREFIXES)}
    load_state_dict_into(model, state_dict, source)
