"""Helpers for the `effnet serve` tests: a small saved model, test images, and servers on 127.0.0.1."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

MODEL = "efficientnet_b1_pruned"
IMG_SIZE = 64
LABELS = ["apple", "bicycle", "cloud", "dolphin", "engine", "forest", "guitar", "harbour", "igloo", "jacket"]


def make_model_dir(folder: Path) -> Path:
    """A 10-class model folder (config.json + model.safetensors) at 64 px whose answers differ
    clearly between images: the classifier is rescaled so logits vary by a few units across inputs
    (a freshly initialised head gives nearly uniform probabilities, which would hide mixed-up answers)."""
    import effnet
    from effnet.hf_dir import save_hf_dir
    torch.manual_seed(0)
    model = effnet.create_model(MODEL, num_classes=10).eval()
    gen = np.random.default_rng(0)
    probe = torch.from_numpy(gen.uniform(-1, 1, (16, 3, IMG_SIZE, IMG_SIZE)).astype(np.float32))
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(probe), pre_logits=True)
        centred = feats - feats.mean(0)
        weight = torch.randn(10, feats.shape[1])
        spread = (centred @ weight.T).std()
        weight *= 4.0 / float(spread)
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(-(feats.mean(0) @ weight.T))
    return save_hf_dir(model, folder, class_names=LABELS, pretrained_overlay={"input_size": (3, IMG_SIZE, IMG_SIZE)})


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def distinct_images(n: int, size: int = 48) -> list[bytes]:
    """`n` different small PNG images (noise over a per-image colour gradient)."""
    gen = np.random.default_rng(1)
    out = []
    for i in range(n):
        base = np.linspace(0, 255, size)[None, :, None] * gen.uniform(0, 1, (1, 1, 3))
        arr = np.clip(base + gen.normal(0, 60, (size, size, 3)) + 20 * i % 255, 0, 255).astype(np.uint8)
        out.append(png_bytes(Image.fromarray(arr, "RGB")))
    return out


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


class ThreadServer:
    """An ASGI app under uvicorn in a background thread of the test process."""

    def __init__(self, app: Any) -> None:
        import uvicorn
        self.sock = free_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()

    def wait(self, path: str = "/readyz", timeout: float = 60.0) -> None:
        """Until `path` answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if request(self.url + path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.url}{path} not 200 within {timeout} s")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def start_cli_server(args: list[str], timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """`effnet serve ARGS --port 0` in a subprocess; returns it and its URL once it prints ready."""
    proc = subprocess.Popen([sys.executable, "-m", "effnet", "serve", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"ready at (http://\S+?)/? ", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise AssertionError(f"server did not get ready: {line!r} {proc.stderr.read() if proc.stderr else ''}")


def request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
            method: str | None = None, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP request; error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body with each file as field 'image'; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post_images(url: str, files: list[tuple[str, bytes]], route: str = "/v1/classify", query: str = "",
                fields: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """POST images as multipart; returns (status, headers, decoded JSON)."""
    body, ctype = multipart(files, fields)
    status, headers, raw = request(f"{url}{route}{query}", body, {"Content-Type": ctype})
    return status, headers, json.loads(raw)


def in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, list]:
    """Run `fn(*args)` in a daemon thread; its result lands in the returned list."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    t.start()
    return t, out


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    """Poll `cond()` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
