"""Datasets: a folder per class (ImageFolder), scikit-learn's digits, and train/val folder lookup."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import EffnetError
from .images import ImageLoadError, is_image_file, load_image, natural_key

SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "validation", "valid")}
# How many other samples a corrupt image may be replaced by before giving up.
_MAX_REPLACEMENTS = 10


class DatasetError(EffnetError, ValueError):
    """A dataset folder or split that cannot be used."""


def find_split_dir(data_dir: str | os.PathLike, split: str) -> Path:
    """The folder of `split` ('train' or 'val') inside `data_dir`: train/ (or training/), val/
    (or validation/, valid/)."""
    if split not in SPLIT_DIRS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_DIRS)}; got {split!r}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"data folder {str(root)!r} does not exist")
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise DatasetError(f"no {split} folder in {str(root)!r}: expected one of "
                       f"{', '.join(n + '/' for n in SPLIT_DIRS[split])}; found "
                       f"{', '.join(present) if present else 'no sub-folders'}")


class ImageFolder(Dataset):
    """Images in `root/<class>/...` (searched recursively), labelled by class folder.

    `.classes` are the folder names in natural order, `.class_to_idx` maps them to labels,
    `.samples` lists (path, label). A file that fails to load during iteration is reported once
    (a warning naming it) and replaced by the next readable sample, so one bad file does not stop
    a training run.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"image folder {str(self.root)!r} does not exist")
        self.classes = sorted((p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                              key=natural_key)
        if not self.classes:
            raise DatasetError(f"{str(self.root)!r} has no class sub-folders (expected ROOT/<class>/<image>)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for cls in self.classes:
            files = []
            for dirpath, dirs, names in os.walk(self.root / cls):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                files.extend(Path(dirpath) / n for n in names if is_image_file(Path(n)))
            files.sort(key=lambda f: natural_key(str(f)))
            self.samples.extend((f, self.class_to_idx[cls]) for f in files)
        if not self.samples:
            raise DatasetError(f"no images found under {str(self.root)!r} "
                               f"(classes: {', '.join(self.classes[:10])})")
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.bad_files: set[Path] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for step in range(_MAX_REPLACEMENTS + 1):
            path, target = self.samples[(index + step) % len(self.samples)]
            if path in self.bad_files:
                continue
            try:
                img = load_image(path)
            except ImageLoadError as e:
                self.bad_files.add(path)
                warnings.warn(f"skipping unreadable image, using another sample instead: {e}", stacklevel=2)
                continue
            return (self.transform(img) if self.transform is not None else img), target
        raise DatasetError(f"{_MAX_REPLACEMENTS + 1} consecutive unreadable images from "
                           f"{self.samples[index % len(self.samples)][0]} on; is {str(self.root)!r} damaged?")


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise EffnetError("DigitsDataset needs scikit-learn: pip install 'effnet[train]' "
                          "(or pip install scikit-learn)") from None
    digits = load_digits()
    return digits.images, digits.target


class DigitsDataset(Dataset):
    """scikit-learn's 1,797 8x8 handwritten digits as PIL RGB images (grey 0-255), labels 0-9.

    The split is stratified and deterministic: per class, a `seed`-shuffled `val_fraction` goes
    to 'val', the rest to 'train'.
    """

    def __init__(self, split: str = "train", transform: Callable[[Image.Image], Any] | None = None,
                 val_fraction: float = 0.2, seed: int = 0) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val'; got {split!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
        images, targets = _load_digits()
        rng = np.random.default_rng(seed)
        val_idx = []
        for c in np.unique(targets):
            idx = np.flatnonzero(targets == c)
            val_idx.extend(rng.permutation(idx)[:int(round(len(idx) * val_fraction))].tolist())
        in_val = np.zeros(len(targets), dtype=bool)
        in_val[val_idx] = True
        keep = np.flatnonzero(in_val if split == "val" else ~in_val)
        self.indices = keep.tolist()  # positions in scikit-learn's array, for reproducing the split
        # 0..16 intensities -> 0..255 grey
        self.images = np.rint(images[keep] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        self.targets = targets[keep].astype(np.int64).tolist()
        self.classes = [str(i) for i in range(10)]
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index], "L").convert("RGB")
        return (self.transform(img) if self.transform is not None else img), self.targets[index]
