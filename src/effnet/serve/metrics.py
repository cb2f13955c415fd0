"""Prometheus metrics of the server, in the text exposition format (no client library needed)."""

from __future__ import annotations

import threading
import time
from typing import Any, Awaitable, Callable, Iterable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative-bucket histogram, as Prometheus expects."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * len(self.bounds)
        self.total, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_num(b)}"}} {c}' for b, c in zip(self.bounds, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {self.total:.6f}", f"{name}_count{braces} {self.count}"]
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class Metrics:
    """Request, error, batch and queue metrics; safe to update from the model thread."""

    def __init__(self, routes: Iterable[str], queue_depth: Callable[[], int] = lambda: 0,
                 ready: Callable[[], bool] = lambda: False) -> None:
        self.routes = frozenset(routes)
        self.queue_depth, self.ready = queue_depth, ready
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)
        self.images = 0
        self.in_flight = 0

    def route_of(self, path: str) -> str:
        """The label for a path: the route itself, or "other" so stray paths cannot grow the label set."""
        return path if path in self.routes else "other"

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        with self._lock:
            key = (route, method, code)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.batch_seconds.observe(seconds)
            self.images += size

    def render(self) -> str:
        """The whole exposition, one metric family after another."""
        with self._lock:
            lines = ["# HELP effnet_requests_total HTTP requests by route, method and status code.",
                     "# TYPE effnet_requests_total counter"]
            lines += [f'effnet_requests_total{{route="{r}",method="{m}",code="{c}"}} {n}'
                      for (r, m, c), n in sorted(self.requests.items())]
            lines += ["# HELP effnet_request_errors_total HTTP requests answered with a 4xx or 5xx code.",
                      "# TYPE effnet_request_errors_total counter"]
            lines += [f'effnet_request_errors_total{{route="{r}",method="{m}",code="{c}"}} {n}'
                      for (r, m, c), n in sorted(self.requests.items()) if c >= 400]
            lines += ["# HELP effnet_request_duration_seconds Time from request to response, by route.",
                      "# TYPE effnet_request_duration_seconds histogram"]
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines("effnet_request_duration_seconds", f'route="{route}"')
            lines += ["# HELP effnet_batch_size Images per forward pass.", "# TYPE effnet_batch_size histogram"]
            lines += self.batch_size.lines("effnet_batch_size")
            lines += ["# HELP effnet_batch_duration_seconds Model time per forward pass.",
                      "# TYPE effnet_batch_duration_seconds histogram"]
            lines += self.batch_seconds.lines("effnet_batch_duration_seconds")
            lines += ["# HELP effnet_images_total Images run through the model.", "# TYPE effnet_images_total counter",
                      f"effnet_images_total {self.images}",
                      "# HELP effnet_queue_depth Images waiting for a batch.", "# TYPE effnet_queue_depth gauge",
                      f"effnet_queue_depth {self.queue_depth()}",
                      "# HELP effnet_requests_in_flight Requests being handled now.",
                      "# TYPE effnet_requests_in_flight gauge", f"effnet_requests_in_flight {self.in_flight}",
                      "# HELP effnet_ready 1 once the model is warmed up and the server takes work.",
                      "# TYPE effnet_ready gauge", f"effnet_ready {int(self.ready())}"]
        return "\n".join(lines) + "\n"


Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class MetricsMiddleware:
    """Counts every HTTP request by route, method and the status code actually sent, and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.observe_request(self.metrics.route_of(scope["path"]), scope["method"], status,
                                         time.perf_counter() - start)
