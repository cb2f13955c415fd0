"""Datasets: a folder per class (ImageFolder), scikit-learn's digits, and train/val folder lookup."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import EffnetError
from .images import ImageLoadError, is_image_file, load_image, natural_key

SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "validation", "valid")}


class DatasetError(EffnetError, ValueError):
    """A dataset folder or split that cannot be used."""


def find_split_dir(data_dir: str | os.PathLike, split: str) -> Path:
    """The folder of `split` ('train' or 'val') inside `data_dir`: train/ (or training/), val/
    (or validation/, valid/)."""
    if split not in SPLIT_DIRS:
        raise DatasetError(f"split must be one of {', '.join(SPLIT_DIRS)}; got {split!r}")
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
    `.samples` lists (path, label). A file that fails to load raises `ImageLoadError` naming it;
    it is never replaced by another sample (the training and validation loaders leave it out of its
    batch and count it). With `check_classes`, each class must have at least one readable image:
    its files are tried in order until one loads (one image per class for a healthy folder, so this
    stays cheap on large sets).
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 check_classes: bool = True) -> None:
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
        if check_classes:
            self._check_classes()

    def _check_classes(self) -> None:
        """Refuse a class that has no image, or whose every image is unreadable."""
        by_class: dict[int, list[Path]] = {i: [] for i in range(len(self.classes))}
        for path, target in self.samples:
            by_class[target].append(path)
        for target, files in by_class.items():
            where = f"class folder {str(self.root / self.classes[target])!r}"
            if not files:
                raise DatasetError(f"{where} has no images; remove it or add images")
            first_error = None
            for path in files:
                try:
                    load_image(path)
                    break
                except ImageLoadError as e:
                    first_error = first_error or str(e)
            else:
                raise DatasetError(f"{where}: none of its {len(files)} image(s) can be read (first: {first_error})")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        img = load_image(path)  # ImageLoadError names the file; the loaders count it and leave it out
        return (self.transform(img) if self.transform is not None else img), target


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from ..extras import require
    digits = require("sklearn.datasets", extra="digits", purpose="the digits dataset").load_digits()
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
