"""Every registered model: manifest, shapes, API behaviour, CondConv batch independence."""

from __future__ import annotations

import pytest
import torch

import effnet
from conftest import MODELS, reference_manifest

SMALL = 64  # input size for shape and gradient tests: fast, still exercises every stride


PUBLISHED = ["efficientnet_b1_pruned", "efficientnet_b2_pruned", "efficientnet_b3_pruned",
             "tf_efficientnet_cc_b0_4e", "tf_efficientnet_cc_b0_8e", "tf_efficientnet_cc_b1_8e"]


def test_registry_lists_every_variant_and_filters() -> None:
    # the variant rows, sorted; a row added to variants.py is listed (and tested) with no other change
    assert MODELS == sorted(v.name for v in effnet.variants.VARIANTS)
    assert set(PUBLISHED) <= set(MODELS)
    assert effnet.list_models("*cc*") == [n for n in MODELS if "_cc_" in n]
    assert effnet.list_models(["*b1*", "*b2*"]) == [n for n in MODELS if "b1" in n or "b2" in n]
    assert effnet.list_models("*pruned", exclude_filters="*b3*") == [
        n for n in MODELS if n.endswith("pruned") and "b3" not in n]


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_manifest_matches_published_checkpoint(name: str) -> None:
    ref = reference_manifest(name)
    model = effnet.create_model(name)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["param_count"]
    assert model.num_features == ref["num_features"]
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in model.pretrained_cfg.items() if k != "file"}
    assert cfg == ref["pretrained_cfg"]


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_finite(name: str) -> None:
    model = effnet.create_model(name, num_classes=7, drop_rate=0.2, drop_path_rate=0.2).train()
    x = torch.randn(2, 3, SMALL, SMALL + 5)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", MODELS)
def test_features_only_matches_reference_feature_info(name: str) -> None:
    ref = reference_manifest(name)["features_only"]
    model = effnet.create_model(name, features_only=True).eval()
    assert model.feature_info.channels() == ref["channels"]
    assert model.feature_info.reduction() == ref["reduction"]
    assert model.feature_info.module_name() == ref["module"]
    feats = model(torch.randn(1, 3, SMALL, SMALL))
    assert [f.shape[1] for f in feats] == ref["channels"]
    assert [SMALL // f.shape[-1] for f in feats] == ref["reduction"]
    picked = effnet.create_model(name, features_only=True, out_indices=(1, -1))
    assert picked.feature_info.channels() == [ref["channels"][1], ref["channels"][-1]]
    assert [f.shape[1] for f in picked(torch.randn(1, 3, SMALL, SMALL))] == picked.feature_info.channels()


@pytest.mark.parametrize("name", MODELS)
def test_head_api(name: str) -> None:
    model = effnet.create_model(name).eval()
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, 2, 2)
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        assert torch.allclose(model.forward_head(feats), model.get_classifier()(pooled))
        assert model.reset_classifier(10) is model
        assert model(x).shape == (2, 10)
        model.reset_classifier(0)
        assert torch.allclose(model(x), pooled)
        model.reset_classifier(5, global_pool="catavgmax")
        assert model.get_classifier().in_features == 2 * model.num_features
        assert model(x).shape == (2, 5)


def test_num_classes_zero_and_global_pool_variants() -> None:
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        m0 = effnet.create_model("efficientnet_b1_pruned", num_classes=0).eval()
        assert m0(x).shape == (1, 1280)
        mx = effnet.create_model("efficientnet_b1_pruned", num_classes=0, global_pool="max").eval()
        mx.load_state_dict(m0.state_dict())
        assert torch.allclose(mx(x), m0.forward_features(x).amax((2, 3)))
        unpooled = effnet.create_model("efficientnet_b1_pruned", num_classes=0, global_pool="")
        assert unpooled.eval()(x).shape == (1, 1280, 2, 2)
    with pytest.raises(ValueError, match="global_pool"):
        effnet.create_model("efficientnet_b1_pruned", global_pool="mean")
    with pytest.raises(ValueError, match="num_classes=0"):
        effnet.create_model("efficientnet_b1_pruned", global_pool="")


