"""`effnet serve`'s batching under control: a scripted fake model whose forward passes wait for the
test, so warm-up, backpressure (503), timeouts (504) and answer isolation are checked without races."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")

from effnet.serve import Options, ServedModel, create_app  # noqa: E402
from serve_support import ThreadServer, in_thread, png_bytes, post_images, request, wait_for  # noqa: E402


class Gate:
    """A fake model whose forward passes wait until the test opens the gate."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.open.wait(30)
        self.batches.append(x.shape[0])
        feats = x.mean(dim=(2, 3))  # the image's mean colour: each answer identifies its image exactly
        return feats, torch.cat([feats, -feats], dim=1) * 10


def _fake(gate: Gate) -> ServedModel:
    cfg = dict(input_size=(3, 4, 4), interpolation="bilinear", crop_pct=1.0, crop_mode="center",
               mean=(0.0,) * 3, std=(1.0,) * 3)

    def transform(img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(img.resize((4, 4)), dtype=np.float32) / 255).permute(2, 0, 1)
    return ServedModel("fake", ["r", "g", "b", "-r", "-g", "-b"], cfg, transform, "fp32", "cpu", 3, gate.forward)


def _colour(i: int) -> tuple[int, int, int]:
    return (i * 37 % 256, i * 91 % 256, i * 53 % 256)


def _start_fake(gate: Gate, **options: Any) -> ThreadServer:
    srv = ThreadServer(create_app(_fake(gate), Options(**options)))
    srv.wait("/healthz")
    return srv


def _image(i: int) -> list[tuple[str, bytes]]:
    """One upload: `i`.png in its own colour."""
    return [(f"{i}.png", png_bytes(Image.new("RGB", (8, 8), _colour(i))))]


@contextlib.contextmanager
def _gated(**options: Any) -> Iterator[tuple[Gate, ThreadServer, Any]]:
    """A warmed-up fake server whose gate is then closed: (gate, server, its batcher). On the way out
    the gate opens (a stuck batch finishes) and the server closes."""
    gate = Gate()
    srv = _start_fake(gate, **options)
    try:
        srv.wait()
        batcher = srv.server.config.app.state.server.batcher
        gate.open.clear()
        yield gate, srv, batcher
    finally:
        gate.open.set()
        srv.close()


def test_ready_only_after_warm_up() -> None:
    gate = Gate()
    gate.open.clear()
    srv = _start_fake(gate, max_batch=4)
    try:
        assert request(srv.url + "/readyz")[0] == 503
        status, headers, body = post_images(srv.url, [("a.png", png_bytes(Image.new("RGB", (8, 8))))])
        assert status == 503 and headers["retry-after"] == "1" and "warming up" in body["error"]
        gate.open.set()
        srv.wait("/readyz", timeout=10)
        assert post_images(srv.url, [("a.png", png_bytes(Image.new("RGB", (8, 8))))])[0] == 200
    finally:
        gate.open.set()
        srv.close()


def test_failed_warm_up_is_reported_not_hidden() -> None:
    def broken(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("out of memory at batch 4")
    failures: list[str] = []
    srv = ThreadServer(create_app(dataclasses.replace(_fake(Gate()), forward=broken), Options(max_batch=4),
                                  on_failure=failures.append))
    try:
        srv.wait("/healthz")
        wait_for(lambda: failures)
        status, _, body = request(srv.url + "/readyz")
        assert status == 503 and json.loads(body)["status"] == "failed" and "out of memory" in json.loads(body)["error"]
        assert failures == [json.loads(body)["error"]]
    finally:
        srv.close()


def test_many_clients_exact_answers_fake_model() -> None:
    gate = Gate()
    srv = _start_fake(gate, max_batch=16, max_wait_ms=10)
    try:
        srv.wait()

        def client(i: int) -> None:
            status, _, got = post_images(srv.url, _image(i), route="/v1/embed")
            assert status == 200 and got[0]["path"] == f"{i}.png"
            assert np.allclose(got[0]["embedding"], np.array(_colour(i)) / 255, atol=1e-6)
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(client, range(128)))
        assert max(gate.batches) > 1
    finally:
        srv.close()


def test_full_queue_answers_503_with_retry_after() -> None:
    with _gated(max_batch=1, max_wait_ms=0, max_queue=2) as (gate, srv, batcher):
        first = in_thread(post_images, srv.url, _image(0))
        wait_for(lambda: batcher.running == 1)
        queued = [in_thread(post_images, srv.url, _image(i)) for i in (1, 2)]
        wait_for(lambda: batcher.depth == 2)
        status, headers, body = post_images(srv.url, _image(3))
        assert status == 503 and headers["retry-after"] == "1" and "queue" in body["error"]
        gate.open.set()
        for i, (t, out) in enumerate([first, *queued]):
            t.join(30)
            assert out[0][0] == 200 and out[0][2][0]["path"] == f"{i}.png"
        assert post_images(srv.url, _image(4))[0] == 200


def test_timeout_gives_504_and_spares_the_others() -> None:
    with _gated(max_batch=2, max_wait_ms=0, timeout_s=1.0) as (gate, srv, batcher):
        slow = in_thread(post_images, srv.url, _image(1))
        wait_for(lambda: batcher.running == 1)
        time.sleep(0.5)
        later = in_thread(post_images, srv.url, _image(2))
        slow[0].join(5)
        status, _, body = slow[1][0]
        assert status == 504 and "no answer within 1 s" in body["error"]
        gate.open.set()  # the stuck batch finishes; its answer goes nowhere, the later request still gets its own
        later[0].join(5)
        status, _, body = later[1][0]
        assert status == 200 and body[0]["path"] == "2.png"
        status, _, body = post_images(srv.url, _image(3), route="/v1/embed")
        assert status == 200 and np.allclose(body[0]["embedding"], np.array(_colour(3)) / 255, atol=1e-6)
