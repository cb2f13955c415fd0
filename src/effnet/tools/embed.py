"""`effnet embed`: pre-logits features of images, saved as a .npy matrix plus a paths list."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch
from torch import Tensor, nn

from .. import outputs
from ..errors import EffnetError
from .predict import add_image_arguments, collect_inputs, iter_batches, load_for_images, progress_printer, run_model

_LOG = logging.getLogger(__name__)
HELP = "extract pre-logits features of images into a .npy file (one row per image)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_arguments(p)
    p.add_argument("--output", "-o", required=True, metavar="FILE.npy",
                   help="features file; the image paths go to FILE.paths.txt, one per line, in row order (a "
                        "name holding a line break or other control character is written as a JSON string), "
                        "and, when the model's class names are known, each image's top-1 class to FILE.labels.txt")


def paths_file(output: Path, kind: str = "paths") -> Path:
    """feats.npy -> feats.paths.txt (or feats.KIND.txt) next to it."""
    stem = output.name[:-4] if output.name.endswith(".npy") else output.name
    return output.with_name(f"{stem}.{kind}.txt")


def top1_labels(model: nn.Module, feats: Tensor, device: torch.device, labels: list[str]) -> list[str]:
    """The class name each row of pre-logits features is classified as."""
    with torch.inference_mode():
        return [labels[i] for i in model.get_classifier()(feats.to(device)).argmax(-1).tolist()]


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temp file in the same folder, then rename over `path` (effnet.outputs)."""
    outputs.write_stream(path, write)


def text_line(name: str) -> str:
    """One line of a paths or labels file: the name as it is, or, when it holds a line break, another
    control character or starts with a double quote, as a JSON string ("...") so that reading the file
    line by line (even with str.splitlines) stays aligned with the rows of the matrix."""
    if name.isprintable() and not name.startswith('"'):
        return name + "\n"
    return json.dumps(name) + "\n"


def lines_file(names: list[str]) -> bytes:
    """The bytes of a file of `text_line`s; names that are not valid UTF-8 keep their original bytes."""
    return b"".join(os.fsencode(text_line(n)) if n.isprintable() else text_line(n).encode("ascii") for n in names)


def pre_logits(model: nn.Module, x: Tensor) -> Tensor:
    """Pooled features right before the classifier."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def run(args: argparse.Namespace) -> int:
    images, missing = collect_inputs(args.paths)
    inputs = [*images, getattr(args, "checkpoint", None), getattr(args, "class_names", None)]
    output = outputs.check_output_file(args.output, inputs=inputs)
    for extra in ("paths", "labels"):
        outputs.check_output_file(paths_file(output, extra), flag=f"--output's {extra} file", inputs=inputs)
    loaded = load_for_images(args)
    if not hasattr(loaded.model, "forward_head"):
        raise EffnetError(f"{loaded.name} has no pooled head to take features from")
    failed = 0
    for _path, error in missing:
        _LOG.warning(f"skipped {error}")
        failed += 1
    rows: list[np.ndarray] = []
    names: list[str] = []
    labels = loaded.label_names if int(getattr(loaded.model, "num_classes", 0) or 0) > 0 else None
    predicted: list[str] = []
    progress = progress_printer(len(images), "embed")
    for items in iter_batches(images, loaded.transform, args.batch_size, args.max_pixels, progress):
        feats = run_model(loaded, items, pre_logits)
        if feats is not None:
            rows.append(feats.numpy().astype(np.float32))
            if labels is not None:
                predicted += top1_labels(loaded.model, feats, loaded.device, labels)
        for it in items:
            if it.error is not None:
                _LOG.warning(f"skipped {it.error}")
                failed += 1
            else:
                names.append(str(it.path))
    width = int(getattr(loaded.model, "num_features", 0)) * int(getattr(loaded.model.global_pool, "feat_mult",
                                                                         lambda: 1)())
    if not names and failed:
        raise outputs.OutputError(f"none of the {failed} input(s) could be read; {output} was not written"
                                  f"{' (the existing file is left as it was)' if output.exists() else ''}")
    matrix = np.concatenate(rows) if rows else np.zeros((0, width), dtype=np.float32)
    _atomic_write(output, lambda f: np.save(f, matrix))
    listing = paths_file(output)
    _atomic_write(listing, lambda f: f.write(lines_file(names)))
    where = f"paths in {listing}"
    if labels is not None:
        classes = paths_file(output, "labels")
        _atomic_write(classes, lambda f: f.write(lines_file(predicted)))
        where += f", top-1 classes ({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''}) in {classes}"
    _LOG.info(f"wrote {matrix.shape[0]} x {matrix.shape[1]} features to {output} ({where})")
    if failed:
        _LOG.warning(f"{failed} of {len(images) + len(missing)} input(s) failed")
    return 1 if failed else 0
