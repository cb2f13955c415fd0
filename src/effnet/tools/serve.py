"""`effnet serve`: classify and embed images over HTTP, with dynamic batching and a page to try it."""

from __future__ import annotations

import argparse
import errno
import logging
import socket
from typing import Any

from ..data.calibration import add_calibration_arguments, calibration_from_args, check_calibration_flags
from ..errors import EffnetError
from ..loading import add_model_arguments

_LOG = logging.getLogger(__name__)
HELP = "serve a model over HTTP: JSON API with dynamic batching, Prometheus metrics and a web page"
_EXTRA = ("starlette", "uvicorn", "python_multipart")


class WarmUpError(EffnetError):
    """The model failed its first batches (a runtime failure: exit status 1)."""

    exit_code = 1


def _dtypes() -> tuple[str, ...]:
    # effnet.serve.engine imports torch but not the serve extra, so --help works without it
    from ..serve.engine import DTYPES
    return tuple(DTYPES)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_or_run", nargs="?", metavar="MODEL_OR_RUN",
                   help="model name (tagged names too), hf-hub:ORG/NAME, local-dir:DIR, or a run folder "
                        "(or give --model / --checkpoint)")
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--dtype", choices=_dtypes(), default="fp32",
                   help="inference precision (default fp32); int8 is calibrated on --calib-dir/--calib-dataset "
                        "and always compiled (slow start)")
    p.add_argument("--max-batch", type=int, default=16, help="images per forward pass at most (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="longest an image waits for a batch to fill (default 5 ms)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model for each batch size before reporting ready (slow start)")
    p.add_argument("--queue-size", type=int, default=256,
                   help="images waiting at most; beyond that requests get 503 with Retry-After (default 256)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait for its answer (504)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body in MB (413; default 20)")
    p.add_argument("--max-images", type=int, default=64, help="images per request at most (default 64)")
    p.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="pixels per image at most; larger images are refused as possible decompression bombs")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the model (default: torch's choice; fewer when other work shares the CPU)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM/Ctrl-C, seconds to let requests in flight finish (default 30)")
    add_calibration_arguments(p)


def _check(args: argparse.Namespace) -> None:
    from ..data import DEFAULT_MAX_PIXELS
    checks = [("--port", args.port, 0 <= args.port <= 65535, "between 0 and 65535"),
              ("--max-batch", args.max_batch, args.max_batch >= 1, ">= 1"),
              ("--max-wait-ms", args.max_wait_ms, 0 <= args.max_wait_ms <= 10_000, "between 0 and 10000"),
              ("--queue-size", args.queue_size, args.queue_size >= max(args.max_batch, args.max_images),
               ">= --max-batch and --max-images (a request's images are queued together)"),
              ("--timeout", args.timeout, args.timeout > 0, "> 0"),
              ("--max-body-mb", args.max_body_mb, args.max_body_mb > 0, "> 0"),
              ("--max-images", args.max_images, args.max_images >= 1, ">= 1"),
              ("--max-pixels", args.max_pixels, 1 <= args.max_pixels <= DEFAULT_MAX_PIXELS,
               f"between 1 and {DEFAULT_MAX_PIXELS:,}"),
              ("--drain-timeout", args.drain_timeout, args.drain_timeout >= 0, ">= 0"),
              ("--threads", args.threads, args.threads is None or args.threads >= 1, ">= 1")]
    for flag, value, ok, rule in checks:
        if not ok:
            raise EffnetError(f"{flag} must be {rule}; got {value}")
    check_calibration_flags(args, int8=args.dtype == "int8")


def _model_spec(args: argparse.Namespace) -> None:
    """MODEL_OR_RUN is --model given positionally; giving both is ambiguous."""
    if args.model_or_run is not None:
        if args.model is not None and args.model != args.model_or_run:
            raise EffnetError(f"two models named: {args.model_or_run} and --model {args.model}; give one")
        args.model = args.model_or_run


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so a busy port fails at once."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except socket.gaierror as e:
        raise EffnetError(f"--host {host}: cannot resolve ({e.strerror})") from None
    except OSError as e:
        why = "address already in use" if e.errno == errno.EADDRINUSE else e.strerror
        raise EffnetError(f"--host {host} --port {port}: cannot listen: {why}") from None
    sock.set_inheritable(True)
    return sock


def _serve(args: argparse.Namespace, sock: socket.socket, url: str, uvicorn: Any) -> None:
    from ..serve import Options, create_app, load, prepare

    class _GracefulServer(uvicorn.Server):  # type: ignore[misc,name-defined]
        """uvicorn re-raises SIGTERM/SIGINT after its drain, ending the process by the signal; here the
        drain is the whole answer to it, so the command exits 0 after saying it stopped."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    how = args.dtype + (", compiling" if args.compile else "")
    _LOG.info("effnet serve: loading %s (%s)", args.model or args.checkpoint, how)
    loaded = load(args)
    calibration = calibration_from_args(args, loaded.data_cfg) if args.dtype == "int8" else None
    served = prepare(loaded, args.dtype, args.max_batch, compile=args.compile, calibration=calibration)
    options = Options(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.queue_size,
                      timeout_s=args.timeout, max_bytes=int(args.max_body_mb * 1024 * 1024),
                      max_images=args.max_images, max_pixels=args.max_pixels)

    def ready(model: object) -> None:
        # one line on stdout, for people and for scripts that wait for it
        print(f"effnet serve: ready at {url} ({served.name}, {served.dtype} on {served.device}, "
              f"max batch {args.max_batch}, warm-up {served.warmup_s:.1f} s)", flush=True)

    failed: list[str] = []

    def failure(message: str) -> None:
        failed.append(message)
        server.should_exit = True

    app = create_app(served, options, on_ready=ready, on_failure=failure)
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=args.drain_timeout)
    server = _GracefulServer(config)
    if served.buckets is not None:
        _LOG.info("effnet serve: compiling for batch sizes %s before taking requests (minutes on a small CPU); "
                  "/healthz answers meanwhile", ", ".join(map(str, served.buckets)))
    sock.listen(2048)
    server.run(sockets=[sock])  # uvicorn handles SIGTERM/SIGINT: stop accepting, finish in-flight, then exit
    if failed:
        raise WarmUpError(f"{failed[0]} (try a smaller --max-batch or --img-size)")
    _LOG.info("effnet serve: stopped")


def run(args: argparse.Namespace) -> int:
    from ..extras import require
    for module in _EXTRA:
        require(module, extra="serve", purpose="effnet serve")
    import uvicorn
    _check(args)
    _model_spec(args)
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    try:
        _serve(args, sock, url, uvicorn)
    finally:
        sock.close()
    return 0
