"""`effnet serve`: every route, error and limit, concurrency isolation, backpressure, timeouts and
graceful shutdown, against servers on 127.0.0.1 (a real small model, and a scripted fake model where
timing must be controlled)."""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import re
import signal
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")

import effnet  # noqa: E402
from effnet import cli  # noqa: E402
from effnet.loading import add_model_arguments, load_model  # noqa: E402
from effnet.serve import Options, create_app, load, prepare  # noqa: E402
from effnet.serve.app import ROUTES  # noqa: E402
from serve_support import (IMG_SIZE, LABELS, ThreadServer, distinct_images, in_thread, make_model_dir,  # noqa: E402
                           png_bytes, post_images, request, start_cli_server, wait_for)

FIXTURES = Path(__file__).parent / "fixtures" / "transforms"
OPTIONS = Options(max_batch=8, max_wait_ms=20, max_queue=64, timeout_s=30, max_bytes=1024 * 1024, max_images=8,
                  max_pixels=1_000_000)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Any:
    """(probabilities, features) of image bytes from the plain (unoptimised) model."""
    loaded = load_model(f"local-dir:{model_dir}", device="cpu")

    def run(data: bytes) -> tuple[np.ndarray, np.ndarray]:
        x = loaded.transform(Image.open(io.BytesIO(data)).convert("RGB"))[None]
        with torch.no_grad():
            feats = loaded.model.forward_head(loaded.model.forward_features(x), pre_logits=True)
            return loaded.model.classifier(feats).softmax(-1)[0].numpy(), feats[0].numpy()
    return run


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Any:
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args(["--model", f"local-dir:{model_dir}", "--device", "cpu"])
    app = create_app(prepare(load(args), "fp32", OPTIONS.max_batch), OPTIONS)
    srv = ThreadServer(app)
    srv.wait()
    yield srv
    srv.close()


def _json(raw: bytes) -> Any:
    return json.loads(raw)


# ---- routes ----

def test_health_ready_model_card_openapi(server: ThreadServer) -> None:
    assert _json(request(server.url + "/healthz")[2]) == {"status": "alive"}
    assert request(server.url + "/readyz")[0] == 200
    card = _json(request(server.url + "/v1/model")[2])
    assert card["label_names"] == LABELS and card["num_classes"] == 10
    assert card["input_size"] == [3, IMG_SIZE, IMG_SIZE] and card["mean"] == [0.5] * 3 and card["std"] == [0.5] * 3
    assert card["dtype"] == "fp32" and card["effnet_version"] == effnet.__version__ and card["ready"] is True
    spec = _json(request(server.url + "/openapi.json")[2])
    assert spec["openapi"].startswith("3.") and set(spec["paths"]) == set(ROUTES)
    assert {"400", "413", "415", "503", "504"} <= set(spec["paths"]["/v1/classify"]["post"]["responses"])


def test_page_uses_nothing_external(server: ThreadServer) -> None:
    status, headers, body = request(server.url + "/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in headers["content-security-policy"]
    assert not re.search(r"""(src|href|action)\s*=\s*["']?(https?:)?//""", page), "page loads something external"
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", page)
    assert "/v1/classify" in page and "/v1/model" in page


def test_unknown_route_and_method_are_json_errors(server: ThreadServer) -> None:
    status, _, body = request(server.url + "/nope")
    assert status == 404 and "/nope" in _json(body)["error"]
    status, _, body = request(server.url + "/v1/classify")
    assert status == 405 and "GET /v1/classify" in _json(body)["error"]


# ---- answers ----

def test_classify_schema_is_predict_json(server: ThreadServer, model_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    photo = tmp_path / "flower.jpg"
    photo.write_bytes((FIXTURES / "flower.jpg").read_bytes())
    assert cli.main(["predict", str(photo), "--model", f"local-dir:{model_dir}", "--format", "json",
                     "--device", "cpu", "-k", "3"]) == 0
    expected = json.loads(capsys.readouterr().out)
    data = photo.read_bytes()
    answers = [
        post_images(server.url, [(str(photo), data)], query="?top_k=3")[2],
        post_images(server.url, [(str(photo), data)], fields={"top_k": "3"})[2],
        _json(request(server.url + "/v1/classify?top_k=3", data, {"Content-Type": "image/jpeg",
                                                                  "X-Filename": str(photo)})[2]),
        _json(request(server.url + "/v1/classify", json.dumps(
            {"images": [{"name": str(photo), "data": base64.b64encode(data).decode()}], "top_k": 3}).encode(),
            {"Content-Type": "application/json"})[2]),
    ]
    for got in answers:
        assert [set(r) for r in got] == [set(r) for r in expected] == [{"path", "topk"}]
        assert got[0]["path"] == expected[0]["path"]
        assert [(t["label"], t["index"]) for t in got[0]["topk"]] == \
            [(t["label"], t["index"]) for t in expected[0]["topk"]]
        assert np.allclose([t["prob"] for t in got[0]["topk"]], [t["prob"] for t in expected[0]["topk"]],
                           atol=2e-4)


def test_embed_is_the_pooled_features(server: ThreadServer, reference: Any) -> None:
    images = distinct_images(2)
    status, headers, got = post_images(server.url, [("a.png", images[0]), ("b.png", images[1])], route="/v1/embed")
    assert status == 200 and float(headers["x-effnet-latency-ms"]) > 0
    for item, data in zip(got, images):
        feats = reference(data)[1]
        assert len(item["embedding"]) == feats.shape[0] == 1280
        assert np.allclose(item["embedding"], feats, rtol=1e-3, atol=1e-4)


def test_many_concurrent_clients_each_get_their_own_answer(server: ThreadServer, reference: Any) -> None:
    images = distinct_images(24)
    expected = [reference(d)[0] for d in images]
    # the answers differ enough between images that a swapped answer would be caught
    gaps = [np.abs(expected[i] - expected[j]).max() for i in range(24) for j in range(i)]
    assert min(gaps) > 1e-3

    def client(i: int) -> None:
        pair = [i % 24, (i * 7 + 3) % 24]
        status, _, got = post_images(server.url, [(f"img{j}.png", images[j]) for j in pair], query="?top_k=10")
        assert status == 200 and [r["path"] for r in got] == [f"img{j}.png" for j in pair]
        for r, j in zip(got, pair):
            probs = np.zeros(10)
            for t in r["topk"]:
                probs[t["index"]] = t["prob"]
            assert np.allclose(probs, expected[j], atol=2e-4), f"request {i} got another image's answer"

    before = _batch_counts(server)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(48)))
    images_run, batches = (a - b for a, b in zip(_batch_counts(server), before))
    assert images_run == 96 and batches < 96, "requests were not batched together"


