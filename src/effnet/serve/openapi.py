"""The OpenAPI 3.1 description of the server's routes (`GET /openapi.json`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Options
    from .engine import ServedModel

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_TOPK = {"type": "object", "properties": {"label": {"type": "string"}, "index": {"type": "integer"},
                                          "prob": {"type": "number"}}}
_CLASSIFIED = {"type": "object", "description": "one entry per image, in request order, as `effnet predict "
               "--format json` writes them; an image that could not be read has `error` instead of `topk`",
               "properties": {"path": {"type": "string"}, "topk": {"type": "array", "items": _TOPK},
                              "error": {"type": "string"}}}
_EMBEDDED = {"type": "object", "properties": {"path": {"type": "string"}, "error": {"type": "string"},
                                              "embedding": {"type": "array", "items": {"type": "number"}}}}


def _body(max_images: int) -> dict[str, Any]:
    return {"required": True, "description": f"up to {max_images} images",
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "top_k": {"type": "integer"}}}},
                "application/json": {"schema": {"type": "object", "properties": {
                    "images": {"type": "array", "items": {"oneOf": [
                        {"type": "string", "contentEncoding": "base64"},
                        {"type": "object", "properties": {"name": {"type": "string"},
                                                          "data": {"type": "string", "contentEncoding": "base64"}}}]}},
                    "top_k": {"type": "integer", "minimum": 1}}}},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


def _errors(options: Options) -> dict[str, Any]:
    def e(text: str) -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {"schema": _ERROR}}}
    return {"400": e("bad request: damaged image, decompression bomb, bad base64/JSON, bad top_k"),
            "413": e(f"body over {options.max_bytes:,} bytes or more than {options.max_images} images"),
            "415": e("not an image, or an unsupported Content-Type"),
            "503": e("queue full, warming up or shutting down (see Retry-After)"),
            "504": e(f"no answer within {options.timeout_s:g} s")}


def _ok(schema: dict[str, Any], text: str, media: str = "application/json") -> dict[str, Any]:
    return {"200": {"description": text, "content": {media: {"schema": schema}}}}


def openapi_spec(served: ServedModel, options: Options) -> dict[str, Any]:
    """The description for this server's model and limits."""
    from .. import __version__
    top_k = [{"name": "top_k", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
              "description": "classes per image (default 5)"}]
    return {
        "openapi": "3.1.0",
        "info": {"title": f"effnet serve: {served.name}", "version": __version__,
                 "description": "Image classification and embeddings with dynamic batching."},
        "paths": {
            "/v1/classify": {"post": {"summary": "top-k classes of one or more images", "parameters": top_k,
                                      "requestBody": _body(options.max_images),
                                      "responses": {**_ok({"type": "array", "items": _CLASSIFIED}, "results"),
                                                    **_errors(options)}}},
            "/v1/embed": {"post": {"summary": "pooled features (pre-logits) of one or more images",
                                   "requestBody": _body(options.max_images),
                                   "responses": {**_ok({"type": "array", "items": _EMBEDDED}, "results"),
                                                 **_errors(options)}}},
            "/v1/model": {"get": {"summary": "model card: name, label names, input size, mean/std, dtype, version",
                                  "responses": _ok({"type": "object"}, "model card")}},
            "/healthz": {"get": {"summary": "the process is alive", "responses": _ok({"type": "object"}, "alive")}},
            "/readyz": {"get": {"summary": "the model is warmed up and takes work",
                                "responses": {**_ok({"type": "object"}, "ready"),
                                              "503": {"description": "warming up"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": _ok({"type": "string"}, "text exposition format", "text/plain")}},
            "/": {"get": {"summary": "a web page to try the model",
                          "responses": _ok({"type": "string"}, "HTML page", "text/html")}},
            "/openapi.json": {"get": {"summary": "this description", "responses": _ok({"type": "object"}, "OpenAPI")}},
        },
    }
