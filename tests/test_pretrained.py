"""Pretrained weights: local file, file:// and loopback HTTP downloads, the hub cache, and every
way a source can fail. No test touches the internet: each runs with its own TORCH_HOME and
HF_HOME, with the hub offline unless a test clears hf_hub_id."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import torch

import effnet
from effnet import hub
from effnet.errors import CheckpointError, PretrainedUnavailableError
from hub_cache import hashed_checkpoint, synthetic_weights, write_hub_cache

NAME = "efficientnet_b1_pruned"  # the smallest registered model
HF_ID = f"timm/{NAME}.in1k"


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return synthetic_weights(NAME)


# tiny forwards run far faster on one thread; every test gets its own offline caches (conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread", "offline_hub")


@pytest.fixture
def online(offline_hub: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Allow URL downloads (tests using it point every source at local files or 127.0.0.1)."""
    from huggingface_hub import constants
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


class _Server:
    """A loopback HTTP server for files; `mode` 'ok', 'truncate' (claims more bytes than it
    sends) or 'hang' (sends headers, then nothing until the test ends)."""

    def __init__(self, files: dict[str, bytes], mode: str = "ok") -> None:
        self.files, self.mode, self.requests = files, mode, 0
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                extra = 1000 if server.mode == "truncate" else 0
                self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                if server.mode == "hang":
                    self.wfile.flush()
                    server.release.wait(30)
                    return
                self.wfile.write(body[: len(body) // 2] if server.mode == "truncate" else body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def serve() -> Iterator:
    servers: list[_Server] = []

    def start(files: dict[str, bytes], mode: str = "ok") -> _Server:
        servers.append(_Server(files, mode))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def assert_loaded(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert own.keys() <= sd.keys()
    for k, v in own.items():
        assert torch.equal(v, sd[k]), k


def cache_files(dirs: dict[str, Path]) -> list[Path]:
    folder = dirs["torch"] / "hub" / "checkpoints"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_local_file_overlay(tmp_path: Path, weights: dict) -> None:
    from safetensors.torch import save_file
    path = tmp_path / "w.safetensors"
    save_file(weights, str(path))
    model = effnet.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert_loaded(model, weights)


def test_missing_local_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(PretrainedUnavailableError, match="nope.pth"):
        effnet.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "nope.pth")))


def test_file_url_is_verified_and_cached(tmp_path: Path, weights: dict, offline_hub: dict) -> None:
    src = hashed_checkpoint(tmp_path / "src", weights)
    model = effnet.create_model(NAME, pretrained=True,
                                pretrained_cfg_overlay=dict(url=src.as_uri(), hf_hub_id=None))
    assert_loaded(model, weights)
    assert [p.name for p in cache_files(offline_hub)] == [src.name]


def test_http_download_then_cache_hit_without_server(tmp_path: Path, weights: dict, serve, online,
                                                     offline_hub: dict) -> None:
    src = hashed_checkpoint(tmp_path / "src", weights)
    server = serve({src.name: src.read_bytes()})
    overlay = dict(url=server.url(src.name), hf_hub_id=None)
    assert_loaded(effnet.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay), weights)
    assert server.requests == 1
    assert [p.name for p in cache_files(offline_hub)] == [src.name]
    server.close()
    assert_loaded(effnet.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay), weights)


def test_corrupted_cache_entry_is_fetched_again(tmp_path: Path, weights: dict, serve, online,
                                                offline_hub: dict) -> None:
    src = hashed_checkpoint(tmp_path / "src", weights)
    server = serve({src.name: src.read_bytes()})
    cached = offline_hub["torch"] / "hub" / "checkpoints" / src.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage")
    assert hub.download_url(server.url(src.name)) == cached
    assert cached.read_bytes() == src.read_bytes() and server.requests == 1


def test_hub_cache_safetensors(weights: dict, offline_hub: dict) -> None:
    write_hub_cache(offline_hub["hf"], HF_ID, weights)
    assert_loaded(effnet.create_model(NAME, pretrained=True), weights)


