"""Careless and hostile data and weights: unreadable images are left out and counted (never replaced
by another sample), unusable class layouts, mismatched checkpoints and non-finite weights are one-line
errors. Each CLI case checks the exit status, the message (one line, no traceback) and that the files
the command read are unchanged (every file under the test's folder hashed before and after)."""

from __future__ import annotations

import csv
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import effnet
from effnet.checkpoint import read_state_dict
from effnet.data import ImageFolder, create_transform
from effnet.data.samples import SampleDataset, skip_collate
from effnet.errors import CheckpointError
from cli_support import assert_error, run_cli as cli, snapshot
from train_fixtures import TINY_FLAGS, TINY_MODEL, make_image_folder

VALIDATE = ["validate", "--model", TINY_MODEL, "--img-size", "32", "--batch-size", "4", "--workers", "0"]


def save_checkpoint(path: Path, num_classes: int, **extra: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in effnet.create_model(TINY_MODEL, num_classes=num_classes).state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd, "epoch": 1, **extra}, path)
    return sd


@pytest.fixture(scope="module")
def ckpt3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class checkpoint (plain weights, no EMA, no class names)."""
    path = tmp_path_factory.mktemp("ckpt") / "three.pth.tar"
    save_checkpoint(path, 3)
    return path


# ---- unreadable images: left out and counted, never replaced ------------------------------------------------

def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _make_bad(path: Path, kind: str) -> None:
    good = path.read_bytes()
    path.unlink()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("<html>not an image</html>")
    elif kind == "dangling_symlink":
        path.symlink_to(path.parent / "gone.png")
    elif kind == "bomb_header":  # claims 200000 x 200000 pixels
        path.write_bytes(_png_header(200_000, 200_000) + b"\x00" * 64)
    elif kind == "garbage_pixels":  # a valid header, then damaged image data
        path.write_bytes(_png_header(12, 12) + struct.pack(">I", 20) + b"IDAT" + b"\x07" * 24)
    elif kind == "unreadable_mode":
        path.write_bytes(good)
        path.chmod(0)


BAD_KINDS = ["empty", "truncated", "random_bytes", "text", "dangling_symlink", "bomb_header", "garbage_pixels",
             "unreadable_mode"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_validate_leaves_out_and_counts_an_unreadable_image(tmp_path: Path, ckpt3: Path, kind: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    if kind == "unreadable_mode" and os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    data = make_image_folder(tmp_path / "data", classes=3, per_class=1, val_per_class=3)
    bad = data / "val" / "class1" / "1.png"
    _make_bad(bad, kind)
    before = snapshot(tmp_path)
    code, out, err = cli([*VALIDATE, "--checkpoint", str(ckpt3), "--data-dir", str(data), "--format", "json"], capsys)
    if kind == "unreadable_mode":
        bad.chmod(0o644)
    assert code == 0, err
    assert "Traceback" not in err
    assert '"count": 8' in out and '"skipped": 1' in out  # 9 images, one left out: metrics over 8 real ones
    assert "val: skipped 1 unreadable image" in err
    assert snapshot(tmp_path) == before


def test_loader_drops_unreadable_samples_instead_of_substituting(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, per_class=3)
    _make_bad(data / "train" / "class0" / "1.png", "truncated")
    ds = SampleDataset(ImageFolder(data / "train", transform=create_transform(16)), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=6, collate_fn=skip_collate)
    (x, y), = [tuple(b) for b in loader]
    batch = next(iter(loader))
    assert x.shape[0] == 5 and y.tolist() == [0, 0, 1, 1, 1]  # the bad class-0 image is gone, not a class-1 copy
    assert [u.path for u in batch.unreadable] == [str(data / "train" / "class0" / "1.png")]


def test_augmentation_depends_on_seed_epoch_index_not_on_workers(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=20)
    transform = create_transform(16, is_training=True, auto_augment="rand-m9-mstd0.5", re_prob=0.5)
    ds = SampleDataset(ImageFolder(data / "train", transform=transform), seed=7)

    def images(workers: int, order: list[int], epoch: int) -> dict[int, torch.Tensor]:
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=order, num_workers=workers,
                                             collate_fn=skip_collate, generator=torch.Generator())
        xs = torch.cat([b[0] for b in loader])
        return dict(zip(order, xs))

    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = images(0, list(range(8)), epoch=1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    b = images(2, [5, 3, 7, 1, 0, 2, 4, 6], epoch=1)
    assert all(torch.equal(a[i], b[i]) for i in range(8))
    c = images(0, list(range(8)), epoch=2)
    assert not all(torch.equal(a[i], c[i]) for i in range(8))  # another epoch, other draws


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_train_counts_unreadable_images_per_split_and_in_summary(tmp_path: Path, workers: str,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, val_per_class=2)
    _make_bad(data / "train" / "class0" / "2.png", "truncated")
    _make_bad(data / "val" / "class1" / "0.png", "text")
    before = snapshot(tmp_path)
    out_dir = tmp_path / "run"
    # Mixup on a batch that lost an image (odd size) must still work
    code, _, err = cli(["train", *TINY_FLAGS, "--epochs", "1", "--workers", workers, "--mixup", "0.2",
                        "--data-dir", str(data), "--output", str(out_dir)], capsys, caplog)
    assert code == 0, err
    assert "Traceback" not in err
    assert "2.png" in err and "0.png" in err  # each bad file is named
    assert "train: skipped 1 unreadable image" in err and "val: skipped 1 unreadable image" in err
    rows = list(csv.DictReader((out_dir / "summary.csv").open()))
    assert rows[0]["train_skipped"] == "1" and rows[0]["eval_skipped"] == "1"
    assert snapshot(tmp_path, skip=(out_dir,)) == before


# ---- data layouts that would give a silently wrong answer ---------------------------------------------------

def _train(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    before = snapshot(tmp_path)
    code, _, err = cli(["train", *TINY_FLAGS, "--epochs", "1", "--data-dir", str(data),
                        "--output", str(tmp_path / "run"), *extra], capsys)
    assert snapshot(tmp_path, skip=(tmp_path / "run",)) == before
    assert not (tmp_path / "run" / "last.pth.tar").exists()
    return code, err


def test_train_class_with_no_readable_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", classes=3)
    for p in (data / "train" / "class2").iterdir():
        _make_bad(p, "truncated")
    code, err = _train(tmp_path, data, capsys)
    assert code == 2
    assert_error(err, "class2", "none of its 4 image")


def test_train_class_folder_without_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", classes=2)
    (data / "train" / "class9").mkdir()
    (data / "train" / "class9" / "notes.txt").write_text("no images here")
    code, err = _train(tmp_path, data, capsys)
    assert code == 2
    assert_error(err, "class9", "no images")


def test_train_one_class_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", classes=1)
    code, err = _train(tmp_path, data, capsys)
    assert code == 2
    assert_error(err, "1 class", "at least 2")


@pytest.mark.parametrize("change", ["val_lacks_class", "val_extra_class", "renamed"])
def test_train_val_class_sets_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str) -> None:
    data = make_image_folder(tmp_path / "data", classes=3)
    if change == "val_lacks_class":
        for p in (data / "val" / "class2").iterdir():
            p.unlink()
        (data / "val" / "class2").rmdir()
    elif change == "val_extra_class":
        (data / "val" / "class7").mkdir()
        Image.new("RGB", (12, 12)).save(data / "val" / "class7" / "x.png")
    else:
        (data / "val" / "class1").rename(data / "val" / "cat")
    code, err = _train(tmp_path, data, capsys)
    assert code == 2
    line = assert_error(err, "train and validation classes differ")
    assert {"val_lacks_class": "only in train: class2", "val_extra_class": "only in val: class7",
            "renamed": "only in val: cat"}[change] in line


def test_train_data_dir_with_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data")
    code, err = _train(tmp_path, data, capsys, "--dataset", "digits")
    assert code == 2
    assert_error(err, "--data-dir", "--dataset digits")


def test_validate_data_dir_with_dataset(tmp_path: Path, ckpt3: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", classes=3)
    code, out, err = cli([*VALIDATE, "--checkpoint", str(ckpt3), "--data-dir", str(data), "--dataset", "digits"],
                         capsys)
    assert code == 2 and not out
    assert_error(err, "--data-dir", "--dataset digits")


@pytest.mark.parametrize("layout", ["unknown_split", "only_train_folder", "split_on_class_folders"])
def test_validate_unknown_split(tmp_path: Path, ckpt3: Path, capsys: pytest.CaptureFixture[str], layout: str) -> None:
    data = make_image_folder(tmp_path / "data", classes=3)
    argv = [*VALIDATE, "--checkpoint", str(ckpt3)]
    if layout == "unknown_split":
        argv += ["--data-dir", str(data), "--split", "nope"]
    elif layout == "only_train_folder":  # no val/: train/ must not be read as one class folder
        for p in sorted((data / "val").rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        (data / "val").rmdir()
        argv += ["--data-dir", str(data)]
    else:
        argv += ["--data-dir", str(data / "val"), "--split", "test"]
    before = snapshot(tmp_path)
    code, out, err = cli(argv, capsys)
    assert code == 2 and not out
    assert_error(err, "--split")
    assert snapshot(tmp_path) == before


def test_validate_split_train_is_used(tmp_path: Path, ckpt3: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=2)
    code, out, err = cli([*VALIDATE, "--checkpoint", str(ckpt3), "--data-dir", str(data), "--split", "train",
                          "--format", "json"], capsys)
    assert code == 0, err
    assert '"count": 6' in out


def test_validate_digits_with_another_split(ckpt3: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli([*VALIDATE, "--checkpoint", str(ckpt3), "--dataset", "digits", "--split", "train"], capsys)
    assert code == 2 and not out
    assert_error(err, "--split train")


@pytest.mark.parametrize("data_classes", [2, 4])
def test_validate_class_count_mismatch(tmp_path: Path, ckpt3: Path, capsys: pytest.CaptureFixture[str],
                                       data_classes: int) -> None:
    data = make_image_folder(tmp_path / "data", classes=data_classes)
    code, out, err = cli([*VALIDATE, "--checkpoint", str(ckpt3), "--data-dir", str(data)], capsys)
    assert code == 2 and not out
    assert_error(err, "3 classes", f"has {data_classes}")


def test_validate_class_names_differ_from_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "named.pth.tar"
    save_checkpoint(ckpt, 3, class_names=["class0", "class2", "class1"])
    data = make_image_folder(tmp_path / "data", classes=3)
    code, out, err = cli([*VALIDATE, "--checkpoint", str(ckpt), "--data-dir", str(data)], capsys)
    assert code == 2 and not out
    assert_error(err, "classes differ", "'class2'")


@pytest.mark.parametrize("kind", ["no_ema_entry", "safetensors"])
def test_validate_use_ema_without_ema_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    ckpt = tmp_path / ("w.pth.tar" if kind == "no_ema_entry" else "w.safetensors")
    save_checkpoint(ckpt, 3)
    data = make_image_folder(tmp_path / "data", classes=3)
    before = snapshot(tmp_path)
    code, out, err = cli([*VALIDATE, "--checkpoint", str(ckpt), "--data-dir", str(data), "--use-ema"], capsys)
    assert code == 2 and not out
    assert_error(err, "--use-ema", "no EMA weights")
    assert snapshot(tmp_path) == before


def test_validate_use_ema_with_ema_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "ema.pth.tar"
    sd = save_checkpoint(ckpt, 3)
    torch.save({"state_dict": sd, "state_dict_ema": sd, "epoch": 1}, ckpt)
    data = make_image_folder(tmp_path / "data", classes=3)
    code, out, err = cli([*VALIDATE, "--checkpoint", str(ckpt), "--data-dir", str(data), "--use-ema"], capsys)
    assert code == 0, err
    assert "top-1" in out


def test_validate_val_class_with_no_readable_image(tmp_path: Path, ckpt3: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", classes=3)
    for p in (data / "val" / "class0").iterdir():
        _make_bad(p, "empty")
    before = snapshot(tmp_path)
    code, out, err = cli([*VALIDATE, "--checkpoint", str(ckpt3), "--data-dir", str(data)], capsys)
    assert code == 2 and not out
    assert_error(err, "class0", "none of its 2 image")
    assert snapshot(tmp_path) == before


# ---- non-finite weights are refused, naming the tensor ------------------------------------------------------

NON_FINITE = [("nan", "conv_stem.weight", ".pth.tar"), ("inf", "classifier.bias", ".pth.tar"),
              ("-inf", "bn1.running_var", ".safetensors"), ("nan", "blocks.0.0.bn1.weight", ".pth")]


@pytest.mark.parametrize("value,tensor,suffix", NON_FINITE)
def test_validate_refuses_non_finite_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str,
                                             tensor: str, suffix: str) -> None:
    ckpt = tmp_path / f"bad{suffix}"
    sd = save_checkpoint(tmp_path / "good.pth.tar", 3)
    sd[tensor] = sd[tensor].clone()
    sd[tensor].view(-1)[0] = float(value)
    if suffix == ".safetensors":
        save_file(sd, str(ckpt))
    else:
        torch.save({"state_dict": sd} if suffix == ".pth.tar" else sd, ckpt)
    data = make_image_folder(tmp_path / "data", classes=3)
    before = snapshot(tmp_path)
    code, out, err = cli([*VALIDATE, "--checkpoint", str(ckpt), "--data-dir", str(data)], capsys)
    assert code == 2 and not out
    assert_error(err, tensor, "NaN or infinite")
    assert snapshot(tmp_path) == before


def test_read_state_dict_names_the_non_finite_tensor(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(3), "b": torch.tensor([1.0, float("nan")]), "steps": torch.tensor([3])}, path)
    with pytest.raises(CheckpointError, match=r"'b' holds NaN or infinite"):
        read_state_dict(path)


@pytest.mark.slow
def test_train_resume_from_non_finite_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data")
    run = tmp_path / "run"
    code, _, err = cli(["train", *TINY_FLAGS, "--epochs", "1", "--data-dir", str(data), "--output", str(run)], capsys)
    assert code == 0, err
    ckpt = torch.load(run / "last.pth.tar", weights_only=True)
    ckpt["state_dict"]["conv_head.weight"].view(-1)[5] = float("inf")
    torch.save(ckpt, run / "last.pth.tar")
    before = snapshot(tmp_path)
    code, _, err = cli(["train", "--resume", str(run / "last.pth.tar"), "--epochs", "2"], capsys)
    assert code == 2
    assert_error(err, "conv_head.weight", "NaN or infinite")
    assert snapshot(tmp_path) == before


def test_train_initial_checkpoint_non_finite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "init.pth.tar"
    sd = save_checkpoint(ckpt, 2)
    sd["conv_stem.weight"].view(-1)[0] = float("nan")
    torch.save({"state_dict": sd}, ckpt)
    data = make_image_folder(tmp_path / "data")
    code, err = _train(tmp_path, data, capsys, "--initial-checkpoint", str(ckpt))
    assert code == 2
    assert_error(err, "conv_stem.weight", "NaN or infinite")
