"""What a run leaves in its output folder besides checkpoints: args.yaml, summary.csv, a plot of the
curves, and the progress bar on the terminal."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from .. import outputs, progress
from .checkpoint import atomic_write_text

SUMMARY_COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "img/s")
EMA_COLUMNS = ("ema_loss", "ema_top1", "ema_top5")
SKIP_COLUMNS = ("train_skipped", "eval_skipped")
_LOG = logging.getLogger(__name__)


def write_args_yaml(path: Path, values: dict[str, Any]) -> None:
    """The run's settings, loadable again with `--config`."""
    import yaml
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))


def write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    """summary.csv from the full history (rewritten whole, so a resumed run never duplicates rows)."""
    columns = list(SUMMARY_COLUMNS)
    if any("ema_top1" in r for r in rows):
        columns[5:5] = EMA_COLUMNS
    if any(r.get("train_skipped") or r.get("eval_skipped") for r in rows):
        columns += SKIP_COLUMNS  # only runs that met unreadable images get the count columns
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
    try:
        outputs.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    finally:
        plt.close(fig)
    return True


class Progress:
    """An epoch's progress: a tqdm bar (loss, lr, img/s) when stderr is a terminal; otherwise (a log
    file, CI) an INFO line every `log_interval` batches, as timm logs."""

    def __init__(self, total: int, epoch: int, epochs: int, enabled: bool = True, log_interval: int = 0) -> None:
        self.total, self.epoch, self.epochs, self.log_interval = total, epoch, epochs, log_interval
        self.bar = progress.bar(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", show=enabled)
        self.log_lines = enabled and self.bar.disable and log_interval > 0

    def update(self, done: int, loss: float, lr: float, img_per_sec: float) -> None:
        """`done` batches of `total` are finished (counting any done before a resume)."""
        stats = f"loss {loss:.4f} lr {lr:.3g} {img_per_sec:.0f} img/s"
        if not self.bar.disable:
            self.bar.set_postfix_str(stats, refresh=False)
            self.bar.update(done - self.bar.n)
        elif self.log_lines and done % self.log_interval == 0 and done < self.total:
            _LOG.info(f"epoch {self.epoch + 1}/{self.epochs} batch {done}/{self.total}: {stats}")

    def close(self) -> None:
        """Remove the bar (the epoch's summary line follows)."""
        self.bar.close()
