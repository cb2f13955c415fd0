"""effnet's optional native kernels (effnet.kernels): the depthwise convolution used in CPU training, against
PyTorch's own convolution, and the fallback when the kernels are off or cannot be built."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import effnet
from effnet import kernels
from effnet.layers import same_padding

needs_kernels = pytest.mark.skipif(kernels.load() is None, reason=f"native kernels {kernels.status()}")
CL = torch.channels_last


def same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], k, s)
    left, right = same_padding(x.shape[-1], k, s)
    return F.pad(x, [left, right, top, bottom])


def reference(x: torch.Tensor, w: torch.Tensor, k: int, s: int, per_sample: bool) -> torch.Tensor:
    """PyTorch's own 'SAME' depthwise conv: w (C, 1, k, k), or (B, C*k*k) per sample."""
    C = x.shape[1]
    if not per_sample:
        return F.conv2d(same_pad(x, k, s), w, None, s, 0, 1, C)
    return torch.cat([F.conv2d(same_pad(x[b:b + 1], k, s), w[b].view(C, 1, k, k), None, s, 0, 1, C)
                      for b in range(x.shape[0])])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


# (batch, channels, height, width, kernel, stride): odd channel counts exercise the vector tails, tiny
# maps the borders (a 5x5 kernel on 1x1 and 2x3 inputs), odd sizes TF's asymmetric 'SAME' padding
SHAPES = [(2, 16, 8, 8, 3, 1), (3, 21, 9, 7, 3, 2), (2, 37, 11, 11, 5, 1), (1, 61, 10, 13, 5, 2),
          (2, 33, 1, 1, 5, 1), (2, 19, 2, 3, 5, 2), (4, 8, 6, 6, 7, 1), (2, 130, 5, 5, 3, 1)]