@pytest.mark.parametrize("name", [n for n in MODELS if effnet.get_config(n).experts])
def test_condconv_routes_each_sample_independently(name: str) -> None:
    model = effnet.create_model(name).eval()
    x = torch.randn(4, 3, SMALL, SMALL)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(4)])
        permuted = model(x.flip(0)).flip(0)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together, permuted, rtol=1e-5, atol=1e-5)


def test_fresh_init_follows_the_reference_scheme() -> None:
    """He-normal fan-out convs and experts; routing layers uniform in 1/sqrt(fan_in + fan_out), not
    classifier-sized (1/sqrt(experts)), which saturates the routing sigmoids at init."""
    torch.manual_seed(0)
    model = effnet.create_model("tf_efficientnet_cc_b0_8e")
    routing = [m for n, m in model.named_modules() if n.endswith("routing_fn")]
    assert len(routing) == 3 + 4 + 1  # the last three stages of B0
    for m in routing:
        bound = (m.in_features + m.out_features) ** -0.5
        assert m.weight.abs().max().item() <= bound
        assert m.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)
        assert not m.bias.any()
    expert = model.blocks[6][0].conv_pwl  # 1x1 CondConv: (experts, out * in)
    fan_out = expert.out_chs  # 1x1, ungrouped
    assert expert.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
    assert model.classifier.weight.abs().max().item() <= model.num_classes ** -0.5


def test_grad_checkpointing_gives_same_gradients() -> None:
    torch.manual_seed(0)
    model = effnet.create_model("tf_efficientnet_cc_b0_4e", num_classes=3).eval()
    x = torch.randn(2, 3, SMALL, SMALL)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_drop_path_rate_grows_linearly_with_depth() -> None:
    model = effnet.create_model("efficientnet_b1_pruned", drop_path_rate=0.2)
    rates = [b.drop_path.p for stage in model.blocks for b in stage]
    assert rates[0] == 0.0 and rates == sorted(rates) and max(rates) < 0.2
    assert rates[-1] == pytest.approx(0.2 * (len(rates) - 1) / len(rates))


@pytest.mark.parametrize("bad", [torch.randn(3, SMALL, SMALL), torch.randn(1, 4, SMALL, SMALL),
                                 torch.randn(1, 1, 1, 3, SMALL, SMALL)])
def test_wrong_input_shape_is_a_clear_error(bad: torch.Tensor) -> None:
    model = effnet.create_model("efficientnet_b1_pruned")
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 3, H, W\); got"):
        model(bad)
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([1, 2, 3])


def test_in_chans() -> None:
    model = effnet.create_model("tf_efficientnet_cc_b0_4e", in_chans=1, num_classes=4).eval()
    assert model(torch.randn(2, 1, SMALL, SMALL)).shape == (2, 4)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.randn(2, 3, SMALL, SMALL))


def test_unknown_model_name_suggests_closest() -> None:
    with pytest.raises(effnet.UnknownModelError, match="did you mean tf_efficientnet_cc_b0_4e"):
        effnet.create_model("tf_efficientnet_cc_b0_4")
    with pytest.raises(effnet.UnknownModelError, match="known models"):
        effnet.create_model("resnet50")


def test_unknown_keyword_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="drop_connect"):
        effnet.create_model("efficientnet_b1_pruned", drop_connect=0.2)
    with pytest.raises(TypeError, match="bogus"):
        effnet.create_model("efficientnet_b1_pruned", pretrained_cfg_overlay=dict(bogus=1))


def test_out_indices_out_of_range() -> None:
    with pytest.raises(ValueError, match="out_indices"):
        effnet.create_model("efficientnet_b1_pruned", features_only=True, out_indices=(5,))


def test_model_info_has_seed_metadata() -> None:
    info = effnet.model_info("tf_efficientnet_cc_b1_8e")
    assert info["flops"] == 370427824 and info["file_size"] == 159206198
    assert info["image_size"] == 240 and info["crop_pct"] == 0.882
    assert info["recipe"]["lr"] == 0.256 and info["recipe"]["epochs"] == 350
    assert "CondConv" in info["paper"]
    pruned = effnet.model_info("efficientnet_b3_pruned")
    assert pruned["paper"] == "Knapsack Pruning with Inner Distillation" and pruned["recipe"] == {}
