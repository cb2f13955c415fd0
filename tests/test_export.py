"""Export round trips: the written file, run by onnxruntime / TorchScript / torch.export, matches PyTorch
at batch 1 and 3 with a dynamic batch dimension."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import effnet
from conftest import MODELS, parity_state_dict
from effnet.cli import main
from effnet.export import ExportError, export_model, verify

pytest.importorskip("onnxruntime")


def _model(name: str) -> torch.nn.Module:
    model = effnet.create_model(name).eval()
    effnet.registry.load_weights(model, parity_state_dict(name), "synthetic weights")
    return model


@pytest.mark.parametrize("name", MODELS)
def test_onnx_dynamic_batch_round_trip(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.onnx"
    errors = export_model(_model(name), out, "onnx", img_size=48, dynamic_batch=True)
    assert set(errors) == {1, 3} and max(errors.values()) <= 1e-4
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == [out.name], "temporary file left behind"


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torchscript_and_pt2_condconv(fmt: str, tmp_path: Path) -> None:
    model = _model("tf_efficientnet_cc_b0_4e")
    out = tmp_path / f"m.{fmt}"
    errors = export_model(model, out, fmt, img_size=48, dynamic_batch=True)
    assert set(errors) == {1, 3} and max(errors.values()) <= 1e-4
    # verify() fails loudly when the file does not reproduce the model
    other = _model("tf_efficientnet_cc_b0_4e")
    with torch.no_grad():
        other.classifier.bias.add_(1.0)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        verify(fmt, out, other, (48, 48), (1,))


def test_cli_export_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b1.onnx"
    assert main(["export", "--model", "efficientnet_b1_pruned", "--format", "onnx", "--output", str(out),
                 "--img-size", "40"]) == 2
    assert "no weights" in capsys.readouterr().err and not out.exists()
    assert main(["export", "--model", "efficientnet_b1_pruned", "--format", "onnx", "--output", str(out),
                 "--dynamic-batch", "--img-size", "40", "--random-weights"]) == 0
    assert "batch 3" in capsys.readouterr().out and out.is_file()
    assert main(["export", "--model", "efficientnet_b1_pruned", "--format", "onnx", "--output", str(tmp_path),
                 "--img-size", "40", "--random-weights"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["export", "--model", "no_such_model", "--format", "onnx", "--output", str(out)]) == 2
    assert "no_such_model" in capsys.readouterr().err
