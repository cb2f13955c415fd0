"""optimize_for_inference exactness and the CondConv fast paths (formulations agree, batches independent)."""

from __future__ import annotations

import dataclasses
import shutil
import warnings

import pytest
import torch

import effnet
from conftest import MODELS, parity_state_dict
from effnet.errors import EffnetError
from effnet.layers import CondConv2d
from synthetic import synthetic_input


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def _model(name: str) -> torch.nn.Module:
    model = effnet.create_model(name).eval()
    effnet.registry.load_weights(model, parity_state_dict(name), "synthetic weights")
    return model


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_fp32_matches_plain_model(name: str) -> None:
    model = _model(name)
    x = synthetic_input(2, 96, 96)
    expected = model(x)
    fast = effnet.optimize_for_inference(model, input_size=96)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()), "BatchNorm left unfolded"
    assert _rel(fast(x), expected) <= 1e-5
    # another size than the static padding was fixed for still pads correctly
    y = synthetic_input(1, 75, 81)
    assert _rel(fast(y), model(y)) <= 1e-5
    # the original is untouched
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("units, warns", [((), True), (("amx_bf16",), False), (None, False)])
def test_bf16_warns_only_without_bf16_units(monkeypatch: pytest.MonkeyPatch, units: tuple[str, ...] | None,
                                             warns: bool) -> None:
    monkeypatch.setattr(effnet.optimize, "cpu_bf16_units", lambda: units)
    model = _model("efficientnet_b1_pruned")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        effnet.optimize_for_inference(model, dtype=torch.bfloat16)
        effnet.optimize_for_inference(model)  # fp32 never warns
    emulated = [w for w in caught if "no bf16 units" in str(w.message)]
    assert len(emulated) == (1 if warns else 0)


@torch.no_grad()
def test_options_and_errors() -> None:
    model = _model("tf_efficientnet_cc_b0_4e")
    x = synthetic_input(3, 64, 64)
    expected = model(x)
    plain_layout = effnet.optimize_for_inference(model, channels_last=False)
    assert _rel(plain_layout(x), expected) <= 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the no-bf16-units warning, tested below
        bf16 = effnet.optimize_for_inference(model, dtype=torch.bfloat16)
    out = bf16(x)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape and torch.isfinite(out).all()
    with pytest.raises(EffnetError, match="cannot be trained"):
        bf16.train()
    with pytest.raises(EffnetError, match="dtype"):
        effnet.optimize_for_inference(model, dtype=torch.float64)
    with pytest.raises(EffnetError, match="input_size"):
        effnet.optimize_for_inference(model, input_size=(1, 2, 3))


def _condconv(kernel: int, stride: int, depthwise: bool) -> CondConv2d:
    torch.manual_seed(0)
    chs = 12
    conv = CondConv2d(chs, chs if depthwise else 20, kernel, stride, groups=chs if depthwise else 1, experts=4)
    conv.bias = torch.nn.Parameter(torch.randn(conv.out_chs))
    return conv


def _per_sample_reference(conv: CondConv2d, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Each sample on its own with its own mixed kernel: the definition of CondConv."""
    outs = []
    for b in range(x.shape[0]):
        w = (r[b] @ conv.weight).view(conv.weight_shape)
        xb = effnet.layers.pad_same(x[b:b + 1], conv.kernel, conv.stride)
        outs.append(torch.nn.functional.conv2d(xb, w, conv.bias, conv.stride, groups=conv.groups))
    return torch.cat(outs)


@pytest.mark.parametrize("kernel,stride,depthwise", [(1, 1, False), (3, 1, True), (5, 2, True), (3, 2, True)])
def test_condconv_paths_agree_forward_and_backward(kernel: int, stride: int, depthwise: bool) -> None:
    conv = _condconv(kernel, stride, depthwise)
    x = torch.randn(3, 12, 11, 14)
    r = torch.rand(3, 4)
    expected = _per_sample_reference(conv, x, r)
    cases = {"nchw": x, "channels_last": x.contiguous(memory_format=torch.channels_last)}
    grads = {}
    for tag, xi in cases.items():
        xi = xi.clone().requires_grad_(True)
        out = conv(xi, r)
        assert _rel(out, expected) <= 1e-6, tag
        out.square().sum().backward()
        grads[tag] = (xi.grad.clone(), conv.weight.grad.clone())
        conv.weight.grad = None
    if depthwise:
        taps = effnet.layers.condconv_depthwise_taps(
            x if stride == 1 else effnet.layers.pad_same(x, kernel, stride), r @ conv.weight, conv.bias,
            kernel, stride, (kernel - 1) // 2 if stride == 1 else 0)
        assert _rel(taps, expected) <= 1e-6
    assert _rel(grads["channels_last"][0], grads["nchw"][0]) <= 1e-5
    assert _rel(grads["channels_last"][1], grads["nchw"][1]) <= 1e-5


@torch.no_grad()
def test_sample_does_not_depend_on_batch() -> None:
    model = effnet.optimize_for_inference(_model("tf_efficientnet_cc_b0_8e"), input_size=64)
    x = synthetic_input(4, 64, 64)
    together = model(x)
    for i in range(4):
        assert _rel(model(x[i:i + 1]), together[i:i + 1]) <= 1e-6


def test_compiles_without_graph_breaks() -> None:
    model = effnet.optimize_for_inference(_model("tf_efficientnet_cc_b0_4e"), input_size=64)
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(synthetic_input(2, 64, 64))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compile_option_matches_plain_model() -> None:
    """compile=True (inductor with frozen weights) gives the plain model's fp32 logits up to the
    compiler's reordered sums, really freezes, and still refuses training. A one-block-per-stage CondConv model
    keeps the compile short while covering every block kind."""
    cfg = dataclasses.replace(effnet.get_config("tf_efficientnet_cc_b0_4e"), depth_mult=0.1)
    model = effnet.build_model(cfg).eval()
    assert len([b for stage in model.blocks for b in stage]) == 7
    x = synthetic_input(2, 64, 64)
    fast = effnet.optimize_for_inference(model, input_size=64, compile=True)
    try:
        with torch.inference_mode():
            assert _rel(fast(x), model(x)) <= 1e-4
            with torch.profiler.profile() as prof:
                fast(x)
        # frozen: the static convs run on weights inductor prepacked for oneDNN
        assert any(e.name == "mkldnn::_convolution_pointwise" for e in prof.events())
        with pytest.raises(EffnetError):
            fast.train()
    finally:
        torch._dynamo.reset()


def test_training_modes_channels_last_and_checkpointing() -> None:
    """Channels-last gives the NCHW gradients up to rounding (other conv kernels, amplified by
    training-mode BatchNorm); gradient checkpointing recomputes exactly the same ones."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for channels_last, ckpt in [(False, False), (True, False), (True, True)]:
        torch.manual_seed(0)
        model = effnet.create_model("tf_efficientnet_cc_b0_4e", num_classes=10).train()
        model.set_grad_checkpointing(ckpt)
        xi = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            xi = x.contiguous(memory_format=torch.channels_last)
        model(xi).logsumexp(1).sum().backward()
        grads.append(model.blocks[2][0].conv_dw.weight.grad.clone())
    assert _rel(grads[1], grads[0]) <= 2e-3
    assert _rel(grads[2], grads[1]) <= 1e-5