def test_hub_cache_falls_back_to_pytorch_model_bin(weights: dict, offline_hub: dict) -> None:
    write_hub_cache(offline_hub["hf"], HF_ID, weights, filename="pytorch_model.bin")
    assert_loaded(effnet.create_model(NAME, pretrained=True), weights)


def test_hub_cache_comes_before_url(weights: dict, serve, online, offline_hub: dict,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # hub from cache only; URL allowed
    write_hub_cache(offline_hub["hf"], HF_ID, weights)
    server = serve({})
    assert_loaded(effnet.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(
        url=server.url("x-00000000.pth"))), weights)
    assert server.requests == 0


def test_hub_cache_from_environment_in_fresh_process(tmp_path: Path, weights: dict) -> None:
    """HF_HOME and HF_HUB_OFFLINE as a user sets them, read by huggingface_hub at import."""
    hf_home = tmp_path / "hf_env"
    write_hub_cache(hf_home, HF_ID, weights)
    torch.save(weights, tmp_path / "expected.pth")
    code = (f"import torch, effnet\n"
            f"m = effnet.create_model({NAME!r}, pretrained=True)\n"
            f"sd = torch.load({str(tmp_path / 'expected.pth')!r}, weights_only=True)\n"
            f"assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())\n")
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "t"))
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_offline_error_lists_sources_caches_and_remedy(offline_hub: dict) -> None:
    with pytest.raises(PretrainedUnavailableError) as info:
        effnet.create_model(NAME, pretrained=True)
    msg = str(info.value)
    assert NAME in msg
    assert HF_ID in msg and "HF_HUB_OFFLINE" in msg
    assert "effnetb1_pruned-bea43a3a.pth" in msg  # the published URL's file
    assert str(offline_hub["hf"] / "hub") in msg
    assert str(offline_hub["torch"] / "hub" / "checkpoints") in msg
    assert "pretrained_cfg_overlay=dict(file=" in msg and "checkpoint_path=" in msg
    assert cache_files(offline_hub) == []


def test_unreachable_server(online, offline_hub: dict) -> None:
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x-0123abcd.pth"
    with pytest.raises(PretrainedUnavailableError, match="unreachable") as info:
        effnet.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=url, hf_hub_id=None))
    assert url in str(info.value) and "no hf_hub_id" in str(info.value)
    assert cache_files(offline_hub) == []


