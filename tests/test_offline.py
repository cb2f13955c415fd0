"""Published weights on a machine without network: a quick decision, one clear error with the CLI
remedy and the exact cache paths, and a cached file with the wrong hash set aside, never deleted.
Every server here is a closed or local port on 127.0.0.1; nothing leaves the machine."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effnet import hub, outputs, registry
from effnet.cli import main
from effnet.errors import PretrainedUnavailableError
from hub_cache import hashed_checkpoint
from train_fixtures import make_image_folder

NAME = "efficientnet_b1_pruned"
FILE = "effnetb1_pruned-bea43a3a.pth"


def closed_port() -> int:
    with socket.socket() as s:  # bound, never listening, then released: connections are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty caches; the hub and the release URL point at a closed port; HF_HUB_OFFLINE unset."""
    from huggingface_hub import constants
    port = closed_port()
    dirs = {"torch": tmp_path / "torch", "hf": tmp_path / "hf" / "hub"}
    monkeypatch.setenv("TORCH_HOME", str(dirs["torch"]))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(dirs["hf"]))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    cfg = registry._REGISTRY[NAME]
    url = f"http://127.0.0.1:{port}/releases/{FILE}"
    monkeypatch.setitem(registry._REGISTRY, NAME, dataclasses.replace(
        cfg, pretrained=dataclasses.replace(cfg.pretrained, url=url)))
    monkeypatch.setattr(hub, "_PROBES", {})
    return dirs


def _image(path: Path) -> Path:
    Image.fromarray(np.full((12, 12, 3), 99, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("command", ["predict", "train"])
def test_offline_pretrained_fails_fast_with_the_cli_remedy(command: str, no_network: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    if command == "predict":
        argv = ["predict", "--model", NAME, "--pretrained", str(_image(tmp_path / "a.png"))]
    else:
        data = make_image_folder(tmp_path / "data", per_class=1, val_per_class=1)
        argv = ["train", "--model", NAME, "--pretrained", "--data-dir", str(data), "--img-size", "32",
                "--batch-size", "2", "--epochs", "1", "--workers", "0", "--output", str(tmp_path / "run")]
    t0 = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 5, (elapsed, err)
    assert "Traceback" not in err
    first = err.strip().splitlines()[0]
    assert first.startswith(f"effnet {command}: error: no pretrained weights for {NAME}") and "no network" in first
    assert "--checkpoint FILE" in err and "--model local-dir:DIR" in err
    assert f"hf download timm/{NAME}.in1k" in err
    assert str(no_network["hf"] / f"models--timm--{NAME}.in1k" / "snapshots") in err
    assert str(no_network["torch"] / "hub" / "checkpoints" / FILE) in err
    assert not (tmp_path / "run").exists()


def test_hf_hub_offline_is_named_and_nothing_is_probed(no_network: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedUnavailableError) as info:
        registry.create_model(NAME, pretrained=True)
    assert "HF_HUB_OFFLINE is set" in str(info.value).splitlines()[0]
    assert hub._PROBES == {}


def test_the_network_is_probed_once(no_network: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    real = hub._probe

    def counting(host: str, port: int, timeout: float) -> str | None:
        calls.append((host, port))
        return real(host, port, timeout)

    monkeypatch.setattr(hub, "_probe", counting)
    for _ in range(2):
        with pytest.raises(PretrainedUnavailableError):
            registry.create_model(NAME, pretrained=True)
    assert len(calls) == 1  # the hub and the URL share 127.0.0.1:PORT here; asked once for both attempts


def test_probe_answers_quickly() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert hub._probe("127.0.0.1", server.getsockname()[1], 1.0) is None
    t0 = time.monotonic()
    why = hub._probe("127.0.0.1", closed_port(), 1.0)
    assert why and "unreachable" in why and time.monotonic() - t0 < 1.0


def test_probe_gives_up_after_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    def hung(*args: object, **kwargs: object) -> None:  # a name lookup that never returns in time
        release.wait(10)
        raise OSError("gave up")

    monkeypatch.setattr(socket, "create_connection", hung)
    t0 = time.monotonic()
    why = hub._probe("example.invalid", 443, 0.2)
    release.set()
    assert why and "did not answer within 0.2s" in why and time.monotonic() - t0 < 2


def test_cached_file_with_wrong_hash_is_set_aside_not_deleted(no_network: dict[str, Path]) -> None:
    cached = no_network["torch"] / "hub" / "checkpoints" / FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"the user's own file, wrong for this name")
    with pytest.raises(PretrainedUnavailableError) as info:
        registry.create_model(NAME, pretrained=True)
    aside = [p for p in cached.parent.iterdir() if p.name.endswith(".mismatch")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"the user's own file, wrong for this name"
    assert not cached.exists() and aside[0].name in str(info.value)


def test_set_aside_then_fetched_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    src = hashed_checkpoint(tmp_path / "src", {"w": torch.ones(3)})
    cached = tmp_path / "torch" / "hub" / "checkpoints" / src.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage")
    assert hub.download_url(src.as_uri()) == cached
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
    assert [p.read_bytes() for p in cached.parent.iterdir() if p.name.endswith(".mismatch")] == [b"garbage"]
    assert stat.S_IMODE(cached.stat().st_mode) == outputs.file_mode()  # the umask's, not mkstemp's 0600


def test_hf_hub_folder_offline_is_quick(no_network: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    code = main(["info", "hf-hub:someone/their_effnet"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - t0 < 5 and "Traceback" not in err
    assert "hf-hub:someone/their_effnet" in err and "no network" in err
