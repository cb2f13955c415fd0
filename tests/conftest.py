"""Shared test fixtures: the reference manifests and synthetic weights for every model."""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import synthetic_state_dict  # noqa: E402

import effnet  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = effnet.list_models()


def require_published_weights(name: str) -> None:
    """Skip the calling test for a variant without published weights: its reference facts and
    outputs come from a published checkpoint, so there is nothing to compare against."""
    cfg = effnet.get_config(name)
    if not (effnet.registry.pretrained_tags(cfg) or cfg.pretrained.url):
        pytest.skip(f"{name} has no published weights (no pretrained tag or URL), so no reference "
                    f"manifest or parity outputs exist to compare against")


@lru_cache(maxsize=None)
def _manifest(name: str) -> dict:
    return json.loads((FIXTURES / "reference" / f"{name}.json").read_text())


def reference_manifest(name: str) -> dict:
    """Facts read off the published checkpoint: state-dict keys/shapes, params, feature info."""
    require_published_weights(name)
    return _manifest(name)


def parity_fixture(name: str) -> dict[str, Tensor]:
    """The reference implementation's outputs on synthetic weights (`make fixtures`)."""
    from safetensors.torch import load_file
    require_published_weights(name)
    return load_file(str(FIXTURES / "parity" / f"{name}.safetensors"))


def parity_state_dict(name: str) -> dict[str, Tensor]:
    """Synthetic weights plus the BatchNorm statistics the fixture was computed with."""
    sd = synthetic_state_dict(reference_manifest(name)["state_dict"])
    sd.update({k[3:]: v for k, v in parity_fixture(name).items() if k.startswith("bn.")})
    return sd


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models: one thread is as fast and does not fight the other tests for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Fresh torch and Hugging Face caches (`torch`: TORCH_HOME, `hf`: HF_HOME) with the hub offline;
    huggingface_hub reads its environment at import, so its constants are patched too."""
    from huggingface_hub import constants
    dirs = {"torch": tmp_path / "torch", "hf": tmp_path / "hf"}
    monkeypatch.setenv("TORCH_HOME", str(dirs["torch"]))
    monkeypatch.setenv("HF_HOME", str(dirs["hf"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(dirs["hf"] / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return dirs
