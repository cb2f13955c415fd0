"""Kill-and-resume equals an uninterrupted run, bit for bit; bad resume files and NaN losses give
clear errors; SIGTERM saves and exits."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from train_fixtures import TINY_FLAGS, make_image_folder, run_effnet

# Runs `effnet train` and SIGKILLs itself right after epoch 1's checkpoint is on disk.
KILL_AFTER_FIRST_EPOCH = """
import os, signal, sys
import effnet.train.loop as loop
end_epoch = loop._end_epoch
def end_then_die(run, val_loader):
    metrics = end_epoch(run, val_loader)
    os.kill(os.getpid(), signal.SIGKILL)
loop._end_epoch = end_then_die
from effnet.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Runs `effnet train` and, when the run reaches its STOP_AT-th batch (mid-epoch), sends itself SIGNAL:
# SIGTERM to its own pid, SIGINT to its whole process group as Ctrl-C does (DataLoader workers too),
# SIGKILL to the group (no chance to save: the resume starts from the last epoch's checkpoint).
SIGNAL_MID_EPOCH = """
import os, signal, sys
import effnet.train.loop as loop
sig, stop_at = signal.Signals[os.environ["SIGNAL"]], int(os.environ["STOP_AT"])
batches, seen = loop._batches, [0]
def counting(*args):
    for item in batches(*args):
        seen[0] += 1
        if seen[0] == stop_at:
            if sig == signal.SIGTERM:
                os.kill(os.getpid(), sig)
            else:
                os.killpg(os.getpgid(0), sig)
        yield item
loop._batches = counting
from effnet.cli import main
sys.exit(main(sys.argv[1:]))
"""
# the defaults (workers, random-resized crop, flips, colour jitter) plus every augmentation with randomness
AUGMENTED_FLAGS = [*TINY_FLAGS, "--workers", "2", "--epochs", "2", "--aa", "rand-m9-mstd0.5", "--reprob", "0.5",
                   "--mixup", "0.4", "--cutmix", "1.0", "--drop-path", "0.2", "--model-ema", "--model-ema-decay", "0.9"]

# every source of randomness the loop has: augmentation, Mixup, drop-path, dropout, EMA, warmup + step decay
RICH_FLAGS = [*TINY_FLAGS, "--epochs", "3", "--opt", "rmsproptf", "--sched", "step", "--decay-epochs", "0.5",
              "--mixup", "0.4", "--drop", "0.2", "--drop-path", "0.2", "--model-ema", "--model-ema-decay", "0.9",
              "--weight-decay", "1e-4"]


def _tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint, by path."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


