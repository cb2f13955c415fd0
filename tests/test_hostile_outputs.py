"""Careless and hostile use of every command's outputs and flags: each case checks the exit status,
a one-line message without a traceback, and that nothing outside the command's own output changed
(every file under the test's folder hashed before and after)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effnet import outputs, validators
from effnet.cli import main
from effnet.train.checkpoint import load_training_checkpoint
from cli_support import assert_error, run_cli, snapshot
from train_fixtures import TINY_FLAGS, TINY_MODEL, make_image_folder

RUN_FLAGS = [*TINY_FLAGS, "--epochs", "1"]


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run `effnet ARGV` in this process: (exit status, stderr)."""
    code, _, err = run_cli(argv, capsys)
    return code, err


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "data", per_class=2, val_per_class=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """One finished 1-epoch run; tests copy it before doing anything to it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *RUN_FLAGS, "--data-dir", str(data), "--output", str(run)]) == 0
    return run


@pytest.fixture
def work(tmp_path: Path, trained: Path) -> Path:
    """tmp_path holding a copy of the trained run as run/."""
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path


# ---------------------------------------------------------------- bad flag values (parse time, exit 2)

TRAIN_BAD_FLAGS = [
    (["--drop", "1.5"], "--drop", "must be in [0, 1), got 1.5"),
    (["--drop-path", "-0.1"], "--drop-path", "must be in [0, 1)"),
    (["--std", "0", "0", "0"], "--std", "must be > 0, got 0"),
    (["--std", "1", "1"], "--std", "takes 1 or 3 value(s), got 2"),
    (["--mean", "0.5", "0.5"], "--mean", "takes 1 or 3 value(s)"),
    (["--scale", "1", "0.5"], "--scale", "MIN <= MAX"),
    (["--ratio", "2", "1"], "--ratio", "MIN <= MAX"),
    (["--interpolation", "bogus"], "--interpolation", "must be one of nearest"),
    (["--train-interpolation", "bogus"], "--train-interpolation", "random"),
    (["--in-chans", "0"], "--in-chans", "must be in [1,"),
    (["--seed", "12345678901234567890"], "--seed", "must be in [0, 4294967295]"),
    (["--seed", "-1"], "--seed", "must be in [0,"),
    (["--epochs", "ten"], "--epochs", "must be an integer, got 'ten'"),
    (["--epochs", "0"], "--epochs", ">= 1"),
    (["--lr", "nan"], "--lr", "finite"),
    (["--lr", "-1"], "--lr", "must be > 0"),
    (["--batch-size", "0"], "--batch-size", "must be >= 1"),
    (["--hflip", "2"], "--hflip", "must be in [0, 1]"),
    (["--smoothing", "1"], "--smoothing", "must be in [0, 1)"),
    (["--workers", "-1"], "--workers", "must be in [0,"),
    (["--img-size", "4"], "--img-size", "must be in [8,"),
    (["--model-ema-decay", "1"], "--model-ema-decay", "must be in [0, 1)"),
    (["--mixup", "-1"], "--mixup", "must be >= 0"),
    (["--crop-pct", "0"], "--crop-pct", "must be in (0, 1]"),
    (["--remode", "bogus"], "--remode", "must be one of pixel"),
    (["--decay-rate", "0"], "--decay-rate", "must be in (0, 1]"),
    (["--clip-grad", "0"], "--clip-grad", "must be > 0"),
]


@pytest.mark.parametrize("flags,flag,message", TRAIN_BAD_FLAGS, ids=[" ".join(c[0]) for c in TRAIN_BAD_FLAGS])
def test_train_flag_out_of_range(flags: list[str], flag: str, message: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(tmp_path)
    code, err = cli(["train", "--dataset", "digits", "--output", str(tmp_path / "out"), *flags], capsys)
    assert code == 2
    assert_error(err, flag, message)
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_memory_that_cannot_exist_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(["train", "--dataset", "digits", "--img-size", "30000", "--batch-size", "100000", "--output",
                     str(tmp_path / "out")], capsys)
    assert code == 2
    assert_error(err, "--img-size 30000 with --batch-size 100000", "GiB of memory", "lower --img-size")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------ YAML values: the same rule and message as the flag

YAML_BAD = [
    ("drop: 1.5\n", "--drop must be in [0, 1), got 1.5"),
    ("epochs: ten\n", "--epochs must be an integer, got 'ten'"),
    ("std: [0, 0, 0]\n", "--std must be > 0, got 0"),
    ("pretrained: maybe\n", "--pretrained must be true or false"),
    ("interpolation: bogus\n", "--interpolation must be one of nearest"),
    ("lr: [1, 2]\n", "--lr must be a number"),
    ("no_such_setting: 1\n", "unknown setting(s) no_such_setting"),
    ("- a list\n", "must hold a mapping of settings"),
    ("drop: [unclosed\n", "is not valid YAML"),
]


@pytest.mark.parametrize("text,message", YAML_BAD, ids=[t.strip() for t, _ in YAML_BAD])
def test_yaml_value_gets_the_flags_message(text: str, message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    before = snapshot(tmp_path)
    code, err = cli(["train", "--dataset", "digits", "--config", str(config), "--output", str(tmp_path / "o")],
                    capsys)
    assert code == 2
    assert_error(err, str(config), message)
    assert snapshot(tmp_path) == before and not (tmp_path / "o").exists()


def test_flag_and_yaml_share_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("drop: 1.5\n")
    _, from_flag = cli(["train", "--dataset", "digits", "--drop", "1.5"], capsys)
    _, from_yaml = cli(["train", "--dataset", "digits", "--config", str(config)], capsys)
    tail = "must be in [0, 1), got 1.5"
    assert tail in from_flag and tail in from_yaml


OTHER_BAD_FLAGS = [
    (["prune", "--model", TINY_MODEL, "--dataset", "digits", "--output", "o", "--macs-ratio", "0"], "--macs-ratio",
     "must be in (0, 1]"),
    (["prune", "--model", TINY_MODEL, "--dataset", "digits", "--output", "o", "--macs-ratio", "1.5"], "--macs-ratio",
     "must be in (0, 1]"),
    (["prune", "--model", TINY_MODEL, "--dataset", "digits", "--output", "o", "--macs-ratio", "0.5",
      "--calib-batches", "0"], "--calib-batches", "must be >= 1"),
    (["export", "--model", TINY_MODEL, "--format", "onnx", "--output", "x.onnx", "--opset", "5"], "--opset",
     "must be in [7, 20], got 5"),
    (["export", "--model", TINY_MODEL, "--format", "onnx", "--output", "x.onnx", "--opset", "99"], "--opset",
     "must be in [7, 20]"),
    (["upcycle", "--model", TINY_MODEL, "--output", "o", "--experts", "1"], "--experts", "must be >= 2"),
    (["predict", "--model", TINY_MODEL, "--std", "0", "0", "0", "x.png"], "--std", "must be > 0, got 0"),
    (["validate", "--model", TINY_MODEL, "--dataset", "digits", "--interpolation", "bogus"], "--interpolation",
     "must be one of nearest"),
    (["validate", "--model", TINY_MODEL, "--dataset", "digits", "-b", "0"], "--batch-size", "must be >= 1"),
    (["embed", "--model", TINY_MODEL, "--img-size", "2", "x.png", "-o", "f.npy"], "--img-size", "must be in [8,"),
    (["upcycle", "--model", TINY_MODEL, "--output", "o", "--experts", "4", "--expert-noise", "-1"],
     "--expert-noise", "must be >= 0"),
]


@pytest.mark.parametrize("argv,flag,message", OTHER_BAD_FLAGS, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in
                                                                    OTHER_BAD_FLAGS])
def test_other_commands_flag_out_of_range(argv: list[str], flag: str, message: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = cli(argv, capsys)
    assert code == 2
    assert_error(err, flag, message)
    assert list(tmp_path.iterdir()) == []


def test_upcycle_experts_beyond_memory_fail_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(validators, "total_memory_bytes", lambda: 2**30)  # a 1 GiB machine
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code, err = cli(["upcycle", "--model", TINY_MODEL, "--random-weights", "--experts", "1000", "--output",
                     str(tmp_path / "up")], capsys)
    assert code == 2
    assert_error(err, "--experts 1000 would need at least", "GiB of memory", "use fewer experts")
    assert not (tmp_path / "up").exists()


def test_prune_to_an_unreachable_ratio_says_the_smallest(data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(["prune", *TINY_FLAGS, "--data-dir", str(data), "--random-weights", "--macs-ratio", "0.05",
                     "--epochs", "0", "--output", str(tmp_path / "p")], capsys)
    assert code == 2
    assert_error(err, "--macs-ratio 0.05 is below what pruning can reach", "give --macs-ratio 0.")
    assert not (tmp_path / "p").exists()


# ---------------------------------------------- output paths that name something effnet must not replace

def _image(path: Path, color: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), color, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("kind", ["input image", "folder", "symlink", "fifo", "device", "missing folder"])
def test_embed_refuses_output(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = _image(tmp_path / "photos" / "a.png")
    _image(tmp_path / "photos" / "b.png", 20)
    target = {"input image": img, "folder": tmp_path / "photos", "symlink": tmp_path / "link.npy",
              "fifo": tmp_path / "pipe.npy", "device": Path("/dev/null"),
              "missing folder": tmp_path / "no" / "f.npy"}[kind]
    if kind == "symlink":
        (tmp_path / "elsewhere.npy").write_bytes(b"precious")
        target.symlink_to(tmp_path / "elsewhere.npy")
    if kind == "fifo":
        os.mkfifo(target)
    before = snapshot(tmp_path)
    code, err = cli(["embed", "--model", TINY_MODEL, "--random-weights", str(tmp_path / "photos"), "-o", str(target)],
                    capsys)
    assert code == 2
    expected = {"input image": "one of this command's inputs", "folder": "is a folder", "symlink": "symbolic link",
                "fifo": "FIFO", "device": "device", "missing folder": "does not exist"}[kind]
    assert_error(err, "--output", expected)
    assert snapshot(tmp_path) == before  # the input image among them
    assert hashlib.sha256(img.read_bytes()).hexdigest() == before["photos/a.png"]


def test_embed_every_input_failing_leaves_the_old_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad").mkdir()
    for name in ("x.png", "y.jpg"):
        (tmp_path / "bad" / name).write_bytes(b"not an image at all")
    feats = tmp_path / "feats.npy"
    np.save(feats, np.ones((3, 4), np.float32))
    before = snapshot(tmp_path)
    code, err = cli(["embed", "--model", TINY_MODEL, "--random-weights", str(tmp_path / "bad"), "-o", str(feats)],
                    capsys)
    assert code == 1
    assert_error(err, "none of the 2 input(s) could be read", "left as it was")
    assert snapshot(tmp_path) == before


def test_embed_paths_stay_aligned_whatever_the_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = ["plain.png", "new\nline.png", "carriage\rreturn.png", '"quoted".png', "para\u2029sep.png"]
    for i, name in enumerate(names):
        _image(tmp_path / "p" / name, 30 * i)
    out = tmp_path / "f.npy"
    code, err = cli(["embed", "--model", TINY_MODEL, "--random-weights", "--img-size", "32", str(tmp_path / "p"),
                     "-o", str(out)], capsys)
    assert code == 0, err
    import json
    lines = (tmp_path / "f.paths.txt").read_text().splitlines()
    assert len(lines) == np.load(out).shape[0] == len(names)
    decoded = [json.loads(line) if line.startswith('"') else line for line in lines]
    assert sorted(Path(p).name for p in decoded) == sorted(names)


def test_export_refuses_to_overwrite_its_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import effnet
    ckpt = tmp_path / "weights.onnx"  # a careless name: the weights file is the would-be output
    torch.save(effnet.create_model(TINY_MODEL).state_dict(), ckpt)
    before = snapshot(tmp_path)
    code, err = cli(["export", "--model", TINY_MODEL, "--checkpoint", str(ckpt), "--format", "onnx", "--output",
                     str(ckpt), "--img-size", "32"], capsys)
    assert code == 2
    assert_error(err, "one of this command's inputs")
    assert snapshot(tmp_path) == before


def test_export_refuses_a_file_of_its_model_folder(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(work)
    code, err = cli(["export", "--model", f"local-dir:{work / 'run'}", "--format", "onnx", "--output",
                     str(work / "run" / "model.safetensors"), "--no-check"], capsys)
    assert code == 2
    assert_error(err, "one of this command's inputs")
    assert snapshot(work) == before


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_routing_refuses_special_output(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "r.png"
    if kind == "symlink":
        (tmp_path / "real.png").write_bytes(b"keep")
        target.symlink_to(tmp_path / "real.png")
    else:
        os.mkfifo(target)
    before = snapshot(tmp_path)
    code, err = cli(["routing", "--model", "tf_efficientnet_cc_b0_4e", "--random-weights", "--dataset", "digits",
                     "--output", str(target)], capsys)
    assert code == 2
    assert_error(err, "--output", "symbolic link" if kind == "symlink" else "FIFO")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["train", "prune"])
def test_output_that_is_a_file_is_refused(command: str, data: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("do not replace me")
    extra = ["--macs-ratio", "0.5", "--random-weights"] if command == "prune" else []
    before = snapshot(tmp_path)
    code, err = cli([command, *RUN_FLAGS, "--data-dir", str(data), "--output", str(precious), *extra], capsys)
    assert code == 2
    assert_error(err, "--output", "is a file, not a folder")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------- runs: new, copied, resumed, failed

def test_output_over_an_existing_run_starts_a_numbered_sibling(work: Path, data: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(work)
    code, err = cli(["train", *RUN_FLAGS, "--data-dir", str(data), "--output", str(work / "run")], capsys)
    assert code == 0, err
    assert "Traceback" not in err and "run-1" in err
    assert snapshot(work, skip=(work / "run-1",)) == before  # the earlier run is byte-identical
    assert (work / "run-1" / "last.pth.tar").is_file()


def test_resume_of_a_copied_run_writes_only_the_copy(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The copy's checkpoint still names the original folder in its args; it must continue in the copy.
    With --epochs 2 it also extends a finished run."""
    copy = work / "copy"
    shutil.copytree(work / "run", copy)
    before = snapshot(work, skip=(copy,))
    code, err = cli(["train", "--resume", str(copy / "last.pth.tar"), "--epochs", "2"], capsys)
    assert code == 0, err
    assert snapshot(work, skip=(copy,)) == before  # the original run untouched
    assert load_training_checkpoint(copy / "last.pth.tar")["epoch"] == 2
    assert load_training_checkpoint(work / "run" / "last.pth.tar")["epoch"] == 1


