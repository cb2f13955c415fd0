"""TorchScript and torch.fx on every registered model: outputs (and gradients) equal eager ones;
size-dependent 'SAME' padding, the input check and CondConv's per-sample paths stay single calls
in an FX graph; FX-based feature extraction works on the result."""

from __future__ import annotations

import warnings

import pytest
import torch

import effnet
from conftest import MODELS
from effnet.layers import CondConv2d, Conv2dSame, get_notrace_functions, get_notrace_modules

ODD = (2, 3, 21, 19)  # odd, non-square: strided convs pad asymmetrically


def _grads(model: torch.nn.Module, fn: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = fn(x)
    params = [p for p in model.parameters() if p.requires_grad]
    return out, list(torch.autograd.grad(out.logsumexp(1).sum(), params))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torchscript_matches_eager_in_eval_and_train(name: str) -> None:
    model = effnet.create_model(name, num_classes=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in newer torch
        scripted = torch.jit.script(model)
    x = torch.randn(*ODD)
    with torch.no_grad():
        model.eval(), scripted.eval()
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-6)
    model.train(), scripted.train()
    out_eager, g_eager = _grads(model, model, x)
    out_script, g_script = _grads(model, scripted, x)
    torch.testing.assert_close(out_script, out_eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_script, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_fx_symbolic_trace_matches_eager(name: str) -> None:
    model = effnet.create_model(name, num_classes=7).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(*ODD)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    # the size-dependent padding is a call, not a constant of the traced size
    torch.testing.assert_close(traced(x[..., :16, :17]), model(x[..., :16, :17]), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 3, H, W\)"):
        traced(torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize("name", ["efficientnet_b1_pruned", "tf_efficientnet_cc_b0_4e"])
def test_fx_graph_traced_in_train_mode_matches_gradients(name: str) -> None:
    """BatchNorm on batch statistics; drop rates are 0 (a symbolic trace fixes dropout's mode)."""
    model = effnet.create_model(name, num_classes=7).train()
    x = torch.randn(*ODD)
    traced = torch.fx.symbolic_trace(model)
    out_eager, g_eager = _grads(model, model, x)
    out_fx, g_fx = _grads(model, traced, x)
    torch.testing.assert_close(out_fx, out_eager, rtol=0, atol=0)
    for a, b in zip(g_fx, g_eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_notrace_registries_cover_the_untraceable_parts() -> None:
    assert {CondConv2d, Conv2dSame} <= set(get_notrace_modules())
    names = {f.__name__ for f in get_notrace_functions()}
    assert {"_static_or_same_pad", "check_input", "condconv_pointwise", "condconv_grouped",
            "condconv_depthwise_taps"} <= names
    graph = torch.fx.symbolic_trace(effnet.create_model("tf_efficientnet_cc_b0_4e").eval()).graph
    called = {getattr(n.target, "__name__", "") for n in graph.nodes if n.op == "call_function"}
    assert {"check_input", "_static_or_same_pad", "condconv_pointwise", "condconv_grouped"} <= called


@pytest.mark.parametrize("name", ["efficientnet_b2_pruned", "tf_efficientnet_cc_b0_8e"])
def test_fx_feature_extraction_matches_getter_with_gradients(name: str) -> None:
    model = effnet.create_model(name).train()
    fx_net = effnet.features.wrap_features(model, "fx", out_indices=(0, 2, 4))
    assert "classifier" not in dict(fx_net.graph_module.named_children())  # the unused head is gone
    x = torch.randn(*ODD)
    fx_params = {k.removeprefix("graph_module."): p for k, p in fx_net.named_parameters()}
    fx_out = fx_net(x)
    fx_grads = torch.autograd.grad(sum(t.square().mean() for t in fx_out), list(fx_params.values()))
    getter = effnet.features.wrap_features(model, "getter", out_indices=(0, 2, 4))
    ref_params = {k.removeprefix("model."): p for k, p in getter.named_parameters()}
    assert sorted(ref_params) == sorted(fx_params)
    ref_out = getter(x)
    ref_grads = dict(zip(ref_params, torch.autograd.grad(sum(t.square().mean() for t in ref_out),
                                                         list(ref_params.values()))))
    for a, b in zip(fx_out, ref_out):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for key, g in zip(fx_params, fx_grads):
        torch.testing.assert_close(g, ref_grads[key], rtol=0, atol=0, msg=key)
    with pytest.raises(ValueError, match="expects input of shape"):
        fx_net(torch.randn(1, 1, 32, 32))