def test_sigkill_after_epoch_then_resume_is_bit_exact(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data")
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_effnet(["train", *RICH_FLAGS, "--data-dir", str(data), "--output", str(full)])
    proc = run_effnet(["train", *RICH_FLAGS, "--data-dir", str(data), "--output", str(killed)],
                      prefix=["-c", KILL_AFTER_FIRST_EPOCH], check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert torch.load(killed / "last.pth.tar", weights_only=True)["epoch"] == 1
    # --resume alone: the checkpoint's settings are the run's
    run_effnet(["train", "--resume", str(killed / "last.pth.tar")])

    a = torch.load(full / "last.pth.tar", weights_only=True)
    b = torch.load(killed / "last.pth.tar", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"]
    ta, tb = _tensors({k: a[k] for k in ("state_dict", "state_dict_ema", "optimizer")}), \
        _tensors({k: b[k] for k in ("state_dict", "state_dict_ema", "optimizer")})
    assert ta.keys() == tb.keys() and len(ta) > 100
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, different[:5]
    assert (full / "summary.csv").read_text() .splitlines()[0] == (killed / "summary.csv").read_text().splitlines()[0]
    rows_full = [r.split(",")[:5] for r in (full / "summary.csv").read_text().splitlines()]
    rows_resumed = [r.split(",")[:5] for r in (killed / "summary.csv").read_text().splitlines()]
    assert rows_full == rows_resumed and len(rows_full) == 4


@pytest.mark.parametrize("content", [None, b"", b"not a checkpoint at all", "truncated", "weights"])
def test_bad_resume_file_is_a_clear_error(tmp_path: Path, content: object) -> None:
    from effnet.errors import CheckpointError
    from effnet.train import load_training_checkpoint
    path = tmp_path / "last.pth.tar"
    if content == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}, "optimizer": {}, "scheduler": {}, "epoch": 1,
                    "step": 1, "rng_state": {}}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "weights":
        torch.save({"w": torch.zeros(2)}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="last.pth.tar"):
        load_training_checkpoint(path)


def test_cli_resume_missing_file_exits_2(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data")
    proc = run_effnet(["train", *TINY_FLAGS, "--data-dir", str(data), "--resume", str(tmp_path / "nope.pth.tar")],
                      check=False)
    assert proc.returncode == 2
    assert "nope.pth.tar" in proc.stderr and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data")
    out = tmp_path / "out"
    run_effnet(["train", *TINY_FLAGS, "--data-dir", str(data), "--epochs", "1", "--output", str(out)])
    good = (out / "last.pth.tar").read_bytes()
    # an absurd learning rate with plain SGD overflows the weights within a few steps
    proc = run_effnet(["train", *TINY_FLAGS, "--data-dir", str(data), "--epochs", "30", "--output", str(out),
                       "--resume", str(out / "last.pth.tar"), "--lr", "1e30", "--warmup-epochs", "0",
                       "--smoothing", "0"], check=False)
    assert proc.returncode == 2, proc.stderr
    assert "loss is" in proc.stderr and ("nan" in proc.stderr or "inf" in proc.stderr)
    assert "last good checkpoint" in proc.stderr
    ckpt = torch.load(out / "last.pth.tar", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert (out / "last.pth.tar").read_bytes() == good  # diverged within the first resumed epoch


def test_sigterm_saves_and_exits_cleanly(tmp_path: Path) -> None:
    import os
    data = make_image_folder(tmp_path / "data", per_class=40)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "effnet", "train", *TINY_FLAGS, "--data-dir", str(data),
                             "--epochs", "50", "--output", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "args.yaml").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "--resume" in stderr
    ckpt = torch.load(out / "last.pth.tar", weights_only=True)
    assert ckpt["step"] >= 1 and ckpt["epoch"] < 50
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def _signalled_run(args: list[str], sig: str, stop_at: int) -> subprocess.CompletedProcess:
    """`effnet ARGS` in its own session (so a group signal reaches only it and its workers), signalled
    by itself at its `stop_at`-th batch."""
    import os
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(repo / "src"), SIGNAL=sig,
               STOP_AT=str(stop_at))
    return subprocess.run([sys.executable, "-c", SIGNAL_MID_EPOCH, *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300, start_new_session=True)


@pytest.fixture(scope="module")
def augmented_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Tiny data (16 training images: 4 steps an epoch) and an uninterrupted 2-epoch run's last checkpoint."""
    root = tmp_path_factory.mktemp("resume")
    data = make_image_folder(root / "data", per_class=8, val_per_class=1, size=24)
    run_effnet(["train", *AUGMENTED_FLAGS, "--data-dir", str(data), "--output", str(root / "full")])
    return data, torch.load(root / "full" / "last.pth.tar", weights_only=True)


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 8
    ta, tb = _tensors({k: a[k] for k in ("state_dict", "state_dict_ema", "optimizer")}), \
        _tensors({k: b[k] for k in ("state_dict", "state_dict_ema", "optimizer")})
    assert ta.keys() == tb.keys() and len(ta) > 100
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} of {len(ta)} tensors differ: {different[:5]}"


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_signal_mid_epoch_with_workers_and_augmentation_resumes_bit_exact(
        tmp_path: Path, augmented_reference: tuple[Path, dict], sig: str) -> None:
    data, reference = augmented_reference
    out = tmp_path / "run"
    proc = _signalled_run(["train", *AUGMENTED_FLAGS, "--data-dir", str(data), "--output", str(out)], sig,
                          stop_at=6)  # batch 2 of epoch 2
    if sig == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert torch.load(out / "last.pth.tar", weights_only=True)["epoch"] == 1
    else:
        assert proc.returncode == 128 + signal.Signals[sig], proc.stderr
        assert proc.stderr.count(f"received {sig}") == 1, proc.stderr  # the main process only, not each worker
        assert "Traceback" not in proc.stderr
        saved = torch.load(out / "last.pth.tar", weights_only=True)
        assert (saved["epoch"], saved["batch"]) == (1, 2)  # stopped mid-epoch
    run_effnet(["train", "--resume", str(out / "last.pth.tar")])
    _assert_same_run(reference, torch.load(out / "last.pth.tar", weights_only=True))
