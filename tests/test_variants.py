"""The variant records: widths as data, equal to what the published checkpoints hold."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import effnet
import test_model_api
import test_models
import test_parity
from effnet.config import ModelConfig, PretrainedCfg, make_divisible
from conftest import FIXTURES, MODELS, reference_manifest

ROOT = Path(__file__).resolve().parents[1]


def _derive():
    spec = importlib.util.spec_from_file_location("derive", ROOT / "scripts" / "derive_pruned_widths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.derive


@pytest.mark.parametrize("name", [n for n in MODELS if effnet.get_config(n).pruned is not None])
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


def test_pretrained_cfg_overlay_is_the_one_merge() -> None:
    base = effnet.get_config("efficientnet_b1_pruned").pretrained
    # later sources win, JSON lists become tuples, keys that are no field are dropped unless strict
    run = base.overlay({"input_size": [3, 32, 32], "tag": "in1k"}, {"crop_pct": 1.0}, crop_pct=0.9,
                       label_names=["a", "b"])
    assert run.input_size == (3, 32, 32) and run.crop_pct == 0.9 and run.label_names == ("a", "b")
    assert run.url == base.url and base.input_size == (3, 240, 240)  # the record itself is unchanged
    with pytest.raises(TypeError, match="tag"):
        base.overlay({"tag": "in1k"}, strict=True)
    # the model's dict is the record's: label names (a list) only when set, no head entries for features
    assert "label_names" not in base.to_dict() and run.to_dict()["label_names"] == ["a", "b"]
    assert {"num_classes", "classifier"}.isdisjoint(base.to_dict(head=False))
    model = effnet.create_model("efficientnet_b1_pruned", pretrained_cfg_overlay=dict(crop_pct=1.0))
    assert model.pretrained_cfg == base.overlay(crop_pct=1.0).to_dict() == model.default_cfg
    with pytest.raises(TypeError, match="pretrained_cfg_overlay: .*bogus"):
        effnet.create_model("efficientnet_b1_pruned", pretrained_cfg_overlay=dict(bogus=1))


# A variant added at runtime, as a new row of variants.py would be: tiny, CondConv, no published weights.
TINY = ModelConfig("efficientnet_test_tiny_2e", width_mult=0.25, depth_mult=0.25, experts=2,
                   pretrained=PretrainedCfg(input_size=(3, 32, 32), pool_size=(1, 1)))


@pytest.fixture
def tiny_variant(monkeypatch: pytest.MonkeyPatch) -> str:
    # a copy of the registry, so the variant is gone after this test
    monkeypatch.setattr(effnet.registry, "_REGISTRY", dict(effnet.registry._REGISTRY))
    effnet.register_variant(TINY)
    return TINY.name


def test_register_variant_refuses_clashes_and_bad_names(tiny_variant: str) -> None:
    with pytest.raises(ValueError, match="already registered"):
        effnet.register_variant(TINY)
    with pytest.raises(ValueError, match="variant name"):
        effnet.register_variant(ModelConfig("tiny.in1k"))
    with pytest.raises(TypeError, match="ModelConfig"):
        effnet.register_variant("efficientnet_b0")


def test_a_variant_without_weights_runs_the_model_tests_and_skips_parity(tiny_variant: str) -> None:
    name = tiny_variant
    assert name in effnet.list_models() and effnet.is_model(name)
    assert not effnet.list_models(name, pretrained=True) and effnet.registry.pretrained_tags(TINY) == []
    # the tests parametrised over list_models() run on it unchanged ...
    test_models.test_forward_backward_finite(name)
    test_models.test_condconv_routes_each_sample_independently(name)
    test_model_api.test_forward_intermediates(name)
    test_model_api.test_prune_intermediate_layers(name)
    # ... and those comparing with the published checkpoint or the reference's outputs skip, saying why
    reason = f"{name} has no published weights"
    checks = [lambda: test_parity.test_logits_and_pre_logits(name, "native"),
              lambda: test_parity.test_features_only(name), lambda: test_parity.test_any_batch_size(name),
              lambda: test_models.test_state_dict_manifest_matches_published_checkpoint(name),
              lambda: test_model_api.test_classifier_feature_info_is_timms_list(name)]
    for check in checks:
        with pytest.raises(pytest.skip.Exception, match=reason):
            check()
    with pytest.raises(effnet.PretrainedUnavailableError):
        effnet.create_model(name, pretrained=True)
