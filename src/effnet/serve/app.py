"""The ASGI application of `effnet serve` (Starlette): routes, warm-up, dynamic batching, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..errors import first_line
from .batcher import DynamicBatcher, QueueFull, ShuttingDown, answer
from .engine import ServedModel
from .inputs import Limits, RequestError, Upload, decode, parse_top_k, read_uploads
from .metrics import Metrics, MetricsMiddleware
from .openapi import openapi_spec

# The page may use only what effnet itself serves; the browser enforces it.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; connect-src 'self'; font-src 'self'")
ROUTES = ("/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/model", "/v1/classify", "/v1/embed")


@dataclass
class Options:
    """Server settings (the `effnet serve` flags)."""

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 30.0
    max_bytes: int = 20 * 1024 * 1024
    max_images: int = 64
    max_pixels: int = 40_000_000
    retry_after_s: int = 1


class Server:
    """The state behind the routes: the model, the batcher, the decode threads and the metrics."""

    def __init__(self, served: ServedModel, options: Options, on_ready: Callable[[ServedModel], Any] | None = None,
                 on_failure: Callable[[str], Any] | None = None) -> None:
        self.served, self.options, self.on_ready, self.on_failure = served, options, on_ready, on_failure
        self.limits = Limits(options.max_bytes, options.max_images, options.max_pixels)
        self.ready = False
        self.failure: str | None = None  # why warm-up failed; the server then never becomes ready
        self.batcher = DynamicBatcher(served.run, options.max_batch, options.max_wait_ms / 1000.0,
                                      options.max_queue, on_batch=self._observe_batch)
        self.metrics = Metrics(ROUTES, queue_depth=lambda: self.batcher.depth, ready=lambda: self.ready)
        # decoding and preprocessing are CPU work: threads keep them off the event loop
        self.decoders = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="effnet-decode")
        self.page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.observe_batch(size, seconds)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.batcher.start()
        warm = asyncio.get_running_loop().create_task(self._warm_up())
        try:
            yield
        finally:
            self.ready = False
            if not warm.done():
                warm.cancel()
            await self.batcher.stop()  # uvicorn has already let in-flight requests finish
            self.decoders.shutdown(wait=False)

    async def _warm_up(self) -> None:
        try:
            await asyncio.to_thread(self.served.warm_up, self.options.max_batch)
        except Exception as e:  # e.g. out of memory at --max-batch: say so instead of never becoming ready
            self.failure = f"warm-up failed: {type(e).__name__}: {first_line(e)}"
            if self.on_failure is not None:
                self.on_failure(self.failure)
            return
        self.ready = True
        if self.on_ready is not None:
            result = self.on_ready(self.served)
            if asyncio.iscoroutine(result):
                await result

    # ---- routes ----

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page, headers={"Content-Security-Policy": PAGE_CSP})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        if self.ready:
            return JSONResponse({"status": "ready"})
        if self.failure is not None:
            return JSONResponse({"status": "failed", "error": self.failure}, status_code=503)
        return JSONResponse({"status": "warming up"}, status_code=503, headers=self._retry())

    async def metrics_route(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_spec(self.served, self.options))

    async def model(self, request: Request) -> Response:
        card = self.served.card()
        card.update(max_batch=self.options.max_batch, max_wait_ms=self.options.max_wait_ms,
                    warmup_s=self.served.warmup_s, ready=self.ready)
        return JSONResponse(card)

    async def classify(self, request: Request) -> Response:
        if self.served.labels is None:
            return _error(400, f"{self.served.name} has no classifier (num_classes=0); use /v1/embed")
        return await self._infer(request, classify=True)

    async def embed(self, request: Request) -> Response:
        return await self._infer(request, classify=False)

    # ---- inference ----

    def _retry(self) -> dict[str, str]:
        return {"Retry-After": str(self.options.retry_after_s)}

    def _prepare(self, upload: Upload) -> Any:
        img = decode(upload, self.limits.max_pixels)
        try:
            return self.served.transform(img)
        except Exception as e:  # an odd image must fail alone, not take the request or server with it
            raise RequestError(400, f"{upload.name}: cannot preprocess image: {type(e).__name__}: {e}") from None

    async def _infer(self, request: Request, classify: bool) -> Response:
        start = time.perf_counter()
        if not self.ready:
            return _error(503, "the model is still warming up; retry shortly", self._retry())
        try:
            uploads, body_k = await read_uploads(request, self.limits)
            k = parse_top_k(request.query_params.get("top_k", body_k), len(self.served.labels or [1]))
        except RequestError as e:
            return _error(e.status, str(e))
        loop = asyncio.get_running_loop()
        prepared = await asyncio.gather(*(loop.run_in_executor(self.decoders, self._prepare, u) for u in uploads),
                                        return_exceptions=True)
        good = [i for i, p in enumerate(prepared) if not isinstance(p, BaseException)]
        if not good:
            first = prepared[0]
            if isinstance(first, RequestError):
                return _error(first.status, str(first) if len(uploads) == 1 else
                              f"none of the {len(uploads)} images could be read; first: {first}")
            raise first  # a bug, not the client's input: the server's 500 handler reports it
        try:
            futures = self.batcher.submit([prepared[i] for i in good])
        except QueueFull:
            return _error(503, f"server busy: the queue of {self.options.max_queue} images is full; retry later",
                          self._retry())
        except ShuttingDown:
            return _error(503, "server is shutting down", self._retry())
        try:
            outputs = await answer(futures, self.options.timeout_s)
        except asyncio.TimeoutError:
            return _error(504, f"no answer within {self.options.timeout_s:g} s (server overloaded)")
        rows = dict(zip(good, outputs))
        results = []
        for i, upload in enumerate(uploads):
            if i not in rows:
                results.append({"path": upload.name, "error": str(prepared[i])})
            elif classify:
                results.append({"path": upload.name, "topk": self._topk(rows[i][1], k)})
            else:
                results.append({"path": upload.name, "embedding": [float(v) for v in rows[i][0].tolist()]})
        ms = (time.perf_counter() - start) * 1000.0
        return JSONResponse(results, headers={"X-Effnet-Latency-Ms": f"{ms:.2f}",
                                              "Server-Timing": f"total;dur={ms:.2f}"})

    def _topk(self, probs: Any, k: int) -> list[dict[str, Any]]:
        # the same entries, rounding and order as `effnet predict --format json`
        p, idx = probs.topk(k)
        labels = self.served.labels or []
        return [{"label": labels[i], "index": i, "prob": round(float(q), 6)} for q, i in zip(p.tolist(), idx.tolist())]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    return _error(500, f"internal error: {type(exc).__name__}: {exc}")


def create_app(served: ServedModel, options: Options | None = None,
               on_ready: Callable[[ServedModel], Any] | None = None,
               on_failure: Callable[[str], Any] | None = None) -> Starlette:
    """The server's ASGI app for a prepared model; it warms the model up at startup and answers
    /readyz with 200 once that is done (`on_ready` is called then; `on_failure(message)` instead
    when warm-up fails)."""
    server = Server(served, options or Options(), on_ready, on_failure)
    routes = [
        Route("/", server.index), Route("/healthz", server.healthz), Route("/readyz", server.readyz),
        Route("/metrics", server.metrics_route), Route("/openapi.json", server.openapi),
        Route("/v1/model", server.model), Route("/v1/classify", server.classify, methods=["POST"]),
        Route("/v1/embed", server.embed, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=server.lifespan,
                    middleware=[Middleware(MetricsMiddleware, metrics=server.metrics)],
                    exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.state.server = server
    return app
