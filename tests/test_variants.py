"""The variant records: widths as data, equal to what the published checkpoints hold."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import effnet
from effnet.config import ModelConfig, make_divisible
from conftest import FIXTURES, reference_manifest

ROOT = Path(__file__).resolve().parents[1]


def _derive():
    spec = importlib.util.spec_from_file_location("derive", ROOT / "scripts" / "derive_pruned_widths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.derive


@pytest.mark.parametrize("name", ["efficientnet_b1_pruned", "efficientnet_b2_pruned", "efficientnet_b3_pruned"])
def test_pruned_widths_equal_the_checkpoint(name: str) -> None:
    stage_out, blocks = _derive()(reference_manifest(name))
    pruned = effnet.get_config(name).pruned
    assert list(pruned.stage_out) == stage_out
    assert [list(b) for b in pruned.blocks] == blocks


def test_depth_scaling_rounds_up() -> None:
    assert effnet.get_config("tf_efficientnet_cc_b0_4e").stage_depths() == [1, 2, 2, 3, 3, 4, 1]
    assert effnet.get_config("tf_efficientnet_cc_b1_8e").stage_depths() == [2, 3, 3, 4, 4, 5, 2]
    b3 = effnet.get_config("efficientnet_b3_pruned")
    assert b3.stage_depths() == [2, 3, 3, 5, 5, 6, 2]
    unpruned_b3 = ModelConfig("b3", width_mult=1.2, depth_mult=1.4)
    assert unpruned_b3.stage_depths() == b3.stage_depths()
    assert (unpruned_b3.stem_width, unpruned_b3.head_width) == (40, 1536)


def test_make_divisible() -> None:
    assert [make_divisible(v) for v in (16 * 1.1, 16 * 1.2, 32 * 1.2, 1280 * 1.1, 24 * 1.1)] == [16, 24, 40, 1408, 24]


def test_condconv_only_in_last_three_stages() -> None:
    for name in effnet.list_models("*cc*"):
        cfg = effnet.get_config(name)
        experts = {b.stage: b.experts for b in cfg.blocks()}
        assert [experts[s] for s in range(7)] == [0, 0, 0, 0] + [cfg.experts] * 3


def test_config_round_trips_through_json() -> None:
    for name in effnet.list_models():
        cfg = effnet.get_config(name)
        again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
    with pytest.raises(ValueError, match="unknown model config field"):
        ModelConfig.from_dict({"name": "x", "wdith_mult": 1.0})


def test_manifests_are_the_shared_reference() -> None:
    shared = ROOT.parent / "shared" / "reference"
    if not shared.is_dir():
        pytest.skip("../shared/reference is not beside this checkout")
    for path in (FIXTURES / "reference").glob("*.json"):
        assert json.loads(path.read_text()) == json.loads((shared / path.name).read_text())
