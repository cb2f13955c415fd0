"""Optional experiment tracking: a run's settings and per-epoch metrics sent to TensorBoard
(`--log-tensorboard`, event files in OUTPUT/tensorboard) and/or MLflow (`--log-mlflow`), beside
the summary.csv every run writes anyway.

Metric names are the same for both: train/loss, eval/loss, eval/top1, eval/top5, ema/loss,
ema/top1, ema/top5, lr, img_per_sec; the step is the epoch (0-based, as in summary.csv). A resumed
run appends to the same TensorBoard folder and continues the same MLflow run (found by its
`effnet.run_dir` tag), so its curves stay one curve.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ..errors import EffnetError, first_line
from ..extras import require
from .config import TrainConfig

_LOG = logging.getLogger(__name__)

# summary.csv column -> tracked metric name
METRIC_NAMES = {"train_loss": "train/loss", "eval_loss": "eval/loss", "eval_top1": "eval/top1",
                "eval_top5": "eval/top5", "ema_loss": "ema/loss", "ema_top1": "ema/top1", "ema_top5": "ema/top5",
                "lr": "lr", "img/s": "img_per_sec"}
RUN_DIR_TAG = "effnet.run_dir"


def tracked_params(cfg: TrainConfig) -> dict[str, str]:
    """The run's settings as flat strings (class names summarised: trackers cap a value's length)."""
    values = cfg.to_dict()
    names = values.pop("class_names", [])
    values["num_data_classes"] = len(names)
    return {k: str(v) for k, v in values.items()}


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A summary.csv row as tracked metric names and floats."""
    return {METRIC_NAMES[k]: float(v) for k, v in row.items() if k in METRIC_NAMES and v is not None}


class TensorBoardTracker:
    """Scalars in OUTPUT/tensorboard (open it with `tensorboard --logdir OUTPUT`)."""

    def __init__(self, cfg: TrainConfig, output_dir: Path) -> None:
        require("tensorboard", extra="tensorboard", purpose="--log-tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        self.log_dir = output_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        if not cfg.resume:
            self.writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in tracked_params(cfg).items()))

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        for name, value in epoch_metrics(row).items():
            self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class MLflowTracker:
    """One MLflow run per effnet run, in `--mlflow-uri` (else MLFLOW_TRACKING_URI, else MLflow's
    default local store) under the experiment `--mlflow-experiment`."""

    def __init__(self, cfg: TrainConfig, output_dir: Path) -> None:
        require("mlflow", extra="mlflow", purpose="--log-mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        try:
            self.client = MlflowClient(tracking_uri=cfg.mlflow_uri or None)
            self.uri = self.client.tracking_uri
            experiment = self.client.get_experiment_by_name(cfg.mlflow_experiment)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else self.client.create_experiment(cfg.mlflow_experiment))
            run_dir = str(output_dir.resolve())
            previous = self._previous_run(experiment_id, run_dir) if cfg.resume else None
            if previous is not None:
                self.run_id = previous
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                run = self.client.create_run(experiment_id, run_name=output_dir.name,
                                             tags={RUN_DIR_TAG: run_dir, "effnet.model": cfg.model})
                self.run_id = run.info.run_id
                self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in tracked_params(cfg).items()])
        except EffnetError:
            raise
        except Exception as e:  # noqa: BLE001 - MLflow's store errors come in many types
            where = cfg.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or "MLflow's default store"
            raise EffnetError(f"--log-mlflow: cannot use the tracking store {where}: {type(e).__name__}: "
                              f"{first_line(e)}") from None

    def _previous_run(self, experiment_id: str, run_dir: str) -> str | None:
        """The run a resumed training run logged to before, if the store still has it."""
        if "'" in run_dir:  # cannot be quoted in MLflow's filter syntax: start a new run instead
            return None
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'",
                                        max_results=1)
        return found[0].info.run_id if found else None

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in epoch_metrics(row).items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class Tracking:
    """The trackers a run asked for (none, one or both), as one context manager: the MLflow run ends
    FINISHED, KILLED (Ctrl-C) or FAILED (an error) with the block."""

    def __init__(self, cfg: TrainConfig, output_dir: Path, enabled: bool = True) -> None:
        self.trackers: list[Any] = []
        if not enabled:  # other processes under torchrun: rank 0 tracks for all
            return
        if cfg.log_tensorboard:
            self.trackers.append(TensorBoardTracker(cfg, output_dir))
            _LOG.info(f"TensorBoard events in {self.trackers[-1].log_dir}")
        if cfg.log_mlflow:
            self.trackers.append(MLflowTracker(cfg, output_dir))
            _LOG.info(f"MLflow run {self.trackers[-1].run_id} in {self.trackers[-1].uri}")

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """Send one epoch's summary.csv row to every tracker; a tracker that fails (a server gone away)
        is reported and dropped, and training goes on."""
        for tracker in list(self.trackers):
            try:
                tracker.log_epoch(epoch, row)
            except Exception as e:  # noqa: BLE001 - tracking is a side channel; the run's files still hold it all
                _LOG.warning(f"{type(tracker).__name__} failed at epoch {epoch} and is switched off: "
                             f"{type(e).__name__}: {e}")
                self.trackers.remove(tracker)

    def __enter__(self) -> "Tracking":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: Any) -> None:
        status = "FINISHED" if exc_type is None else "KILLED" if exc_type is KeyboardInterrupt else "FAILED"
        for tracker in self.trackers:
            try:
                tracker.close(status)
            except Exception as e:  # noqa: BLE001 - closing a tracker must not hide the run's own outcome
                _LOG.warning(f"could not close {type(tracker).__name__}: {e}")