@needs_kernels
@pytest.mark.parametrize("per_sample", [False, True], ids=["static", "per-sample"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_depthwise_matches_pytorch_fp32(shape: tuple[int, ...], per_sample: bool) -> None:
    from effnet.kernels.depthwise import depthwise_conv2d
    B, C, H, W, k, s = shape
    torch.manual_seed(0)
    x = torch.randn(B, C, H, W).contiguous(memory_format=CL).requires_grad_()
    w = (torch.randn(B, C * k * k) if per_sample else torch.randn(C, 1, k, k)).requires_grad_()
    g = torch.randn_like(reference(x, w, k, s, per_sample))
    y = depthwise_conv2d(x, w, None, k, s, per_sample)
    assert y.is_contiguous(memory_format=CL) and y.dtype == torch.float32
    gx, gw = torch.autograd.grad(y, (x, w), g)
    ref = reference(x, w, k, s, per_sample)
    rx, rw = torch.autograd.grad(ref, (x, w), g)
    assert rel(y, ref) < 1e-5 and rel(gx, rx) < 1e-5 and rel(gw, rw) < 1e-5
    assert gx.shape == x.shape and gw.shape == w.shape


@needs_kernels
@pytest.mark.parametrize("per_sample", [False, True], ids=["static", "per-sample"])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "x".join(map(str, s)))
def test_depthwise_bf16_accumulates_in_fp32(shape: tuple[int, ...], per_sample: bool) -> None:
    """bf16 activations in and out, fp32 inside: within bf16's rounding of the exact result on the same
    inputs. The native weight gradient is fp32, summed in fp32 (oneDNN's, for 3x3 static, is bf16)."""
    from effnet.kernels.depthwise import depthwise_conv2d
    B, C, H, W, k, s = shape
    torch.manual_seed(0)
    x = torch.randn(B, C, H, W).bfloat16().contiguous(memory_format=CL).requires_grad_()
    w = (torch.randn(B, C * k * k) if per_sample else torch.randn(C, 1, k, k)).requires_grad_()
    y = depthwise_conv2d(x, w, None, k, s, per_sample)
    assert y.dtype == torch.bfloat16
    g = torch.randn(y.shape).bfloat16()
    gx, gw = torch.autograd.grad(y, (x, w), g)
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    ref = reference(x64, w64, k, s, per_sample)
    rx, rw = torch.autograd.grad(ref, (x64, w64), g.double())
    assert gx.dtype == torch.bfloat16 and gw.dtype == torch.float32
    assert rel(y, ref) < 1e-2 and rel(gx, rx) < 1e-2 and rel(gw, rw) < 1e-2
    if per_sample or k > 3 or s > 1:
        assert rel(gw, rw) < 1e-4


def _train_grads(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train().zero_grad()
    torch.nn.functional.cross_entropy(model(x), torch.arange(x.shape[0]) % 10).backward()
    return {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}


@needs_kernels
@pytest.mark.parametrize("name", ["tf_efficientnet_cc_b0_4e", "efficientnet_b1_pruned"])
def test_training_step_as_accurate_as_pytorch(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole model's fp32 gradients (channels-last, train mode) with the native kernels are as close to
    float64's as PyTorch's own fp32 convs are (float64 never takes the native path)."""
    from effnet.kernels import depthwise
    torch.manual_seed(0)
    model = effnet.create_model(name, num_classes=10).to(memory_format=CL)
    x = torch.randn(3, 3, 64, 64).contiguous(memory_format=CL)
    calls = []
    conv = depthwise.depthwise_conv2d

    def counted(*args: object) -> torch.Tensor:
        calls.append(args[5])  # per_sample
        return conv(*args)
    monkeypatch.setattr(depthwise, "depthwise_conv2d", counted)
    native = _train_grads(copy.deepcopy(model), x)
    assert calls and any(calls) == bool(effnet.get_config(name).experts)
    exact = _train_grads(copy.deepcopy(model).double(), x.double())
    monkeypatch.setenv("EFFNET_NATIVE", "0")
    plain = _train_grads(copy.deepcopy(model), x)
    # BatchNorm biases that feed another BatchNorm in train mode have a true gradient of zero: every
    # tensor is compared on at least 1e-3 of the largest gradient's scale, not on its own rounding noise
    scale = 1e-3 * max(g.abs().max().item() for g in exact.values())

    def error(grads: dict[str, torch.Tensor]) -> float:
        return max(((grads[k] - exact[k]).abs().max() / max(exact[k].abs().max().item(), scale)).item()
                   for k in exact)
    assert native.keys() == plain.keys() == exact.keys()
    assert error(native) < 2 * error(plain) + 1e-6, (error(native), error(plain))


def test_switched_off_and_unbuildable_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """EFFNET_NATIVE=0, or no working compiler: the kernels say why, and training runs PyTorch's convs."""
    monkeypatch.setenv("EFFNET_NATIVE", "0")
    assert kernels.status() == "off (EFFNET_NATIVE=0)" and kernels.load() is None
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=CL).requires_grad_()
    assert not kernels.wanted(x, torch.zeros(8, 1, 3, 3, requires_grad=True), False)
    monkeypatch.delenv("EFFNET_NATIVE")
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_reason", None)
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(kernels, "cache_dir", lambda: __import__("pathlib").Path("/nonexistent-effnet-cache"))
    assert kernels.load() is None
    assert kernels.status().startswith("off (") and "false" in kernels.status()
    model = effnet.create_model("efficientnet_b1_pruned", num_classes=3).to(memory_format=CL).train()
    model(torch.randn(2, 3, 32, 32).contiguous(memory_format=CL)).sum().backward()


@needs_kernels
def test_where_the_native_path_is_taken() -> None:
    """Static convs only in training (inference keeps oneDNN's, which inductor fuses); per-sample convs
    whenever channels-last; NCHW and float64 inputs never."""
    w = torch.zeros(8, 1, 3, 3, requires_grad=True)
    cl = torch.randn(2, 8, 6, 6).contiguous(memory_format=CL)
    assert kernels.wanted(cl, w, False) and kernels.wanted(cl, w, True)
    with torch.no_grad():
        assert not kernels.wanted(cl, w, False) and kernels.wanted(cl, w, True)
    for per_sample in (False, True):
        assert not kernels.wanted(torch.randn(2, 8, 6, 6), w, per_sample)
        assert not kernels.wanted(cl.double(), w, per_sample)
        assert not kernels.wanted(torch.randn(2, 8, 1, 1).contiguous(memory_format=CL), w, per_sample)
    assert not kernels.wanted(cl, w.detach(), False)


@needs_kernels
@pytest.mark.parametrize("per_sample", [False, True], ids=["static", "per-sample"])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3], SHAPES[5]], ids=lambda s: "x".join(map(str, s)))
def test_custom_op_passes_opcheck(shape: tuple[int, ...], per_sample: bool) -> None:
    """torch.library.opcheck: schema, fake (meta) functions with the real outputs' strides, autograd
    registration; the weight channels-last as `model.to(memory_format=channels_last)` leaves it."""
    from effnet.kernels.depthwise import depthwise_conv2d_op
    B, C, H, W, k, s = shape
    x = torch.randn(B, C, H, W).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(B, C * k * k) if per_sample else torch.randn(C, 1, k, k).contiguous(memory_format=CL)
    bias = torch.randn(C) if per_sample else None
    torch.library.opcheck(depthwise_conv2d_op, (x, w.requires_grad_(), bias, k, s, per_sample))
