"""Experiment tracking: TensorBoard event files and an MLflow store, both local and offline, hold the
same per-epoch numbers as summary.csv; a resumed run continues the same MLflow run."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

from effnet.cli import main
from effnet.train.tracking import epoch_metrics, tracked_params
from effnet.train import TrainConfig
from train_fixtures import TINY_FLAGS, make_image_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tracking") / "data", classes=2, per_class=4, val_per_class=2)


def summary_top1(out: Path) -> list[float]:
    return [float(r["eval_top1"]) for r in csv.DictReader((out / "summary.csv").open())]


def test_metric_names_and_params() -> None:
    row = {"epoch": 3, "train_loss": 1.5, "eval_loss": 2.0, "eval_top1": 50.0, "eval_top5": 100.0, "lr": 0.01,
           "img/s": 12.0, "ema_top1": 55.0}
    assert epoch_metrics(row) == {"train/loss": 1.5, "eval/loss": 2.0, "eval/top1": 50.0, "eval/top5": 100.0,
                                  "lr": 0.01, "img_per_sec": 12.0, "ema/top1": 55.0}
    params = tracked_params(TrainConfig(class_names=["a", "b", "c"], lr=0.5))
    assert params["lr"] == "0.5" and params["num_data_classes"] == "3" and "class_names" not in params


def test_tensorboard_and_mlflow_hold_the_summary_across_a_resume(tmp_path: Path, data: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    has_tensorboard, has_mlflow = (importlib.util.find_spec(m) is not None for m in ("tensorboard", "mlflow"))
    if not (has_tensorboard or has_mlflow):
        pytest.skip("neither tensorboard nor mlflow is installed")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    flags = (["--log-tensorboard"] if has_tensorboard else []) + \
        (["--log-mlflow", "--mlflow-uri", uri, "--mlflow-experiment", "tiny"] if has_mlflow else [])
    out = tmp_path / "run"
    assert main(["-q", "train", *TINY_FLAGS, "--data-dir", str(data), "--output", str(out), "--epochs", "1",
                 *flags]) == 0
    # the tracking settings come back with the checkpoint's own settings
    assert main(["-q", "train", "--resume", str(out / "last.pth.tar"), "--epochs", "2"]) == 0
    expected = summary_top1(out)
    assert len(expected) == 2
    if has_tensorboard:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        events = EventAccumulator(str(out / "tensorboard"))
        events.Reload()
        top1 = events.Scalars("eval/top1")
        assert [e.step for e in top1] == [0, 1]
        assert [e.value for e in top1] == pytest.approx(expected, abs=1e-3)
        assert {"train/loss", "eval/loss", "lr", "img_per_sec"} <= set(events.Tags()["scalars"])
    if has_mlflow:
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
        assert run.info.status == "FINISHED" and run.data.params["model"] == TINY_FLAGS[1]
        assert run.data.tags["effnet.run_dir"] == str(out.resolve())
        history = sorted(client.get_metric_history(run.info.run_id, "eval/top1"), key=lambda m: m.step)
        assert [m.step for m in history] == [0, 1]
        assert [m.value for m in history] == pytest.approx(expected, abs=1e-3)


def test_missing_tracker_names_its_extra(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # importing it now fails as if it were not installed
    rc = main(["-q", "train", *TINY_FLAGS, "--data-dir", str(data), "--epochs", "1", "--output",
               str(tmp_path / "run"), "--log-mlflow"])
    err = capsys.readouterr().err
    assert rc == 2 and "--log-mlflow needs mlflow" in err and "pip install 'effnet[mlflow]'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, needle", [
    (["--log-mlflow", "--mlflow-uri", "ftp://host/runs"], "--mlflow-uri: has the unsupported scheme 'ftp:'"),
    (["--log-mlflow", "--mlflow-uri", ""], "--mlflow-uri: must not be empty"),
    (["--log-mlflow", "--mlflow-uri", "FILE"], "--mlflow-uri: names a file, not a folder"),
    (["--log-mlflow", "--mlflow-uri", "FILE_URI"], "--mlflow-uri: names a file, not a folder"),
    (["--log-mlflow", "--mlflow-experiment", " "], "--mlflow-experiment: must not be empty"),
    (["--log-tensorboard", "--resume", "RUN/last.pth.tar", "--output", "RUN"], "--log-tensorboard: "),
])
def test_bad_tracking_settings_are_refused_before_any_work(tmp_path: Path, data: Path, flags: list[str],
                                                           needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a store")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").write_text("not a folder")
    swap = {"FILE": str(tmp_path / "notes.txt"), "FILE_URI": (tmp_path / "notes.txt").as_uri(),
            "RUN/last.pth.tar": str(tmp_path / "run" / "last.pth.tar"), "RUN": str(tmp_path / "run")}
    before = sorted(p.name for p in tmp_path.rglob("*"))
    try:
        rc = main(["-q", "train", *TINY_FLAGS, "--data-dir", str(data), "--epochs", "1", "--output",
                   str(tmp_path / "out"), *[swap.get(f, f) for f in flags]])
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error: " in line]
    assert rc == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing replaced
