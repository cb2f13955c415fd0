"""`effnet embed`: pre-logits features of images, saved as a .npy matrix plus a paths list."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
from torch import Tensor, nn

from ..errors import EffnetError
from .predict import add_model_arguments, collect_inputs, iter_batches, load_model, progress_printer, run_model

HELP = "extract pre-logits features of images into a .npy file (one row per image)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--output", "-o", required=True, metavar="FILE.npy",
                   help="features file; the image paths go to FILE.paths.txt, one per line, in row order")


def paths_file(output: Path) -> Path:
    """feats.npy -> feats.paths.txt (next to it)."""
    stem = output.name[:-4] if output.name.endswith(".npy") else output.name
    return output.with_name(stem + ".paths.txt")


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temp file in the same folder, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def pre_logits(model: nn.Module, x: Tensor) -> Tensor:
    """Pooled features right before the classifier."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.is_dir():
        raise EffnetError(f"--output {output} is a folder; give a file name such as {output / 'feats.npy'}")
    if not output.parent.is_dir():
        raise EffnetError(f"--output {output}: folder {output.parent} does not exist")
    images, missing = collect_inputs(args.paths)
    loaded = load_model(args)
    if not hasattr(loaded.model, "forward_head"):
        raise EffnetError(f"{args.model} has no pooled head to take features from")
    failed = 0
    for _path, error in missing:
        print(f"effnet embed: skipped {error}", file=sys.stderr)
        failed += 1
    rows: list[np.ndarray] = []
    names: list[str] = []
    progress = progress_printer(len(images), "embed")
    for items in iter_batches(images, loaded.transform, args.batch_size, args.max_pixels, progress):
        feats = run_model(loaded, items, pre_logits)
        if feats is not None:
            rows.append(feats.numpy().astype(np.float32))
        for it in items:
            if it.error is not None:
                print(f"effnet embed: skipped {it.error}", file=sys.stderr)
                failed += 1
            else:
                names.append(str(it.path))
    width = int(getattr(loaded.model, "num_features", 0)) * int(getattr(loaded.model.global_pool, "feat_mult",
                                                                         lambda: 1)())
    matrix = np.concatenate(rows) if rows else np.zeros((0, width), dtype=np.float32)
    _atomic_write(output, lambda f: np.save(f, matrix))
    listing = paths_file(output)
    _atomic_write(listing, lambda f: f.write("".join(n + "\n" for n in names).encode("utf-8")))
    print(f"effnet embed: wrote {matrix.shape[0]} x {matrix.shape[1]} features to {output} "
          f"(paths in {listing})", file=sys.stderr)
    if failed:
        print(f"effnet embed: {failed} of {len(images) + len(missing)} input(s) failed", file=sys.stderr)
    return 1 if failed else 0
