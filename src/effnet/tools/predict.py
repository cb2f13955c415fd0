"""`effnet predict`: top-k classes for image files and folders, as text, JSON or CSV.

The model-loading and batched image-reading helpers here are shared with `effnet embed`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..checkpoint import read_state_dict
from ..data import (DEFAULT_MAX_PIXELS, ImageLoadError, create_transform, find_images, imagenet_class_names,
                    load_image, resolve_model_data_config)
from ..errors import EffnetError
from ..registry import create_model, load_weights

HELP = "classify images (files or folders): top-k class names with probabilities"
PROGRESS_MIN_IMAGES = 20  # fewer images than this finish too quickly for a progress bar to help


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by predict and embed: model, weights, device, batching, inputs."""
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p.add_argument("--model", "-m", required=True, help="model name (see `effnet list`) or local-dir:DIR")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", help="use the published ImageNet weights")
    weights.add_argument("--checkpoint", metavar="FILE", help="weights file (.safetensors, .pth, training checkpoint)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the checkpoint's)")
    p.add_argument("--batch-size", "-b", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--img-size", type=int, help="override the model's input size (square)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images as possible decompression bombs (default {DEFAULT_MAX_PIXELS:,})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--topk", "-k", type=int, default=5, help="classes reported per image (default 5)")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format")
    p.add_argument("--class-names", metavar="FILE", help="text file with one class name per line")


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EffnetError(f"unknown device {name!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EffnetError("--device cuda: CUDA is not available on this machine (use --device cpu)")
    return device


def _checkpoint_class_names(path: Path) -> list[str] | None:
    """Class names a training checkpoint stores under 'class_names' (dict key or safetensors metadata)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), "pt") as f:
                names = json.loads((f.metadata() or {}).get("class_names", "null"))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            names = obj.get("class_names") if isinstance(obj, dict) else None
    except Exception:  # the weights were already read successfully; names are optional extras
        return None
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return list(names)
    return None


@dataclass
class LoadedModel:
    """A model ready for inference, its preprocessing, and any class names its checkpoint carries."""

    model: nn.Module
    transform: Callable[[Any], Tensor]
    device: torch.device
    class_names: list[str] | None


def load_model(args: argparse.Namespace) -> LoadedModel:
    """Build the model the arguments name, load its weights, and resolve its preprocessing."""
    if not args.pretrained and not args.checkpoint and not args.model.startswith("local-dir:"):
        raise EffnetError("no weights: pass --pretrained or --checkpoint FILE (a random model predicts nonsense)")
    if args.batch_size < 1:
        raise EffnetError(f"--batch-size must be >= 1; got {args.batch_size}")
    if args.img_size is not None and args.img_size < 8:
        raise EffnetError(f"--img-size must be >= 8; got {args.img_size}")
    device = _device(args.device)
    num_classes, state_dict, names = args.num_classes, None, None
    if args.checkpoint:
        path = Path(args.checkpoint)
        state_dict = read_state_dict(path)
        if num_classes is None and "classifier.weight" in state_dict:
            num_classes = int(state_dict["classifier.weight"].shape[0])
        names = _checkpoint_class_names(path)
    model = create_model(args.model, pretrained=args.pretrained, num_classes=num_classes)
    if state_dict is not None:
        load_weights(model, state_dict, str(args.checkpoint))
    model.eval().to(device)
    overrides = {"img_size": args.img_size} if args.img_size else None
    cfg = resolve_model_data_config(model, args=overrides)
    transform = create_transform(cfg["input_size"], interpolation=cfg["interpolation"], mean=cfg["mean"],
                                 std=cfg["std"], crop_pct=cfg["crop_pct"], crop_mode=cfg["crop_mode"])
    return LoadedModel(model, transform, device, names)


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
    """A stderr progress bar for many images when stderr is a terminal, else None."""
    if total < PROGRESS_MIN_IMAGES or not sys.stderr.isatty():
        return None

    def show(done: int) -> None:
        filled = int(30 * done / total)
        end = "\n" if done >= total else ""
        print(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end=end, file=sys.stderr,
              flush=True)
    return show


def _read_class_names(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EffnetError(f"--class-names {path}: cannot read: {e}") from None
    return [line.strip() for line in lines if line.strip()]


def class_labels(args: argparse.Namespace, loaded: LoadedModel) -> list[str]:
    """Label per output: --class-names file, else the checkpoint's names, else ImageNet's for 1000
    outputs, else the index."""
    n = int(getattr(loaded.model, "num_classes", 0))
    if n <= 0:
        raise EffnetError(f"{args.model} has no classifier (num_classes=0); use `effnet embed` for features")
    source, names = "", None
    if args.class_names:
        source, names = f"--class-names {args.class_names}", _read_class_names(args.class_names)
    elif loaded.class_names is not None:
        source, names = f"checkpoint {args.checkpoint}", loaded.class_names
    elif n == 1000:
        names = imagenet_class_names()
    if names is None:
        return [str(i) for i in range(n)]
    if len(names) != n:
        raise EffnetError(f"{source} lists {len(names)} class names but the model has {n} outputs")
    return names


class Writer:
    """Streams results to stdout in the chosen format."""

    def __init__(self, fmt: str) -> None:
        self.fmt, self.count = fmt, 0
        if fmt == "csv":
            self._csv_row(["path", "rank", "index", "label", "prob", "error"])
        elif fmt == "json":
            print("[", end="")

    def _csv_row(self, row: list[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row)
        print(buf.getvalue(), end="")

    def result(self, path: Path, topk: list[dict[str, Any]]) -> None:
        if self.fmt == "text":
            print(str(path))
            for t in topk:
                print(f"  {t['prob']:7.4f}  {t['label']}  [{t['index']}]")
        elif self.fmt == "csv":
            for rank, t in enumerate(topk, 1):
                self._csv_row([str(path), rank, t["index"], t["label"], f"{t['prob']:.6f}", ""])
        else:
            self._json({"path": str(path), "topk": topk})

    def failure(self, path: str, error: str) -> None:
        print(f"effnet predict: skipped {error}", file=sys.stderr)
        if self.fmt == "csv":
            self._csv_row([path, "", "", "", "", error])
        elif self.fmt == "json":
            self._json({"path": path, "error": error})

    def _json(self, obj: dict[str, Any]) -> None:
        print(("," if self.count else "") + "\n  " + json.dumps(obj), end="")
        self.count += 1

    def close(self) -> None:
        if self.fmt == "json":
            print("\n]" if self.count else "]")
        sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise EffnetError(f"--topk must be >= 1; got {args.topk}")
    images, missing = collect_inputs(args.paths)
    loaded = load_model(args)
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
        print(f"effnet predict: {failed} of {total} input(s) failed", file=sys.stderr)
    return 1 if failed else 0