def test_missing_huggingface_hub_is_reported(offline_hub: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(PretrainedUnavailableError, match=r"huggingface_hub is not installed"):
        effnet.create_model(NAME, pretrained=True)


def test_hash_mismatch_refused_and_not_cached(tmp_path: Path, weights: dict, serve, online,
                                              offline_hub: dict) -> None:
    src = hashed_checkpoint(tmp_path / "src", weights)
    wrong = "x-" + ("0" if src.name[2] != "0" else "1") + src.name[3:]
    server = serve({wrong: src.read_bytes()})
    with pytest.raises(PretrainedUnavailableError, match="hash mismatch"):
        effnet.create_model(NAME, pretrained=True,
                            pretrained_cfg_overlay=dict(url=server.url(wrong), hf_hub_id=None))
    assert cache_files(offline_hub) == []


@pytest.mark.parametrize("name", ["plain.pth", "hashed"])
def test_truncated_download_refused_and_not_cached(name: str, tmp_path: Path, weights: dict, serve,
                                                   online, offline_hub: dict) -> None:
    src = hashed_checkpoint(tmp_path / "src", weights)
    name = src.name if name == "hashed" else name
    server = serve({name: src.read_bytes()}, mode="truncate")
    with pytest.raises(PretrainedUnavailableError, match="truncated download"):
        effnet.create_model(NAME, pretrained=True,
                            pretrained_cfg_overlay=dict(url=server.url(name), hf_hub_id=None))
    assert cache_files(offline_hub) == []


def test_stalled_server_times_out(serve, online, offline_hub: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "DOWNLOAD_TIMEOUT", 0.5)
    server = serve({"w.pth": b"x" * 100}, mode="hang")
    with pytest.raises(hub.DownloadError, match="timed out"):
        hub.download_url(server.url("w.pth"))
    assert cache_files(offline_hub) == []


def test_progress_bar_only_when_asked_or_on_a_tty(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"abc")
    src = src.rename(tmp_path / f"w-{hub.sha256_of(src)[:6]}.bin")
    hub.download_url(src.as_uri())
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest
    (hub.checkpoint_dir() / src.name).unlink()
    hub.download_url(src.as_uri(), progress=True)
    assert src.name in capsys.readouterr().err


def test_hash_prefix_parsing() -> None:
    assert hub.hash_prefix("tf_efficientnet_cc_b0_4e-4362b6b2.pth") == "4362b6b2"
    assert hub.hash_prefix("effnetb1_pruned-bea43a3a.pth.tar") == "bea43a3a"
    assert hub.hash_prefix("model.safetensors") is None
    assert hub.hash_prefix("x-notahash.pth") is None


class _Evil:
    """Unpickling this would create `marker` (a stand-in for running arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("fmt", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_refused(fmt: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"conv_stem.weight": torch.zeros(1), "x": _Evil(marker)}
    if fmt == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load"):
        effnet.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()


def test_other_num_classes_keeps_fresh_classifier_with_warning(tmp_path: Path, weights: dict) -> None:
    path = tmp_path / "w.pth"
    torch.save(weights, path)
    with pytest.warns(UserWarning, match="num_classes=10"):
        model = effnet.create_model(NAME, pretrained=True, num_classes=10,
                                    pretrained_cfg_overlay=dict(file=str(path)))
    assert model.classifier.weight.shape == (10, model.num_features)
    body = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
    assert_loaded_subset(model, body)


def assert_loaded_subset(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(own[k], v), k


def test_num_classes_zero_gives_pre_logits(tmp_path: Path, weights: dict) -> None:
    path = tmp_path / "w.pth"
    torch.save(weights, path)
    overlay = dict(file=str(path))
    full = effnet.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dropping the classifier is asked for, not worth a warning
        bare = effnet.create_model(NAME, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(bare(x), full.forward_head(full.forward_features(x), pre_logits=True), atol=1e-6)


@pytest.mark.parametrize("chans", [1, 2, 5])
def test_in_chans_adapted_stem_matches_rgb_on_grey(chans: int, tmp_path: Path, weights: dict) -> None:
    path = tmp_path / "w.pth"
    torch.save(weights, path)
    overlay = dict(file=str(path))
    rgb = effnet.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    other = effnet.create_model(NAME, pretrained=True, in_chans=chans, pretrained_cfg_overlay=overlay).eval()
    assert other.conv_stem.weight.shape[1] == chans
    grey = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(other(grey.expand(-1, chans, -1, -1)), rgb(grey.expand(-1, 3, -1, -1)),
                                   atol=1e-4, rtol=1e-4)


def test_features_only_loads_weights_without_head(tmp_path: Path, weights: dict) -> None:
    path = tmp_path / "w.pth"
    torch.save(weights, path)
    model = effnet.create_model(NAME, pretrained=True, features_only=True, out_indices=(1, 3),
                                pretrained_cfg_overlay=dict(file=str(path)))
    own = model.state_dict()
    assert not any(k.startswith(("conv_head.", "classifier.")) for k in own)
    assert_loaded_subset(model, {k: weights[k] for k in own})


def test_unusable_cache_folder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("TORCH_HOME", str(blocker))
    src = tmp_path / "w.pth"
    src.write_bytes(b"abc")
    with pytest.raises(hub.DownloadError, match="cannot use the cache folder .*not_a_folder"):
        hub.download_url(src.as_uri())
