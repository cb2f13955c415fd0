"""Logging (--log-level, -q) and tqdm progress bars: bars only on a terminal, messages never inside a bar,
timm's short flags."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from typing import Iterator

import pytest

from effnet import progress
from effnet.cli import build_parser, main
from effnet.log import TqdmHandler, setup_logging
from effnet.train.output import Progress
from train_fixtures import TINY_FLAGS, make_image_folder


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    yield
    setup_logging("info")
    progress.configure(None)


def own_lines(text: str) -> list[str]:
    """What stays visible on each terminal line: the text after the line's last carriage return."""
    return [line.split("\r")[-1] for line in text.split("\n")]


def test_levels_prefix_and_quiet() -> None:
    stream = io.StringIO()
    log = logging.getLogger("effnet.tools.predict")
    setup_logging("info", prefix="effnet predict: ", stream=stream)
    log.debug("hidden")
    log.info("3 images")
    log.warning("skipped a.jpg: empty file")
    assert stream.getvalue() == "3 images\neffnet predict: skipped a.jpg: empty file\n"
    stream = io.StringIO()
    setup_logging("info", quiet=True, prefix="effnet predict: ", stream=stream)
    log.info("3 images")
    log.warning("skipped")
    assert stream.getvalue() == "effnet predict: skipped\n" and not progress.enabled(FakeTerminal())
    stream = io.StringIO()
    setup_logging("debug", stream=stream)
    log.debug("shown")
    assert stream.getvalue() == "shown\n"
    ours = [h for h in logging.getLogger("effnet").handlers if isinstance(h, TqdmHandler)]
    assert len(ours) == 1  # set up three times, one handler (pytest may add its own capture handlers)


def test_flags_before_or_after_the_command_and_timm_short_flags() -> None:
    parser = build_parser()
    args = parser.parse_args(["-q", "--log-level", "DEBUG", "list"])
    assert args.quiet and args.log_level == "debug"
    args = parser.parse_args(["list", "-q", "--log-level", "error"])
    assert args.quiet and args.log_level == "error"
    args = parser.parse_args(["train", "-m", "efficientnet_b1_pruned", "-b", "8", "-vb", "4", "-j", "0",
                              "-c", "run.yaml"])
    assert (args.model, args.batch_size, args.validation_batch_size, args.workers, args.config) == \
        ("efficientnet_b1_pruned", 8, 4, 0, "run.yaml")
    for argv in (["validate", "-m", "m", "-b", "8", "-j", "1"],
                 ["routing", "-m", "m", "-b", "8", "-j", "1", "--dataset", "digits", "--output", "x.png"]):
        args = parser.parse_args(argv)
        assert (args.model, args.batch_size, args.workers) == ("m", 8, 1)
    args = parser.parse_args(["predict", "-m", "m", "-b", "2", "x.jpg"])
    assert (args.model, args.batch_size) == ("m", 2)


def test_bad_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--log-level", "loud", "list"])
    assert stop.value.code == 2 and "--log-level" in capsys.readouterr().err


def test_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    for _ in progress.bar(range(50), desc="work"):
        pass
    assert piped.getvalue() == ""
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    for _ in progress.bar(range(50), desc="work", mininterval=0):
        pass
    assert "work" in terminal.getvalue() and "50/50" in terminal.getvalue()
    progress.configure(False)  # -q
    terminal.truncate(0)
    terminal.seek(0)
    for _ in progress.bar(range(50), desc="work"):
        pass
    assert terminal.getvalue() == ""


def test_messages_and_results_never_share_a_line_with_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(sys, "stdout", terminal)  # one terminal shows both streams
    setup_logging("info", prefix="effnet predict: ")
    with progress.bar(total=30, desc="predict", unit="img") as bar:
        for i in range(30):
            bar.update(1)
            if i == 10:
                logging.getLogger("effnet.tools.predict").warning("skipped broken.jpg: empty file")
            if i == 20:
                progress.echo("photo.jpg")
    visible = own_lines(terminal.getvalue())
    assert "effnet predict: skipped broken.jpg: empty file" in visible
    assert "photo.jpg" in visible


def test_training_progress_bar_on_a_terminal_and_log_lines_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    log_stream = io.StringIO()
    setup_logging("info", stream=log_stream)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = Progress(total=4, epoch=0, epochs=3, log_interval=2)
    for done in range(1, 5):
        bar.update(done, loss=1.25, lr=0.01, img_per_sec=100.0)
    bar.close()
    assert log_stream.getvalue() == "epoch 1/3 batch 2/4: loss 1.2500 lr 0.01 100 img/s\n"
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = Progress(total=4, epoch=0, epochs=3, log_interval=2)
    for done in range(3, 5):  # a resumed epoch starts at batch 2
        bar.update(done, loss=1.25, lr=0.01, img_per_sec=100.0)
    assert bar.bar.n == 4 and bar.bar.postfix == "loss 1.2500 lr 0.01 100 img/s"
    bar.close()
    assert "epoch 1/3" in terminal.getvalue()
    assert log_stream.getvalue().count("\n") == 1  # no log lines while a bar shows progress


def test_train_on_a_terminal_keeps_epoch_lines_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, val_per_class=2)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["train", *TINY_FLAGS, "--data-dir", str(data), "--epochs", "2", "--output",
                 str(tmp_path / "run")]) == 0
    text = terminal.getvalue()
    assert "epoch 2/2" in text and "eval" in text and "batch" in text  # training and evaluation bars
    visible = own_lines(text)
    epoch_lines = [line for line in visible if line.startswith("epoch ") and ": train_loss" in line]
    assert len(epoch_lines) == 2 and all(line.endswith("img/s") for line in epoch_lines)
    assert any(line.startswith("done: top-1") for line in visible)


def test_validate_bar_is_labelled_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, per_class=1, val_per_class=2)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["validate", "-m", "efficientnet_b1_pruned", "--random-weights", "--num-classes", "2",
                 "--img-size", "32", "--data-dir", str(data), "-j", "0"]) == 0
    bars = [line for line in terminal.getvalue().replace("\r", "\n").splitlines() if "batch" in line]
    assert bars and all(line.startswith("validate") for line in bars)
