"""`effnet serve`: an HTTP service for one model, with dynamic batching, metrics and a web page.

Needs the `serve` extra (Starlette, uvicorn, python-multipart): `pip install 'effnet[serve]'`.

    from effnet.serve import Options, create_app, load, prepare
    served = prepare(load(args), dtype="fp32", max_batch=16)
    app = create_app(served, Options(max_batch=16))  # any ASGI server runs it
"""

from typing import Any

from .engine import DTYPES, Loaded, ServedModel, load, prepare


def __getattr__(name: str) -> Any:
    # the web app needs the serve extra: imported on first use, so the base install's `effnet` (whose
    # parser reads DTYPES from the engine) never imports Starlette
    if name in ("Options", "create_app"):
        from . import app
        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["DTYPES", "Loaded", "Options", "ServedModel", "create_app", "load", "prepare"]
