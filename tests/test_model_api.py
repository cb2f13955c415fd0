"""The timm 1.0 model API on every registered model: feature_info, forward_intermediates,
prune_intermediate_layers, features_only wrappers, default_cfg, grad checkpointing, group_matcher,
and argument checks. Expected behaviour is timm's documented one (indices: None = all, int n = the
last n, sequence = those levels with negatives from the end; stop_early ends at the deepest
requested level; the 'getter' wrapper prunes the classifier; feature configs drop head entries)."""

from __future__ import annotations

import copy
import re
from functools import lru_cache

import pytest
import torch

import effnet
from conftest import MODELS, reference_manifest

SMALL = 32  # every stride still applies: the last level is 1x1


@lru_cache(maxsize=None)
def _pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A classifier and a features_only model with the same weights, in eval mode (shared between
    tests: copy before changing them)."""
    model = effnet.create_model(name).eval()
    feats = effnet.create_model(name, features_only=True).eval()
    feats.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith(effnet.registry.HEAD_PREFIXES)})
    return model, feats


@pytest.mark.parametrize("name", MODELS)
def test_classifier_feature_info_is_timms_list(name: str) -> None:
    ref = reference_manifest(name)["features_only"]
    model, feats = _pair(name)
    info = model.feature_info
    assert isinstance(info, list) and len(info) == 5
    assert [d["num_chs"] for d in info] == ref["channels"]
    assert [d["reduction"] for d in info] == ref["reduction"]
    assert [d["module"] for d in info] == ref["module"]
    assert [d["stage"] for d in info] == [int(m.split(".")[1]) + 1 for m in ref["module"]]
    assert feats.feature_info.get_dicts() == [dict(d, index=i) for i, d in enumerate(info)]


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_forward_intermediates(name: str) -> None:
    model, feats = _pair(name)
    x = torch.randn(1, 3, SMALL, SMALL + 3)
    levels = feats(x)
    final, inter = model.forward_intermediates(x)
    assert torch.equal(final, model.forward_features(x))
    assert len(inter) == 5 and all(torch.equal(a, b) for a, b in zip(inter, levels))
    # an int takes the last n levels; negative indices count from the end
    last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [t.shape for t in last2] == [t.shape for t in levels[3:]]
    picked = model.forward_intermediates(x, indices=[-5, -1], intermediates_only=True)
    assert [t.shape for t in picked] == [levels[0].shape, levels[4].shape]
    # stop_early: nothing runs after the deepest requested level, and no head is applied
    final, inter = model.forward_intermediates(x, indices=[0, 2], stop_early=True)
    assert torch.equal(final, levels[2]) and torch.equal(inter[1], levels[2])
    # NHWC permutes the intermediates only
    final, inter = model.forward_intermediates(x, indices=[1], output_fmt="NHWC")
    assert final.shape[1] == model.num_features
    assert torch.equal(inter[0], levels[1].permute(0, 2, 3, 1))
    # the features model answers the same calls
    assert all(torch.equal(a, b) for a, b in zip(feats.forward_intermediates(x, intermediates_only=True), levels))


@pytest.mark.parametrize("kwargs, match", [(dict(indices=6), "indices"), (dict(indices=0), "indices"),
                                          (dict(indices=[5]), "indices"), (dict(indices=[-6]), "indices"),
                                          (dict(output_fmt="NLC"), "output_fmt")])
def test_forward_intermediates_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    model = effnet.create_model("efficientnet_b1_pruned")
    with pytest.raises(ValueError, match=match):
        model.forward_intermediates(torch.randn(1, 3, 32, 32), **kwargs)


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_prune_intermediate_layers(name: str) -> None:
    model, feats = _pair(name)
    x = torch.randn(1, 3, SMALL, SMALL)
    levels = feats(x)
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([1, -3]) == [1, 2]
    assert len(pruned.blocks) == pruned.feature_info[2]["stage"]
    assert isinstance(pruned.conv_head, torch.nn.Identity) and isinstance(pruned.classifier, torch.nn.Identity)
    inter = pruned.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(inter, levels[1:3]))
    # keeping the last level keeps every stage, and the head conv unless prune_norm
    whole = copy.deepcopy(model)
    assert whole.prune_intermediate_layers(2, prune_head=False) == [3, 4]
    assert not isinstance(whole.conv_head, torch.nn.Identity)
    assert torch.equal(whole(x), model(x))
    # the features model drops stages and returns the kept levels
    feats = copy.deepcopy(feats)
    assert feats.prune_intermediate_layers(1) == [4] and len(feats.blocks) == 7
    assert feats.feature_info.channels() == [levels[4].shape[1]]
    assert torch.equal(feats(x)[0], levels[4])


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_feature_cls_wrappers_match_features_model(name: str) -> None:
    model, feats = _pair(name)
    model = copy.deepcopy(model)
    x = torch.randn(1, 3, SMALL, SMALL)
    expected = feats(x)
    # one classifier for all three, wrapped in the order that leaves it usable: the FX graph does not
    # change it, the hook wrapper removes its classifier, the getter prunes it
    for cls in ("fx", "hook", "getter"):
        net = effnet.features.wrap_features(model, cls, out_indices=(1, -1))
        out = net(x)
        assert [t.shape[1] for t in out] == net.feature_info.channels() == [expected[1].shape[1], expected[4].shape[1]]
        assert torch.equal(out[0], expected[1]) and torch.equal(out[1], expected[4]), cls
        assert net.default_cfg is net.pretrained_cfg and "num_classes" not in net.pretrained_cfg


@pytest.mark.parametrize("cls, prefix", [("getter", "model."), ("hook", "body."), ("fx", "graph_module.")])
def test_create_model_feature_cls(cls: str, prefix: str) -> None:
    net = effnet.create_model("tf_efficientnet_cc_b0_4e", features_only=True, feature_cls=cls, out_indices=(-2,))
    assert type(net).__name__ == effnet.features.FEATURE_CLASSES[cls].__name__
    assert next(iter(net.state_dict())) == prefix + "conv_stem.weight"
    assert net.feature_info.channels() == [112] and net.feature_info.out_indices == (3,)
    assert net.eval()(torch.randn(1, 3, SMALL, SMALL))[0].shape == (1, 112, 2, 2)
    nhwc = effnet.create_model("efficientnet_b1_pruned", features_only=True, feature_cfg=dict(output_fmt="NHWC"))
    assert isinstance(nhwc, effnet.features.FeatureGetterNet)
    assert [t.shape[-1] for t in nhwc.eval()(torch.randn(1, 3, SMALL, SMALL))] == nhwc.feature_info.channels()


def test_feature_cls_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="feature_cls"):
        effnet.create_model("efficientnet_b1_pruned", features_only=True, feature_cls="pyramid")
    with pytest.raises(ValueError, match="feature_cfg"):
        effnet.create_model("efficientnet_b1_pruned", features_only=True, feature_cfg=dict(flatten=True))
    with pytest.raises(ValueError, match="out_indices"):
        effnet.create_model("efficientnet_b1_pruned", features_only=True, out_indices=(0, 5))
    last3 = effnet.create_model("efficientnet_b1_pruned", features_only=True, out_indices=3)
    assert last3.feature_info.out_indices == (2, 3, 4)


@pytest.mark.parametrize("name", MODELS)
def test_default_cfg_alias_and_parameter_groups(name: str) -> None:
    model, feats = _pair(name)
    for m in (model, feats):
        assert m.default_cfg is m.pretrained_cfg
    assert "num_classes" not in feats.pretrained_cfg and model.pretrained_cfg["num_classes"] == 1000
    assert model.no_weight_decay() == set()
    for coarse in (False, True):
        matcher = model.group_matcher(coarse=coarse)
        stem = re.compile(matcher["stem"])
        block_res = [re.compile(p) for p, _ in matcher["blocks"]]
        groups = set()
        for pname, _ in model.named_parameters():
            if stem.match(pname):
                groups.add("stem")
            elif m := block_res[0].match(pname):
                groups.add(m.groups())
            elif block_res[1].search(pname):
                groups.add("head")
            else:
                assert pname.startswith("classifier."), pname
        per_block = len(effnet.get_config(name).blocks())
        assert len(groups) == 2 + (7 if coarse else per_block)


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps for backward during the forward pass, and the output."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return total, out


@pytest.mark.parametrize("name", ["efficientnet_b1_pruned", "tf_efficientnet_cc_b0_4e"])
def test_grad_checkpointing_same_gradients_and_statistics_less_memory(name: str) -> None:
    torch.manual_seed(0)
    plain = effnet.create_model(name, num_classes=5, drop_path_rate=0.2).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    x = torch.randn(2, 3, SMALL, SMALL)
    torch.manual_seed(1)
    plain_bytes, out = _saved_bytes(plain, x)
    out.logsumexp(1).sum().backward()
    torch.manual_seed(1)
    ckpt_bytes, out = _saved_bytes(ckpt, x)
    out.logsumexp(1).sum().backward()
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=n)
    # BatchNorm statistics are updated once, not again when a block is recomputed
    for a, b in zip(plain.buffers(), ckpt.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ckpt_bytes < 0.25 * plain_bytes, (ckpt_bytes, plain_bytes)
    # the getter wrapper checkpoints through its model too
    getter = effnet.create_model(name, features_only=True, feature_cls="getter")
    getter.set_grad_checkpointing()
    assert all(stage.grad_checkpointing for stage in getter.model.blocks)


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_classes=-1), "num_classes"), (dict(num_classes=2.5), "num_classes"),
    (dict(num_classes=True), "num_classes"), (dict(drop_rate=1.0), "drop_rate"),
    (dict(drop_rate=-0.1), "drop_rate"), (dict(drop_path_rate=1.5), "drop_path_rate"),
    (dict(drop_path_rate="0.1"), "drop_path_rate")])
def test_bad_counts_and_rates_are_rejected(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        effnet.create_model("efficientnet_b1_pruned", **kwargs)


def test_reset_classifier_rejects_bad_class_counts() -> None:
    model = effnet.create_model("efficientnet_b1_pruned", num_classes=4)
    for bad in (-3, 1.5, None):
        with pytest.raises(ValueError, match="num_classes"):
            model.reset_classifier(bad)
    assert model.num_classes == 4
