"""Numerical parity with the reference implementation on deterministic synthetic weights.

The expected outputs were computed by the reference implementation (scripts/make_parity_fixtures.py)
and are committed; these tests need nothing but effnet.
"""

from __future__ import annotations

import pytest
import torch

import effnet
from conftest import MODELS, parity_fixture, parity_state_dict, reference_manifest
from synthetic import parity_sizes, synthetic_input

RTOL = 1e-5  # max abs error relative to the reference output's max abs value


def assert_parity(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    err = (ours - ref).abs().max().item() / ref.abs().max().item()
    assert err <= RTOL, f"{what}: relative error {err:.2e} > {RTOL:.0e}"


def _model(name: str, **kwargs: object) -> torch.nn.Module:
    model = effnet.create_model(name, **kwargs).eval()
    effnet.registry.load_weights(model, parity_state_dict(name), "synthetic weights")
    return model


def _native(name: str) -> int:
    return reference_manifest(name)["pretrained_cfg"]["input_size"][-1]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("tag", ["native", "odd"])
@torch.no_grad()
def test_logits_and_pre_logits(name: str, tag: str) -> None:
    expected = parity_fixture(name)
    model = _model(name)
    x = synthetic_input(*parity_sizes(_native(name))[tag])
    # the sum's rounding depends on how many threads reduce it, so compare within float32 rounding
    drift = (x.sum().reshape(1) - expected[f"{tag}.input_sum"]).abs().item()
    assert drift <= 1e-6 * x.abs().sum().item(), f"synthetic input drifted by {drift:.3g}"
    assert_parity(model(x), expected[f"{tag}.logits"], f"{name} {tag} logits")
    pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert_parity(pre, expected[f"{tag}.pre_logits"], f"{name} {tag} pre-logits")


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_features_only(name: str) -> None:
    expected = parity_fixture(name)
    model = _model(name, features_only=True)
    feats = model(synthetic_input(*parity_sizes(_native(name))["features"]))
    assert len(feats) == 5
    for i, f in enumerate(feats):
        assert_parity(f, expected[f"features.{i}"], f"{name} feature level {i}")


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_any_batch_size(name: str) -> None:
    """Each sample's logits are the reference's whether it runs alone or in a larger batch."""
    expected = parity_fixture(name)["native.logits"]
    model = _model(name)
    x = synthetic_input(*parity_sizes(_native(name))["native"])
    for i in range(x.shape[0]):
        assert_parity(model(x[i:i + 1]), expected[i:i + 1], f"{name} sample {i} alone")
    doubled = model(torch.cat([x, x.flip(0)]))
    assert_parity(doubled, torch.cat([expected, expected.flip(0)]), f"{name} batch of 6")