def test_resume_of_a_finished_run_says_so(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(work)
    code, err = cli(["train", "--resume", str(work / "run" / "last.pth.tar")], capsys)
    assert code == 0
    assert "Traceback" not in err and "already finished its 1 epoch" in err and "--epochs" in err
    assert snapshot(work) == before


@pytest.mark.parametrize("problem", ["architecture", "optimizer", "truncated", "missing", "weights only"])
def test_failed_resume_changes_no_file(problem: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = work / "run" / "last.pth.tar"
    flags = ["--epochs", "2"]
    if problem == "architecture":
        flags += ["--model", "efficientnet_b2_pruned"]
    elif problem == "optimizer":
        flags += ["--opt", "rmsproptf"]
    elif problem == "truncated":
        ckpt = work / "run" / "cut.pth.tar"
        ckpt.write_bytes((work / "run" / "last.pth.tar").read_bytes()[:5000])
    elif problem == "missing":
        ckpt = work / "run" / "nope.pth.tar"
    else:
        ckpt = work / "run" / "weights.pth"
        torch.save(load_training_checkpoint(work / "run" / "last.pth.tar")["state_dict"], ckpt)
    before = snapshot(work)
    code, err = cli(["train", "--resume", str(ckpt), *flags], capsys)
    assert code == 2
    assert_error(err, str(ckpt), {"architecture": "", "optimizer": "keeps its optimiser", "truncated": "corrupt",
                       "missing": "does not exist", "weights only": "--initial-checkpoint"}[problem])
    assert snapshot(work) == before


# ------------------------------------------------------- the writer itself: atomic, umask, clean-up

def test_interrupted_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "summary.csv"
    target.write_text("old")

    def half(tmp: str) -> None:
        Path(tmp).write_text("half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        outputs.atomic_write(target, half)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_disk_full_is_one_line_and_keeps_the_old_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _image(tmp_path / "p" / "a.png")
    feats = tmp_path / "f.npy"
    np.save(feats, np.zeros((1, 2), np.float32))
    before = snapshot(tmp_path)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)
    code, err = cli(["embed", "--model", TINY_MODEL, "--random-weights", "--img-size", "32", str(tmp_path / "p"),
                     "-o", str(feats)], capsys)
    assert code == 1
    assert_error(err, str(feats), "No space left on device", "free some space")
    assert snapshot(tmp_path) == before and not [p for p in tmp_path.iterdir() if outputs.TEMP_MARK in p.name]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask(umask: int, tmp_path: Path) -> None:
    import effnet
    from effnet.hf_dir import save_hf_dir
    old = os.umask(umask)
    try:
        written = [outputs.write_text(tmp_path / "a.txt", "x"), outputs.save_torch({"a": 1}, tmp_path / "b.pth"),
                   outputs.copy_file(tmp_path / "a.txt", tmp_path / "c.txt")]
        folder = save_hf_dir(effnet.create_model(TINY_MODEL, num_classes=2), tmp_path / "hf")
        written += [folder / "config.json", folder / "model.safetensors"]
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_temporaries_of_a_dead_writer_are_cleaned_at_the_next_write(tmp_path: Path) -> None:
    dead = tmp_path / f".last.pth.tar{outputs.TEMP_MARK}999999999-abc.tmp"
    live = tmp_path / f".last.pth.tar{outputs.TEMP_MARK}{os.getppid()}-abc.tmp"
    foreign = tmp_path / ".last.pth.tar.someone-elses.tmp"
    for p in (dead, live, foreign):
        p.write_bytes(b"partial")
    outputs.write_text(tmp_path / "args.yaml", "a: 1\n")
    assert not dead.exists() and live.exists() and foreign.exists()


def test_new_run_dir_numbers_siblings(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "args.yaml").write_text("x")
    (tmp_path / "run-1").mkdir()
    (tmp_path / "run-1" / "f").write_text("y")
    (tmp_path / "empty").mkdir()
    assert outputs.new_run_dir(tmp_path / "run") == (tmp_path / "run-2", True)
    assert outputs.new_run_dir(tmp_path / "empty") == (tmp_path / "empty", False)
    assert outputs.new_run_dir(tmp_path / "fresh") == (tmp_path / "fresh", False)


# ----------------------------------------------------------------------------- the error boundary

def _raising(error: BaseException):  # noqa: ANN202 - a stand-in for a tool's run()
    def run(args: object) -> int:
        raise error
    return run


@pytest.mark.parametrize("error,code,message", [
    (OSError(errno.EACCES, os.strerror(errno.EACCES), "/srv/out/feats.npy"), 1, "cannot use '/srv/out/feats.npy'"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/x"), 1, "read-only"),
    (MemoryError(), 1, "out of memory"),
    (ZeroDivisionError("division by zero"), 1, "internal error ZeroDivisionError"),
])
def test_errors_become_one_line(error: BaseException, code: int, message: str, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("effnet.tools.info.run", _raising(error))
    got, err = cli(["info", TINY_MODEL], capsys)
    assert got == code
    assert_error(err, message)


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("effnet.tools.info.run", _raising(ZeroDivisionError("a real bug")))
    code, err = cli(["info", TINY_MODEL], capsys)
    assert code == 1 and "Traceback" not in err and "--debug" in err
    for argv in (["--debug", "info", TINY_MODEL], ["info", TINY_MODEL, "--debug"]):
        code, err = cli(argv, capsys)
        assert code == 1 and "Traceback" in err and "ZeroDivisionError: a real bug" in err


def test_unwritable_output_folder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _image(tmp_path / "p" / "a.png")
    real_access = os.access
    monkeypatch.setattr(outputs.os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else
                        real_access(p, mode))  # root ignores permissions, so the check is what is tested
    (tmp_path / "ro").mkdir()
    before = snapshot(tmp_path)
    code, err = cli(["embed", "--model", TINY_MODEL, "--random-weights", str(tmp_path / "p"), "-o",
                     str(tmp_path / "ro" / "f.npy")], capsys)
    assert code == 2
    assert_error(err, "--output", "is not writable")
    assert snapshot(tmp_path) == before
