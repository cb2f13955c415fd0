"""Load benchmark of `effnet serve` on loopback: N concurrent clients, throughput and p50/p99 latency.

Three servers, one at a time, each in its own process, each driven by the same clients:
  - `effnet serve` with dynamic batching (--max-batch B, --max-wait-ms W);
  - `effnet serve --max-batch 1` (batching off, everything else the same);
  - a plain per-request handler: the ten lines a user would write (Starlette route that decodes the
    image and calls the model directly, on the same optimised model), no batching.
Beside them, the offline throughput of the same model at batch B and the same dtype
(`effnet.benchmark.bench_inference`, optimised mode), which the targets are relative to.

Every run is bounded by --requests and --seconds. Loopback only; the clients run in this process,
so on a small machine they take CPU from the server: say so when quoting figures.

    python scripts/bench_serve.py --clients 16 --img-size 128 --seconds 30 --output serve_bench.json
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "tests" / "fixtures" / "transforms").glob("*.jpg"))

PLAIN_SERVER = '''
import io, sys, torch, uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
import effnet
name, size, dtype, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))
model = effnet.create_model(name).eval()
cfg = effnet.resolve_model_data_config(model, args={"img_size": size})
transform = effnet.create_transform(cfg["input_size"], interpolation=cfg["interpolation"], mean=cfg["mean"],
                                    std=cfg["std"], crop_pct=cfg["crop_pct"])
model = effnet.optimize_for_inference(model, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype],
                                      input_size=size)

async def classify(request):
    x = transform(Image.open(io.BytesIO(await request.body())).convert("RGB"))[None]
    with torch.inference_mode():
        p, i = model(x).float().softmax(-1)[0].topk(5)
    return JSONResponse([{"index": int(j), "prob": float(q)} for q, j in zip(p, i)])

app = Starlette(routes=[Route("/v1/classify", classify, methods=["POST"])])
print("ready", flush=True)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
'''


def _images(size: int, count: int) -> list[bytes]:
    """Distinct JPEG requests cut from the fixture photos (different crops, so no two are equal)."""
    from PIL import Image
    out = []
    for i in range(count):
        img = Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB")
        w, h = img.size
        box = (i * 7 % (w // 4), i * 5 % (h // 4), w - i * 3 % (w // 4), h - i * 11 % (h // 4))
        buf = io.BytesIO()
        img.crop(box).resize((size * 2, size * 2)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(cmd: list[str], ready: str, timeout: float = 600) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited: {' '.join(cmd)}")
        if ready in line:
            return proc
    proc.kill()
    raise RuntimeError(f"server not ready within {timeout} s: {' '.join(cmd)}")


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=2).connect()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening")


def drive(port: int, images: list[bytes], clients: int, requests: int, seconds: float, warmup: int) -> dict[str, Any]:
    """`clients` keep-alive connections posting images back to back; latencies of the timed requests."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    issued = [0]
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        n = 0
        for _ in range(warmup):
            _post(conn, images[c % len(images)])
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            with lock:
                if issued[0] >= requests:
                    break
                issued[0] += 1
            body = images[(c + n * clients) % len(images)]
            t0 = time.perf_counter()
            status = _post(conn, body)
            dt = time.perf_counter() - t0
            with lock:
                (latencies.append(dt) if status == 200 else errors.append(str(status)))
            n += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds + 3600  # set properly once everyone is warm
    start_gate.wait()
    t_start = time.perf_counter()
    stop_at[0] = t_start + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    lat = sorted(latencies)
    pct = lambda q: 1e3 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    return {"requests": len(lat), "errors": len(errors), "seconds": round(elapsed, 2),
            "img_per_s": round(len(lat) / elapsed, 2), "p50_ms": round(pct(0.50), 1), "p99_ms": round(pct(0.99), 1),
            "mean_ms": round(1e3 * statistics.fmean(lat), 1) if lat else None}


def _post(conn: http.client.HTTPConnection, body: bytes) -> int:
    conn.request("POST", "/v1/classify", body=body, headers={"Content-Type": "image/jpeg"})
    r = conn.getresponse()
    r.read()
    return r.status


def _batch_stats(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    get = lambda n: float(re.search(rf"^{n} (\S+)$", text, re.M).group(1))  # noqa: E731
    s, c = get("effnet_batch_size_sum"), get("effnet_batch_size_count")
    b, bc = get("effnet_batch_duration_seconds_sum"), get("effnet_batch_duration_seconds_count")
    return {"mean_batch": round(s / c, 2) if c else 0.0, "mean_batch_ms": round(1e3 * b / bc, 1) if bc else 0.0}


def offline(model: str, batch: int, size: int, dtype: str) -> dict[str, float]:
    from effnet.benchmark import bench_inference
    r = [x for x in bench_inference(model, (batch,), size, dtype, modes=("optimized",), iters=5, warmup=2)
         if x.impl == "effnet"][0]
    return {"img_per_s": round(r.img_per_s, 2), "ms_per_batch": round(r.ms_per_batch, 1)}


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_b1_pruned")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in every server and offline (default 1: the clients need CPU too)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--requests", type=int, default=2000, help="timed requests per server at most")
    p.add_argument("--seconds", type=float, default=30.0, help="timed seconds per server at most")
    p.add_argument("--warmup", type=int, default=2, help="untimed requests per client first")
    p.add_argument("--only", default="batched,batch1,plain", help="which servers, comma-separated")
    p.add_argument("--output", help="write the figures as JSON here too")
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)

    images = _images(args.img_size, 64)
    report: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                   f"torch {torch.__version__}", "load_before": _load(), "model": args.model,
        "img_size": args.img_size, "dtype": args.dtype, "clients": args.clients, "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms, "servers": {}}
    try:
        report["machine"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name")) + ", " + report["machine"]
    except (OSError, StopIteration):
        pass
    report["offline"] = offline(args.model, args.max_batch, args.img_size, args.dtype)
    print(f"offline (optimised, batch {args.max_batch}): {report['offline']}", flush=True)
    serve = [sys.executable, "-m", "effnet", "serve", args.model, "--random-weights", "--img-size",
             str(args.img_size), "--dtype", args.dtype, "--device", "cpu", "--max-wait-ms", str(args.max_wait_ms),
             "--queue-size", str(max(256, 4 * args.clients)),
             "--threads", str(args.threads)]
    for which in args.only.split(","):
        port = _free_port()
        if which == "plain":
            cmd = [sys.executable, "-c", PLAIN_SERVER, args.model, str(args.img_size), args.dtype, str(port), str(args.threads)]
            proc = _start(cmd, "ready")
            _wait_port(port)
        else:
            batch = args.max_batch if which == "batched" else 1
            proc = _start([*serve, "--port", str(port), "--max-batch", str(batch)], "ready at")
        try:
            result = drive(port, images, args.clients, args.requests, args.seconds, args.warmup)
            if which != "plain":
                result.update(_batch_stats(port))
        finally:
            proc.terminate()
            proc.wait(60)
        result["load_after"] = _load()
        report["servers"][which] = result
        print(f"{which}: {result}", flush=True)
    s, off = report["servers"], report["offline"]
    if "batched" in s:
        s["batched"]["vs_offline"] = round(s["batched"]["img_per_s"] / off["img_per_s"], 2)
        if "plain" in s:
            s["batched"]["vs_plain"] = round(s["batched"]["img_per_s"] / s["plain"]["img_per_s"], 2)
        s["batched"]["p99_bound_ms"] = round(2 * (args.max_wait_ms + off["ms_per_batch"]), 1)
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
