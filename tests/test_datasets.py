"""ImageFolder, DigitsDataset and train/val folder lookup."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effnet import EffnetError
from effnet.data import DatasetError, DigitsDataset, ImageFolder, ImageLoadError, create_transform, find_split_dir


def make_folder(root: Path, layout: dict[str, int], size: tuple[int, int] = (12, 10)) -> None:
    for cls, n in layout.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", size, (10 * i, 100, 200)).save(root / cls / f"im{i}.png")


def test_image_folder_natural_sort_and_samples(tmp_path: Path) -> None:
    make_folder(tmp_path, {"class10": 1, "class2": 2, "Class1": 1})
    (tmp_path / "class2" / "nested").mkdir()
    Image.new("RGB", (5, 5)).save(tmp_path / "class2" / "nested" / "deep.jpg")
    (tmp_path / "class2" / "readme.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()
    ds = ImageFolder(tmp_path)
    assert ds.classes == ["Class1", "class2", "class10"]
    assert ds.class_to_idx == {"Class1": 0, "class2": 1, "class10": 2}
    assert len(ds) == 5 and ds.targets == [0, 1, 1, 1, 2]
    assert all(p.suffix in (".png", ".jpg") for p, _ in ds.samples)
    img, target = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and target == 0
    ds.transform = create_transform(8)
    x, _ = ds[1]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 8, 8)


def test_image_folder_never_replaces_a_corrupt_image(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a": 2, "b": 2})
    bad = tmp_path / "a" / "im1.png"
    bad.write_bytes(b"\x89PNG broken")
    ds = ImageFolder(tmp_path)
    with pytest.raises(ImageLoadError, match="im1.png"):
        ds[1]
    assert ds[2][1] == 1 and len(ds) == 4


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        ImageFolder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        ImageFolder(tmp_path)
    make_folder(tmp_path / "all_bad", {"x": 2})
    for p in (tmp_path / "all_bad" / "x").iterdir():
        p.write_bytes(b"")
    with pytest.raises(DatasetError, match="none of its 2 image"):
        ImageFolder(tmp_path / "all_bad")


@pytest.mark.parametrize("val_name", ["val", "validation", "valid"])
def test_find_split_dir(tmp_path: Path, val_name: str) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / val_name).mkdir()
    assert find_split_dir(tmp_path, "train") == tmp_path / "train"
    assert find_split_dir(str(tmp_path), "val") == tmp_path / val_name


def test_find_split_dir_errors(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(DatasetError, match=r"no val folder .*expected one of val/, validation/.*found test, train"):
        find_split_dir(tmp_path, "val")
    with pytest.raises(DatasetError, match="does not exist"):
        find_split_dir(tmp_path / "missing", "train")
    with pytest.raises(ValueError, match="split"):
        find_split_dir(tmp_path, "test")


def test_digits_dataset_split() -> None:
    pytest.importorskip("sklearn")
    train, val = DigitsDataset("train"), DigitsDataset("val")
    assert len(train) + len(val) == 1797 and train.classes == [str(i) for i in range(10)]
    counts = np.bincount(val.targets, minlength=10)
    totals = counts + np.bincount(train.targets, minlength=10)
    assert np.all(np.abs(counts - totals * 0.2) <= 1)  # stratified
    img, target = train[0]
    assert img.mode == "RGB" and img.size == (8, 8) and 0 <= target <= 9
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and (arr[..., 0] == arr[..., 1]).all()
    assert train.images.max() == 255 and train.images.min() == 0
    # deterministic per seed, different across seeds, train and val disjoint
    again = DigitsDataset("val")
    assert np.array_equal(again.images, val.images)
    other = DigitsDataset("val", seed=1)
    assert not np.array_equal(other.images, val.images)
    assert not set(train.indices) & set(val.indices)
    assert sorted(train.indices + val.indices) == list(range(1797))
    x, _ = DigitsDataset("val", transform=create_transform(16))[0]
    assert x.shape == (3, 16, 16)


def test_digits_dataset_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="split"):
        DigitsDataset("test")
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataset("train", val_fraction=1.5)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(EffnetError, match="scikit-learn"):
        DigitsDataset("train")
