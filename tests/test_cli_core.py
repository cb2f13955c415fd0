"""`effnet list` / `effnet info`, and the MAC counter behind them."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import effnet
from effnet.cli import main


@pytest.mark.parametrize("name", ["efficientnet_b2_pruned", "tf_efficientnet_cc_b0_8e"])
def test_mac_counter_agrees_with_torch_flop_counter(name: str) -> None:
    model = effnet.create_model(name).eval()
    size = (3, 96, 80)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(2, *size))
    assert effnet.count_macs(model, size, batch_size=2) * 2 * 2 == counter.get_total_flops()


def test_list_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "*cc_b0*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["model", "params", "(M)", "GMACs", "input", "crop"]
    assert [line.split()[0] for line in out[1:]] == ["tf_efficientnet_cc_b0_4e", "tf_efficientnet_cc_b0_8e"]
    assert out[1].split()[1:] == ["13.31", "0.397", "224", "0.875"]


def test_list_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "--format", "json", "efficientnet_b1*"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "efficientnet_b1_pruned" and row["params"] == 6331916
    assert row["gmacs"] == pytest.approx(0.391, abs=1e-3)


def test_info(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "efficientnet_b2_pruned", "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["flops"] == 878133915 and info["pretrained_cfg"]["hf_hub_id"] == "timm/efficientnet_b2_pruned.in1k"
    assert main(["info", "efficientnet_b2_pruned"]) == 0
    assert "Knapsack Pruning" in capsys.readouterr().out


def test_unknown_model_exits_2_without_traceback(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "efficientnet_b4_pruned"]) == 2
    err = capsys.readouterr().err
    assert "did you mean" in err and "Traceback" not in err


def test_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as e:
        main(["list", "--format", "yaml"])
    assert e.value.code == 2
