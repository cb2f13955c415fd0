"""Test helpers: synthetic published weights and a hand-built Hugging Face hub cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

import effnet

REVISION = "0123456789abcdef0123456789abcdef01234567"  # any 40-hex commit id


def synthetic_weights(name: str, seed: int = 0) -> dict[str, Tensor]:
    """A full state dict for `name` (its own random init under `seed`, BN statistics perturbed)."""
    torch.manual_seed(seed)
    sd = effnet.build_model(effnet.get_config(name)).state_dict()
    g = torch.Generator().manual_seed(seed)
    for key, value in sd.items():
        if key.endswith("running_mean"):
            sd[key] = 0.1 * torch.randn(value.shape, generator=g)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(value.shape, generator=g)
    return sd


def write_hub_cache(hf_home: Path, repo_id: str, state_dict: dict[str, Tensor],
                    filename: str = "model.safetensors") -> Path:
    """Lay out `HF_HOME/hub/models--ORG--NAME/{refs/main, snapshots/REV/filename}` as
    huggingface_hub does, holding `state_dict`; returns the weights file."""
    repo_dir = Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    path = repo_dir / "snapshots" / REVISION / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    if filename.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, path)
    return path


def hashed_checkpoint(folder: Path, state_dict: dict[str, Tensor], stem: str = "x") -> Path:
    """Save `state_dict` as `folder/STEM-<first 8 hex of its sha256>.pth`, the published naming."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{stem}.tmp"
    torch.save(state_dict, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return tmp.rename(folder / f"{stem}-{digest[:8]}.pth")
