"""Reading images out of requests (multipart, raw bytes, base64 in JSON) and decoding them safely.

Every refusal is a `RequestError` carrying the HTTP status and a one-line message naming the
upload or field at fault; the server turns it into `{"error": message}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from ..data.images import to_rgb
from ..errors import first_line


class RequestError(Exception):
    """A request the server refuses: `status` is the HTTP code, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """One image as sent: the name it is reported under ("path" in the answer) and its bytes."""

    name: str
    data: bytes


@dataclass
class Limits:
    """Request limits: body bytes, images per request, pixels per image."""

    max_bytes: int
    max_images: int
    max_pixels: int


IMAGE_FIELDS = ("image", "images", "file", "files")
ACCEPTED = "multipart/form-data (field 'image'), application/json ({\"images\": [BASE64, ...]}) or raw image bytes"


async def read_body(request: Any, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `max_bytes` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"request body of {int(declared):,} bytes is over the limit of {max_bytes:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"request body is over the limit of {max_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _b64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise RequestError(400, f"{where}: expected a base64 string, got {type(text).__name__}")
    text = re.sub(r"^data:[^,]*,", "", text.strip())  # accept data: URLs as browsers write them
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where}: not valid base64") from None


def _from_json(body: bytes) -> tuple[list[Upload], Any]:
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RequestError(400, 'JSON body must be an object such as {"images": [BASE64, ...], "top_k": 5}')
    items = obj.get("images", [obj["image"]] if "image" in obj else None)
    if not isinstance(items, list):
        raise RequestError(400, 'JSON body needs "images": a list of base64 strings (or {"name", "data"} objects)')
    uploads = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            name = str(item.get("name") or f"image{i}")
            uploads.append(Upload(name, _b64(item.get("data"), f"images[{i}].data")))
        else:
            uploads.append(Upload(f"image{i}", _b64(item, f"images[{i}]")))
    return uploads, obj.get("top_k")


async def _from_multipart(request: Any, body: bytes, max_images: int) -> tuple[list[Upload], Any]:
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        form = await Request(request.scope, replay).form(max_files=max_images + 1, max_fields=100,
                                                         max_part_size=len(body) + 1)
    except Exception as e:  # starlette reports malformed forms with its own exception types
        if "too many files" in str(e).lower():
            raise RequestError(413, f"more than {max_images} images in one request; the limit is {max_images}"
                               ) from None
        raise RequestError(400, f"malformed multipart form: {e}") from None
    uploads = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in IMAGE_FIELDS:
                raise RequestError(400, f"form field {key!r}: send images as field 'image'")
            uploads.append(Upload(value.filename or f"image{len(uploads)}", await value.read()))
    top_k = form.get("top_k")
    await form.close()
    return uploads, top_k


async def read_uploads(request: Any, limits: Limits) -> tuple[list[Upload], Any]:
    """The images of a request and the `top_k` its body carries (None when it carries none)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, limits.max_bytes)
    if ctype == "multipart/form-data":
        uploads, top_k = await _from_multipart(request, body, limits.max_images)
    elif ctype == "application/json":
        uploads, top_k = await asyncio.to_thread(_from_json, body)  # megabytes of base64: not on the event loop
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        uploads, top_k = ([Upload(request.headers.get("x-filename") or "image", body)] if body else []), None
    else:
        raise RequestError(415, f"unsupported Content-Type {ctype or '(none)'!r}; send {ACCEPTED}")
    if not uploads:
        raise RequestError(400, f"no image in the request; send {ACCEPTED}")
    if len(uploads) > limits.max_images:
        raise RequestError(413, f"{len(uploads)} images in one request; the limit is {limits.max_images}")
    return uploads, top_k


def decode(upload: Upload, max_pixels: int) -> Image.Image:
    """The upload as 8-bit RGB with EXIF orientation applied; RequestError 415 for a non-image,
    400 for a decompression bomb or damaged data."""
    if not upload.data:
        raise RequestError(400, f"{upload.name}: empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own check below is stricter
            img = Image.open(io.BytesIO(upload.data))
    except Image.DecompressionBombError as e:
        raise RequestError(400, f"{upload.name}: image too large, possible decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        raise RequestError(415, f"{upload.name}: not an image (or a format Pillow cannot read)") from None
    except Exception as e:
        raise RequestError(400, f"{upload.name}: cannot read image: {type(e).__name__}: {e}") from None
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise RequestError(400, f"{upload.name}: {w}x{h} = {w * h:,} pixels is over the limit of "
                                    f"{max_pixels:,} (possible decompression bomb)")
        try:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
        except Exception as e:  # decoders raise many types on damaged data; each is the upload's fault
            detail = first_line(e, type(e).__name__)
            raise RequestError(400, f"{upload.name}: damaged image data ({detail})") from None


def parse_top_k(value: Any, num_labels: int, default: int = 5) -> int:
    """`top_k` from the query or body: an integer >= 1, clipped to the number of labels."""
    if value is None or value == "":
        return min(default, num_labels)
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"top_k must be an integer >= 1; got {value!r}") from None
    if isinstance(value, float) or isinstance(value, bool) or k < 1:
        raise RequestError(400, f"top_k must be an integer >= 1; got {value!r}")
    return min(k, num_labels)
