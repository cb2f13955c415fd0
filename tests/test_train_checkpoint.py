"""Atomic checkpoint writes and RNG state round trips."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from effnet.train import atomic_save, rng_state, set_rng_state


def test_atomic_save_leaves_no_partial_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pth.tar"
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def broken_save(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2}, path)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth.tar"]  # no temporary left behind
    with pytest.raises(OSError):
        atomic_save({"epoch": 2}, tmp_path / "new.pth.tar")
    assert not (tmp_path / "new.pth.tar").exists()


def test_atomic_save_round_trip_and_permissions(tmp_path: Path) -> None:
    path = atomic_save({"w": torch.arange(4)}, tmp_path / "sub" / "x.pth.tar")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(4))
    assert path.stat().st_mode & 0o044  # readable like any file, not mkstemp's 0600


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    atomic_save({"rng": rng_state()}, tmp_path / "r.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "r.pth", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
