"""Shared test fixtures: the reference manifests and synthetic weights for every model."""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import synthetic_state_dict  # noqa: E402

import effnet  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = effnet.list_models()


@lru_cache(maxsize=None)
def reference_manifest(name: str) -> dict:
    """Facts read off the published checkpoint: state-dict keys/shapes, params, feature info."""
    return json.loads((FIXTURES / "reference" / f"{name}.json").read_text())


def parity_fixture(name: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file
    return load_file(str(FIXTURES / "parity" / f"{name}.safetensors"))


def parity_state_dict(name: str) -> dict[str, Tensor]:
    """Synthetic weights plus the BatchNorm statistics the fixture was computed with."""
    sd = synthetic_state_dict(reference_manifest(name)["state_dict"])
    sd.update({k[3:]: v for k, v in parity_fixture(name).items() if k.startswith("bn.")})
    return sd


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
