"""int8: optimize_for_inference(dtype=torch.int8) (PT2E), int8 ONNX export (onnxruntime QDQ), and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import effnet
from effnet.errors import EffnetError
from effnet.optimize import optimize_for_inference

from conftest import parity_state_dict

pytest.importorskip("torchao", reason="int8 needs the int8 extra (torchao)")

SIZE = 64


@pytest.fixture(scope="module")
def synthetic_b1() -> torch.nn.Module:
    """efficientnet_b1_pruned with the parity fixtures' synthetic weights and BatchNorm statistics:
    activations of realistic scale, unlike a fresh initialisation whose logits are ~1e-5."""
    model = effnet.create_model("efficientnet_b1_pruned")
    model.load_state_dict(parity_state_dict("efficientnet_b1_pruned"))
    return model.eval()


def _batches(n: int, batch: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, SIZE, SIZE, generator=g) for _ in range(n)]


@torch.no_grad()
def test_int8_close_to_fp32(synthetic_b1: torch.nn.Module) -> None:
    q = optimize_for_inference(synthetic_b1, dtype=torch.int8, calibration=_batches(4), compile=False)
    assert isinstance(q, effnet.quantize.QuantizedEfficientNet)
    assert q.calibration_images == 32 and q.input_size == (SIZE, SIZE)
    convs = [n for n in q.program.graph.nodes if "quantize_per_channel" in str(n.target)]
    assert len(convs) > 50, "static convs should carry per-channel int8 weights"
    for batch in (1, 5):  # any batch size, not only the calibration one
        x = _batches(1, batch, seed=7)[0]
        ref, out = synthetic_b1(x), q(x)
        assert out.shape == ref.shape and out.dtype == torch.float32
        rel = ((out - ref).abs().max() / ref.abs().max()).item()
        assert rel < 0.15, rel
    # the fp32 model is untouched
    assert not any(isinstance(m, torch.nn.Identity) for m in synthetic_b1.modules())


def test_pointwise_expert_bank_matches_condconv() -> None:
    """int8 runs CondConv's pointwise convs as one static conv over the expert bank plus the routing-
    weighted sum (the E copies on the narrower side): in fp32 the same as the per-sample kernels."""
    from effnet.layers import CondConv2d
    from effnet.quantize import PointwiseExpertBank
    g = torch.Generator().manual_seed(3)
    for cin, cout in ((8, 24), (24, 8)):  # expanding: E*I inputs; projecting: E*O outputs
        conv = CondConv2d(cin, cout, 1, experts=4).eval()
        conv.bias = torch.nn.Parameter(torch.randn(cout, generator=g), requires_grad=False)
        bank = PointwiseExpertBank(conv)
        x, routing = torch.randn(3, cin, 5, 5, generator=g), torch.rand(3, 4, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(bank(x, routing), conv(x, routing), rtol=1e-5, atol=1e-5)
        assert bank.conv.in_channels * bank.conv.out_channels == 4 * cin * cout
    with pytest.raises(ValueError, match="1x1"):
        PointwiseExpertBank(CondConv2d(8, 8, 3, groups=8))


def test_int8_refusals(synthetic_b1: torch.nn.Module) -> None:
    with pytest.raises(EffnetError, match="calibration"):
        optimize_for_inference(synthetic_b1, dtype=torch.int8)
    with pytest.raises(EffnetError, match="empty"):
        optimize_for_inference(synthetic_b1, dtype=torch.int8, calibration=[])
    with pytest.raises(EffnetError, match=r"batch 0: expected a \(N, 3, H, W\)"):
        optimize_for_inference(synthetic_b1, dtype=torch.int8, calibration=[torch.zeros(3, SIZE, SIZE)])
    with pytest.raises(EffnetError, match="batch 1 is"):
        optimize_for_inference(synthetic_b1, dtype=torch.int8,
                               calibration=[torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1, 3, 32, 32)])
    with pytest.raises(EffnetError, match="input_size"):
        optimize_for_inference(synthetic_b1, dtype=torch.int8, calibration=_batches(1), input_size=SIZE + 1)
    with pytest.raises(EffnetError, match="only used with dtype=torch.int8"):
        optimize_for_inference(synthetic_b1, calibration=_batches(1))
    features = effnet.create_model("efficientnet_b1_pruned", features_only=True).eval()
    with pytest.raises(EffnetError, match="classifier models"):
        optimize_for_inference(features, dtype=torch.int8, calibration=_batches(1))


def test_int8_model_is_eval_only_and_size_bound(synthetic_b1: torch.nn.Module) -> None:
    # (input, target) pairs, as a DataLoader yields them, are accepted as calibration
    pairs = [(x, torch.zeros(len(x), dtype=torch.long)) for x in _batches(1, batch=2)]
    q = optimize_for_inference(synthetic_b1, dtype=torch.int8, calibration=pairs, compile=False)
    with pytest.raises(EffnetError, match="cannot be trained"):
        q.train()
    with pytest.raises(EffnetError, match="quantized for"):
        q(torch.zeros(1, 3, SIZE + 8, SIZE))


def test_int8_onnx_export(synthetic_b1: torch.nn.Module, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from effnet.export import export_model
    out = tmp_path / "model.int8.onnx"
    figures = export_model(synthetic_b1, out, "onnx", metadata={"dtype": "int8"}, dtype=torch.int8,
                           calibration=_batches(3))
    assert figures["images"] == 24 and figures["agreement"] >= 0.9 and figures["max_rel_err"] < 0.3
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert {p.key: p.value for p in proto.metadata_props}["dtype"] == "int8"
    assert [p.name for p in tmp_path.iterdir()] == ["model.int8.onnx"]  # no fp32 intermediate left behind
    with pytest.raises(EffnetError, match="ONNX .QDQ. only"):
        export_model(synthetic_b1, tmp_path / "m.pt2", "pt2", dtype=torch.int8, calibration=_batches(1))


def test_cli_int8_needs_calibration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from effnet.cli import main
    out = tmp_path / "m.onnx"
    code = main(["export", "--model", "efficientnet_b1_pruned", "--random-weights", "--format", "onnx",
                 "--dtype", "int8", "--output", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "--calib-dir" in err and "Traceback" not in err and not out.exists()
    code = main(["export", "--model", "efficientnet_b1_pruned", "--random-weights", "--format", "pt2",
                 "--dtype", "int8", "--calib-dataset", "digits", "--output", str(tmp_path / "m.pt2")])
    assert code != 0 and "ONNX only" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["export", "--model", "efficientnet_b1_pruned", "--random-weights", "--format", "onnx",
                 "--dtype", "int8", "--calib-dir", str(empty), "--output", str(out)])
    assert code != 0 and "no image files" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_serve_int8_features_and_probabilities(synthetic_b1: torch.nn.Module) -> None:
    """`effnet serve --dtype int8`: one quantized, compiled pass gives features and probabilities
    close to the fp32 server's."""
    from effnet.serve.engine import Loaded, prepare
    cfg = {"input_size": (3, SIZE, SIZE), "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
           "mean": (0.5,) * 3, "std": (0.5,) * 3}
    loaded = Loaded("efficientnet_b1_pruned", synthetic_b1, [str(i) for i in range(1000)], cfg, lambda img: img)
    fp32 = prepare(loaded, "fp32", max_batch=2)
    int8 = prepare(loaded, "int8", max_batch=2, calibration=_batches(2))
    assert int8.compiled and int8.buckets == (1, 2) and int8.card()["dtype"] == "int8"
    int8.warm_up(2)
    x = _batches(1, batch=3, seed=5)[0][:1]  # batch 1: served from the batch-1 bucket
    (f32, p32), (f8, p8) = fp32.run(x), int8.run(x)
    assert f8.shape == f32.shape and p8.shape == p32.shape
    assert ((f8 - f32).abs().max() / f32.abs().max()).item() < 0.15
    assert torch.allclose(p8.sum(-1), torch.ones(1), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", effnet.list_models())
def test_int8_every_model(name: str) -> None:
    """Every registered model quantizes (CondConv ones with their pointwise convs as expert banks)
    and stays close to fp32 on its synthetic weights."""
    model = effnet.create_model(name)
    model.load_state_dict(parity_state_dict(name))
    model.eval()
    q = optimize_for_inference(model, dtype=torch.int8, calibration=_batches(2, batch=4), compile=False)
    x = _batches(1, batch=2, seed=9)[0]
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 0.2


@pytest.mark.slow
def test_int8_condconv_compiled() -> None:
    """Compiled, a CondConv model's int8 program (its pointwise convs as int8 expert banks) stays
    close to fp32 at batch 1 and 3."""
    model = effnet.create_model("tf_efficientnet_cc_b0_4e")
    model.load_state_dict(parity_state_dict("tf_efficientnet_cc_b0_4e"))
    model.eval()
    q = optimize_for_inference(model, dtype=torch.int8, calibration=_batches(2, batch=4), compile=True)
    with torch.no_grad():
        for batch in (1, 3):
            x = _batches(1, batch=batch, seed=11)[0]
            ref, out = model(x), q(x)
            assert ((out - ref).abs().max() / ref.abs().max()).item() < 0.2
