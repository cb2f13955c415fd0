"""`effnet predict`: top-k classes for image files and folders, as text, JSON or CSV.

The batched image-reading helpers here are shared with `effnet embed`; models come from effnet.loading.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..data import DEFAULT_MAX_PIXELS, ImageLoadError, find_images, load_image
from .. import progress
from ..errors import EffnetError
from ..progress import echo
from ..loading import LoadedModel, add_model_arguments, load_from_args
from ..validators import COMMON, arg_type

HELP = "classify images (files or folders): top-k class names with probabilities"
_LOG = logging.getLogger(__name__)
PROGRESS_MIN_IMAGES = 20  # fewer images than this finish too quickly for a progress bar to help


def add_image_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by predict and embed: inputs, the model (effnet.loading), batching."""
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    add_model_arguments(p)
    p.add_argument("--batch-size", "-b", type=arg_type(COMMON["batch_size"]), default=16, help="images per forward pass (default 16)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images as possible decompression bombs (default {DEFAULT_MAX_PIXELS:,})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_arguments(p)
    p.add_argument("--topk", "-k", type=int, default=5, help="classes reported per image (default 5)")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format")
    p.add_argument("--class-names", metavar="FILE", help="text file with one class name per line")


def load_for_images(args: argparse.Namespace) -> LoadedModel:
    """The model for predict/embed, after checking the batching flags."""
    if args.batch_size < 1:
        raise EffnetError(f"--batch-size must be >= 1; got {args.batch_size}")
    return load_from_args(args)


def collect_inputs(paths: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Images found under `paths`, and (path, error) for paths that do not exist.

    Raises EffnetError (exit 2) when there is nothing to process at all.
    """
    present = [p for p in paths if Path(p).exists()]
    missing = [(p, f"{p}: no such file or folder") for p in paths if not Path(p).exists()]
    images = find_images(present)
    if not images:
        where = ", ".join(paths)
        raise EffnetError(f"no images found in {where}" + (" (paths do not exist)" if missing else ""))
    return images, missing


@dataclass
class Item:
    """One input: its path, and either its preprocessed tensor or why it failed."""

    path: Path
    tensor: Tensor | None = None
    error: str | None = None


def iter_batches(images: Sequence[Path], transform: Callable[[Any], Tensor], batch_size: int,
                 max_pixels: int, progress: Callable[[int], None] | None = None) -> Iterator[list[Item]]:
    """Load and preprocess images in input order, `batch_size` at a time (decoding in threads)."""
    def prepare(path: Path) -> Item:
        try:
            return Item(path, tensor=transform(load_image(path, max_pixels=max_pixels)))
        except ImageLoadError as e:
            return Item(path, error=str(e))
        except Exception as e:  # a transform failing on an odd image must not end the run
            return Item(path, error=f"{path}: cannot preprocess image: {type(e).__name__}: {e}")

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(images), batch_size):
            items = list(pool.map(prepare, images[start:start + batch_size]))
            if progress is not None:
                progress(start + len(items))
            yield items


def run_model(loaded: LoadedModel, items: list[Item], fn: Callable[[nn.Module, Tensor], Tensor]) -> Tensor | None:
    """`fn(model, batch)` on the items that loaded; None when none did."""
    tensors = [it.tensor for it in items if it.tensor is not None]
    if not tensors:
        return None
    with torch.inference_mode():
        return fn(loaded.model, torch.stack(tensors).to(loaded.device)).float().cpu()


def progress_printer(total: int, label: str) -> Callable[[int], None] | None:
    """A progress bar (effnet.progress: on a terminal only) fed the count of images read so far, or
    None for too few images to need one."""
    if total < PROGRESS_MIN_IMAGES or not progress.enabled():
        return None
    pbar = progress.bar(total=total, desc=label, unit="img")

    def show(done: int) -> None:
        pbar.update(done - pbar.n)
        if done >= total:
            pbar.close()
    return show


def _read_class_names(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EffnetError(f"--class-names {path}: cannot read: {e}") from None
    return [line.strip() for line in lines if line.strip()]


def class_labels(args: argparse.Namespace, loaded: LoadedModel) -> list[str]:
    """Label per output: --class-names file, else the run's or weights' names (ImageNet's for the
    published weights), else the index."""
    n = int(getattr(loaded.model, "num_classes", 0))
    if n <= 0:
        raise EffnetError(f"{loaded.name} has no classifier (num_classes=0); use `effnet embed` for features")
    source, names = "", loaded.label_names
    if args.class_names:
        source, names = f"--class-names {args.class_names}", _read_class_names(args.class_names)
    if names is None:
        return [str(i) for i in range(n)]
    if len(names) != n:
        raise EffnetError(f"{source} lists {len(names)} class names but the model has {n} outputs")
    return names


class Writer:
    """Streams results to stdout in the chosen format, whole lines at a time (through progress.echo,
    so a progress bar on the same terminal is stepped around, never written into)."""

    def __init__(self, fmt: str) -> None:
        self.fmt, self.count = fmt, 0
        self.pending: str | None = None  # JSON: the last item, printed once we know whether a comma follows
        if fmt == "csv":
            self._csv_row(["path", "rank", "index", "label", "prob", "error"])

    def _csv_row(self, row: list[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row)
        echo(buf.getvalue(), end="")

    def result(self, path: Path, topk: list[dict[str, Any]]) -> None:
        if self.fmt == "text":
            echo(str(path))
            for t in topk:
                echo(f"  {t['prob']:7.4f}  {t['label']}  [{t['index']}]")
        elif self.fmt == "csv":
            for rank, t in enumerate(topk, 1):
                self._csv_row([str(path), rank, t["index"], t["label"], f"{t['prob']:.6f}", ""])
        else:
            self._json({"path": str(path), "topk": topk})

    def failure(self, path: str, error: str) -> None:
        _LOG.warning(f"skipped {error}")
        if self.fmt == "csv":
            self._csv_row([path, "", "", "", "", error])
        elif self.fmt == "json":
            self._json({"path": path, "error": error})

    def _json(self, obj: dict[str, Any]) -> None:
        echo("[" if self.pending is None else self.pending + ",")
        self.pending = "  " + json.dumps(obj)
        self.count += 1

    def close(self) -> None:
        if self.fmt == "json":
            echo("[]" if self.pending is None else f"{self.pending}\n]")


def run(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise EffnetError(f"--topk must be >= 1; got {args.topk}")
    images, missing = collect_inputs(args.paths)
    loaded = load_for_images(args)
    labels = class_labels(args, loaded)
    k = min(args.topk, len(labels))
    out = Writer(args.format)
    failed = 0
    for path, error in missing:
        out.failure(path, error)
        failed += 1
    progress = progress_printer(len(images), "predict")
    for items in iter_batches(images, loaded.transform, args.batch_size, args.max_pixels, progress):
        logits = run_model(loaded, items, lambda m, x: m(x))
        probs = logits.softmax(dim=-1) if logits is not None else None
        row = 0
        for it in items:
            if it.error is not None:
                out.failure(str(it.path), it.error)
                failed += 1
                continue
            p, idx = probs[row].topk(k)
            row += 1
            out.result(it.path, [{"label": labels[i], "index": i, "prob": round(float(q), 6)}
                                 for q, i in zip(p.tolist(), idx.tolist())])
    out.close()
    if failed:
        total = len(images) + len(missing)
        _LOG.warning(f"{failed} of {total} input(s) failed")
    return 1 if failed else 0
