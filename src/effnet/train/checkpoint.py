"""Training checkpoints: atomic writes, random-number-generator states, and reading a checkpoint
back to resume with errors that say what is wrong with the file."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import outputs
from ..errors import CheckpointError, first_line

# Entries every resumable checkpoint has; a file without them is a weights file, not a run.
RESUME_KEYS = ("state_dict", "optimizer", "scheduler", "epoch", "step", "rng_state")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through a temporary file, fsync and a rename (effnet.outputs), so a crash or a full
    disk never leaves a partial file under the final name."""
    return outputs.save_torch(obj, path)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a file through a temporary file and a rename."""
    return outputs.copy_file(src, dst)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file through a temporary file and a rename."""
    return outputs.write_text(path, text)


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's, torch's CPU and (when present) CUDA generator states, in a form that
    `torch.load(weights_only=True)` accepts (tensors, ints, tuples)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = dict(
        python=random.getstate(),
        numpy=dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos), has_gauss=int(has_gauss),
                   cached_gaussian=float(cached)),
        torch=torch.get_rng_state(),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a run's checkpoint for `--resume`; a missing, empty, truncated or foreign file is a
    CheckpointError naming it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"resume checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"resume checkpoint {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"resume checkpoint {str(path)!r} is empty")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = first_line(e, type(e).__name__)
        raise CheckpointError(f"resume checkpoint {str(path)!r} holds objects other than tensors and plain "
                              f"values: {first}") from None
    except Exception as e:  # truncated zip, foreign bytes: torch raises many exception types
        detail = first_line(e, type(e).__name__)
        raise CheckpointError(f"resume checkpoint {str(path)!r} is corrupt or not a PyTorch checkpoint "
                              f"(truncated?): {detail}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"resume checkpoint {str(path)!r} holds a {type(obj).__name__}, not a training "
                              "checkpoint")
    missing = [k for k in RESUME_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{str(path)!r} is not a resumable training checkpoint (no {', '.join(missing)}); "
                              "use it as starting weights with --initial-checkpoint instead")
    return obj
