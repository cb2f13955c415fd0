"""What a run leaves in its output folder besides checkpoints: args.yaml, summary.csv, a plot of the
curves, and the progress bar on the terminal."""

from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from .checkpoint import atomic_write_text

SUMMARY_COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "img/s")
EMA_COLUMNS = ("ema_loss", "ema_top1", "ema_top5")


def write_args_yaml(path: Path, values: dict[str, Any]) -> None:
    """The run's settings, loadable again with `--config`."""
    import yaml
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))


def write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    """summary.csv from the full history (rewritten whole, so a resumed run never duplicates rows)."""
    columns = list(SUMMARY_COLUMNS)
    if any("ema_top1" in r for r in rows):
        columns[5:5] = EMA_COLUMNS
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def write_plot(path: Path, rows: list[dict[str, Any]]) -> bool:
    """Loss and accuracy curves as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train loss")
    ax_loss.plot(epochs, [r["eval_loss"] for r in rows], label="eval loss")
    ax_acc.plot(epochs, [r["eval_top1"] for r in rows], label="eval top-1")
    ax_acc.plot(epochs, [r["eval_top5"] for r in rows], label="eval top-5")
    if any("ema_top1" in r for r in rows):
        ax_acc.plot(epochs, [r.get("ema_top1", float("nan")) for r in rows], label="EMA top-1")
    ax_loss.set_xlabel("epoch")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("%")
    ax_loss.legend()
    ax_acc.legend()
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=80)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return True


class Progress:
    """One self-overwriting line per epoch on a terminal (loss, lr, img/s); elsewhere (a log file) a
    plain line every `log_interval` batches."""

    def __init__(self, total: int, epoch: int, epochs: int, stream: TextIO | None = None,
                 enabled: bool | None = None, log_interval: int = 0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.enabled = enabled if enabled is not None else True
        self.total, self.epoch, self.epochs, self.log_interval = total, epoch, epochs, log_interval
        self.last = 0.0

    def update(self, done: int, loss: float, lr: float, img_per_sec: float) -> None:
        """Redraw at most ten times a second, and always on the last batch."""
        if not self.enabled:
            return
        if not self.tty:
            if self.log_interval > 0 and done % self.log_interval == 0 and done < self.total:
                self.stream.write(f"epoch {self.epoch + 1}/{self.epochs} batch {done}/{self.total}: loss {loss:.4f} "
                                  f"lr {lr:.3g} {img_per_sec:.0f} img/s\n")
                self.stream.flush()
            return
        now = time.monotonic()
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        width = 24
        filled = int(width * done / max(1, self.total))
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\repoch {self.epoch + 1}/{self.epochs} [{bar}] {done}/{self.total} "
                          f"loss {loss:.4f} lr {lr:.3g} {img_per_sec:.0f} img/s ")
        self.stream.flush()

    def close(self) -> None:
        """End the line."""
        if self.enabled and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