def _batch_counts(server: ThreadServer) -> tuple[float, float]:
    text = request(server.url + "/metrics")[2].decode()
    get = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # noqa: E731
    return get("effnet_batch_size_sum"), get("effnet_batch_size_count")


def test_bf16_path_and_padded_batches(model_dir: Path) -> None:
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    loaded = load(parser.parse_args(["--model", f"local-dir:{model_dir}", "--device", "cpu"]))
    x = torch.stack([loaded.transform(Image.open(io.BytesIO(d)).convert("RGB")) for d in distinct_images(2)])
    fp32 = prepare(loaded, "fp32", 4)
    feats, probs = fp32.run(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CPUs without bf16 units get a warning that bf16 is emulated
        bf16 = prepare(loaded, "bf16", 4)
    _, probs16 = bf16.run(x)
    assert probs16.dtype == torch.float32 and torch.allclose(probs16, probs, atol=0.05)
    # a compiled model is built for fixed batch sizes; smaller batches are padded and cut back
    fp32.buckets = (4,)
    feats_padded, probs_padded = fp32.run(x)
    assert feats_padded.shape == feats.shape and torch.allclose(probs_padded, probs, atol=1e-5)


@pytest.mark.slow  # inductor compiles the two-output forward for each batch bucket
def test_compiled_fp32_matches_eager(model_dir: Path) -> None:
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    loaded = load(parser.parse_args(["--model", f"local-dir:{model_dir}", "--device", "cpu"]))
    x = torch.stack([loaded.transform(Image.open(io.BytesIO(d)).convert("RGB")) for d in distinct_images(2)])
    feats, probs = prepare(loaded, "fp32", 2).run(x)
    compiled = prepare(loaded, "fp32", 2, compile=True)
    assert compiled.compiled and compiled.buckets == (1, 2)
    feats_c, probs_c = compiled.run(x)
    assert torch.allclose(probs_c, probs, atol=1e-4)
    assert ((feats_c - feats).norm() / feats.norm()).item() < 1e-4


# ---- errors and limits ----

def _bomb_header_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (the data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("case", ["not_image", "bomb_pixels", "bomb_header", "truncated", "empty"])
def test_bad_images_get_400_or_415_naming_the_upload(server: ThreadServer, case: str) -> None:
    good = png_bytes(Image.new("RGB", (40, 40), (200, 30, 30)))
    jpeg = (FIXTURES / "china.jpg").read_bytes()
    data, status, words = {
        "not_image": (b"hello, I am text", 415, "not an image"),
        "bomb_pixels": (png_bytes(Image.new("L", (2000, 2000))), 400, "decompression bomb"),
        "bomb_header": (_bomb_header_png(200_000, 200_000), 400, "decompression bomb"),
        "truncated": (jpeg[: len(jpeg) // 3], 400, "damaged"),
        "empty": (b"", 400, "empty"),
    }[case]
    got_status, _, body = post_images(server.url, [("upload.bin", data)])
    assert got_status == status and "upload.bin" in body["error"] and words in body["error"]
    # beside a good image in the same request: the good one is answered, the bad one reported
    got_status, _, body = post_images(server.url, [("ok.png", good), ("upload.bin", data)])
    assert got_status == 200 and "topk" in body[0] and words in body[1]["error"] and body[1]["path"] == "upload.bin"


@pytest.mark.parametrize("headers,data,status,words", [
    ({"Content-Type": "text/plain"}, b"x", 415, "Content-Type"),
    ({}, b"x", 415, "Content-Type"),
    ({"Content-Type": "application/json"}, b"{nope", 400, "not valid JSON"),
    ({"Content-Type": "application/json"}, b'{"images": ["***"]}', 400, "images[0]: not valid base64"),
    ({"Content-Type": "application/json"}, b'{"pictures": []}', 400, '"images"'),
    ({"Content-Type": "application/json"}, b'{"images": []}', 400, "no image"),
    ({"Content-Type": "image/png"}, b"", 400, "no image"),
])
def test_malformed_requests(server: ThreadServer, headers: dict, data: bytes, status: int, words: str) -> None:
    got, _, body = request(server.url + "/v1/classify", data, headers, method="POST")
    assert got == status and words in _json(body)["error"]


@pytest.mark.parametrize("value", ["0", "-2", "abc", "1.5"])
def test_bad_top_k(server: ThreadServer, value: str) -> None:
    status, _, body = post_images(server.url, [("a.png", distinct_images(1)[0])], query=f"?top_k={value}")
    assert status == 400 and "top_k" in body["error"]


def test_top_k_is_capped_at_the_classes(server: ThreadServer) -> None:
    status, _, body = post_images(server.url, [("a.png", distinct_images(1)[0])], query="?top_k=500")
    assert status == 200 and len(body[0]["topk"]) == 10


def test_size_limits_give_413(server: ThreadServer) -> None:
    host, port = server.url[len("http://"):].split(":")
    # a declared Content-Length over the limit is refused before the body is read
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/classify")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Content-Length", str(OPTIONS.max_bytes + 10))
    conn.endheaders(b"\0" * 1000)
    r = conn.getresponse()
    assert r.status == 413 and f"{OPTIONS.max_bytes + 10:,} bytes is over" in json.loads(r.read())["error"]
    conn.close()
    # no Content-Length (chunked upload): cut off once the streamed body passes the limit
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/classify", body=iter([b"\0" * 65536] * 17), encode_chunked=True,
                 headers={"Content-Type": "image/png"})
    r = conn.getresponse()
    assert r.status == 413 and "limit" in json.loads(r.read())["error"]
    conn.close()
    files = [(f"{i}.png", d) for i, d in enumerate(distinct_images(OPTIONS.max_images + 1, size=8))]
    status, _, body = post_images(server.url, files)
    assert status == 413 and f"limit is {OPTIONS.max_images}" in body["error"]


def test_metrics_count_routes_codes_batches_and_queue(server: ThreadServer) -> None:
    post_images(server.url, [("a.png", distinct_images(1)[0])])
    request(server.url + "/v1/classify", b"x", {"Content-Type": "text/plain"})
    status, headers, body = request(server.url + "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? -?[0-9.e+-]+", line), line
    assert re.search(r'^effnet_requests_total\{route="/v1/classify",method="POST",code="200"\} [1-9]', text, re.M)
    assert re.search(r'^effnet_request_errors_total\{route="/v1/classify",method="POST",code="415"\} [1-9]',
                     text, re.M)
    assert 'effnet_request_duration_seconds_bucket{route="/v1/classify",le="+Inf"}' in text
    assert re.search(r'^effnet_batch_size_bucket\{le="8"\} [1-9]', text, re.M)
    assert re.search(r"^effnet_queue_depth 0$", text, re.M) and re.search(r"^effnet_ready 1$", text, re.M)


# ---- the command ----

def test_cli_refuses_bad_flags_and_busy_port(model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["serve", str(model_dir), "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err
    assert cli.main(["serve", str(model_dir), "--queue-size", "4", "--max-batch", "8"]) == 2
    assert "--queue-size" in capsys.readouterr().err
    assert cli.main(["serve", "no_such_model", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no_such_model" in err and len(err.splitlines()) == 2 and "Traceback" not in err  # loading + the error
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert cli.main(["serve", str(model_dir), "--port", str(busy.getsockname()[1])]) == 2
        assert "address already in use" in capsys.readouterr().err


def test_missing_extra_is_named_in_one_line(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)  # as if not installed
    assert cli.main(["serve", str(model_dir), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "effnet serve: error: effnet serve needs uvicorn, which is not installed: pip install 'effnet[serve]'"


def test_run_folder_served_by_the_command_drains_on_sigterm(model_dir: Path) -> None:
    proc, url = start_cli_server([str(model_dir), "--max-batch", "1", "--max-wait-ms", "0", "--device", "cpu"])
    try:
        card = _json(request(url + "/v1/model")[2])
        assert card["label_names"] == LABELS
        files = [(f"{i}.png", d) for i, d in enumerate(distinct_images(16))]
        worker = in_thread(post_images, url, files)
        wait_for(lambda: re.search(r"^effnet_images_total [1-9]", request(url + "/metrics")[2].decode(), re.M))
        proc.send_signal(signal.SIGTERM)
        worker[0].join(60)
        status, _, body = worker[1][0]
        assert status == 200 and [r["path"] for r in body] == [f for f, _ in files]
        assert all("topk" in r for r in body)
        assert proc.wait(60) == 0
        assert "stopped" in proc.stderr.read()
        with pytest.raises(OSError):
            request(url + "/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
