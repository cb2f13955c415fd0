"""Loading real-world image files as RGB, finding images in folders, and ImageNet class names."""

from __future__ import annotations

import os
import re
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps

from ..errors import EffnetError, first_line

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm", ".pnm"})
# Pillow's own default limit (about 0.25 GB of 24-bit pixels): larger images are refused unless the
# caller raises the limit for files they trust.
DEFAULT_MAX_PIXELS = 89_478_485
_PIL_LIMIT_LOCK = threading.Lock()


class ImageLoadError(EffnetError, OSError):
    """An image file that cannot be read (missing, empty, truncated, not an image, too large)."""


def natural_key(text: str) -> list:
    """Sort key ordering 'img2' before 'img10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _on_white(img: Image.Image) -> Image.Image:
    """Composite an image with alpha onto white, so transparent areas do not turn black."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float greyscale to 8-bit RGB, scaled rather than clipped."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        peak = float(arr.max()) if arr.size else 0.0
        arr = arr * 255.0 if peak <= 1.0 else arr
    elif img.mode.startswith("I;16") or float(arr.max(initial=0)) > 255:
        arr = arr / 257.0  # 0..65535 -> 0..255
    grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB: transparency on white, CMYK and 16-bit converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        return _on_white(img)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _high_bit_depth_to_rgb(img)
    return img.convert("RGB")


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open lazily (header only) with Pillow's bomb check set to our limit."""
    with warnings.catch_warnings():
        # our own size check below replaces Pillow's warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if max_pixels <= DEFAULT_MAX_PIXELS:
            return Image.open(path)
        with _PIL_LIMIT_LOCK:  # a larger caller limit needs Pillow's global raised for this open
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
            try:
                return Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved


def _bomb_message(path: Path, size: str, max_pixels: int) -> str:
    return (f"{path}: {size} exceeds the limit of {max_pixels:,} pixels (possible decompression bomb); "
            "if the file is trusted, raise the limit (load_image(..., max_pixels=N))")


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image with its EXIF orientation applied.

    Greyscale, palette, RGBA/LA (composited on white), CMYK and 16-bit images are converted.
    Raises `ImageLoadError` naming the file when it is missing, empty, truncated, not an image,
    or larger than `max_pixels` pixels.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise ImageLoadError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{path}: empty file")
        try:
            img = _open(path, max_pixels)
        except Image.DecompressionBombError as e:
            size = re.search(r"\((\d+) pixels\)", str(e))
            raise ImageLoadError(_bomb_message(path, f"{int(size.group(1)):,} pixels" if size else "the image",
                                               max_pixels)) from None
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageLoadError(_bomb_message(path, f"{w}x{h} = {w * h:,} pixels", max_pixels))
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageLoadError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        detail = first_line(e, type(e).__name__)
        if "truncated" in detail or isinstance(e, EOFError):
            detail = f"truncated or damaged image data ({detail})"
        raise ImageLoadError(f"{path}: cannot read image: {detail}") from None
    except Exception as e:  # malformed files can make a decoder raise anything; never crash a run on one
        raise ImageLoadError(f"{path}: cannot read image: {type(e).__name__}: {e}") from None


def is_image_file(path: Path) -> bool:
    """Whether a file name has an image extension (and is not a hidden file)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _walk_images(folder: Path) -> list[Path]:
    """Image files under `folder`, skipping hidden folders, in natural order."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files.extend(Path(root) / n for n in names if is_image_file(Path(n)))
    return sorted(files, key=lambda f: [natural_key(part) for part in f.relative_to(folder).parts])


def find_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files among `paths`: files are kept as given (whatever their extension), folders are
    searched recursively for image extensions. Natural-sorted within each folder, duplicates dropped.

    Raises `ImageLoadError` listing the paths that do not exist.
    """
    found: list[Path] = []
    missing: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found.extend(_walk_images(p))
        elif p.exists():
            found.append(p)
        else:
            missing.append(str(p))
    if missing:
        raise ImageLoadError(f"no such file or folder: {', '.join(missing)}")
    seen: set[Path] = set()
    return [f for f in found if not (f in seen or seen.add(f))]


@dataclass(frozen=True)
class ImageNetClass:
    """One ImageNet-1k class: its index, WordNet synset id and synonyms (first is the short name)."""

    index: int
    synset: str
    lemmas: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.lemmas[0]


@lru_cache(maxsize=1)
def imagenet_class_table() -> tuple[ImageNetClass, ...]:
    """All 1000 ImageNet-1k classes in model-output order (index, synset, lemmas)."""
    text = resources.files("effnet.data").joinpath("imagenet1k_classes.tsv").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines()[1:]:
        if line.strip():
            index, synset, lemmas = line.split("\t")
            rows.append(ImageNetClass(int(index), synset, tuple(s.strip() for s in lemmas.split(","))))
    return tuple(rows)


def imagenet_class_names() -> list[str]:
    """The short name (first lemma) of each ImageNet-1k class: 'tench', 'goldfish', ..."""
    return [c.name for c in imagenet_class_table()]
