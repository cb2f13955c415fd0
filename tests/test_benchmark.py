"""The benchmark tool on tiny inputs: figures are produced, peers interleaved in alternating order, ratios
against the best peer and shares of peak computed, bad input rejected, the README block rendered."""

from __future__ import annotations

import importlib.util
import json
import os
import types
from pathlib import Path
from typing import Iterator

import pytest
import torch

from effnet import peers
from effnet.benchmark import Result, bench_inference, bench_train, interleaved
from effnet.cli import main
from effnet.peak import describe, matmul_peaks, precision, use_large_primitive_cache

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread: two threads on a busy 2-core machine wait on each other at every op; and the
    CLI's --threads and oneDNN cache setting must not leak into later tests."""
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)  # restored afterwards
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_inference_figures_and_shares_of_peak() -> None:
    peaks = {"fp32": 100.0, "bf16": 200.0, "int8": None}
    res = bench_inference("efficientnet_b1_pruned", (1, 2), img_size=32, modes=("eager", "optimized"),
                          warmup=1, iters=1, peaks=peaks)
    assert {(r.mode, r.batch) for r in res} == {("eager", 1), ("eager", 2), ("optimized", 1), ("optimized", 2)}
    for r in res:
        assert r.img_per_s > 0 and abs(r.img_per_s * r.ms_per_batch / 1e3 - r.batch) < 1e-6 * r.batch
        assert bool(r.latency_ms) == (r.batch == 1)
        if r.latency_ms:
            assert r.latency_ms["p50"] <= r.latency_ms["p90"] <= r.latency_ms["p99"]
        assert r.peak_share == pytest.approx(r.gflops / 100.0)
        assert "best peer" not in r.ratio  # no peers timed


def test_interleaved_warms_and_alternates_order() -> None:
    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "ABC"}
    times = interleaved(fns, CPU, warmup=0, iters=2)
    assert calls == list("ABCCBA" "ABCCBA")  # two warm-up calls each, then two timed rounds
    assert {k: len(v) for k, v in times.items()} == {"A": 2, "B": 2, "C": 2}


@pytest.mark.skipif(not peers.available("onnxruntime"), reason="onnxruntime not installed")
@pytest.mark.filterwarnings("ignore:optimize_for_inference")  # bf16 on a CPU without bf16 units
def test_onnxruntime_peer_and_low_precision_ratios() -> None:
    res = bench_inference("efficientnet_b1_pruned", (2,), img_size=32, dtype="bf16", modes=("optimized",),
                          peers=("onnxruntime",), warmup=1, iters=1)
    by = {(r.impl, r.mode, r.dtype): r for r in res}
    assert set(by) == {("onnxruntime", "onnx", "fp32"), ("effnet", "optimized", "fp32"),
                       ("effnet", "optimized", "bf16")}
    fp32, bf16, ort = by["effnet", "optimized", "fp32"], by["effnet", "optimized", "bf16"], by["onnxruntime", "onnx",
                                                                                                 "fp32"]
    assert bf16.ratio["effnet fp32"] == pytest.approx(bf16.img_per_s / fp32.img_per_s)
    assert bf16.ratio["best peer"] == pytest.approx(bf16.img_per_s / ort.img_per_s)
    assert bf16.best_peer == "onnxruntime onnx fp32" and "best peer" not in ort.ratio


def test_train_figures_dense_twin_and_amp() -> None:
    res = bench_train("tf_efficientnet_cc_b0_4e", batch=2, img_size=32, amp=True, warmup=1, iters=1)
    by = {(r.impl, r.dtype): r for r in res}
    assert set(by) == {("effnet", "fp32"), ("effnet-dense", "fp32"), ("effnet", "bf16-autocast")}
    ours = by["effnet", "fp32"]
    assert ours.ratio["dense"] == pytest.approx(ours.img_per_s / by["effnet-dense", "fp32"].img_per_s)
    assert by["effnet", "bf16-autocast"].ratio["effnet fp32"] == pytest.approx(
        by["effnet", "bf16-autocast"].img_per_s / ours.img_per_s)
    assert all(r.train and r.mode == "eager" for r in res)
    if Path("/proc/self/clear_refs").exists():
        assert all(r.mem_mb_per_sample is not None and r.mem_mb_per_sample >= 0 for r in res)


def test_matmul_peaks_and_machine_line() -> None:
    peaks = matmul_peaks(size=64, warmup=1, iters=1)
    assert peaks["fp32"] > 0 and peaks["bf16"] > 0 and (peaks["int8"] is None or peaks["int8"] > 0)
    line = describe(2, peaks)
    assert "2 threads" in line and "bf16/int8 units:" in line and "matmul peak GFLOP/s fp32" in line
    assert [precision(d) for d in ("fp32", "bf16-autocast", "int8")] == ["fp32", "bf16", "int8"]


def test_primitive_cache_capacity_is_set_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert use_large_primitive_cache() == "16384" == os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "2048")
    assert use_large_primitive_cache() == "2048"


def test_cli_json_and_compare(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["benchmark", "--model", "tf_efficientnet_cc_b0_4e", "--batch-size", "2", "--img-size", "32",
               "--iters", "1", "--warmup", "1", "--modes", "optimized", "--compare", "reference",
               "--threads", "1", "--no-peak", "--format", "json"])
    assert rc == 0
    out = capsys.readouterr().out
    if not peers.available("reference"):
        assert out.startswith("effnet benchmark: the reference implementation (timm) not importable here")
        out = out.split("\n", 1)[1]
    data = json.loads(out)
    assert data["threads"] == 1 and "ONEDNN_PRIMITIVE_CACHE_CAPACITY=" in data["machine"]
    assert data["results"][0]["dtype"] == "fp32" and data["results"][0]["batch"] == 2


def test_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", "--model", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["benchmark", "--model", "efficientnet_b1_pruned", "--batch-size", "0", "--no-peak"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main(["benchmark", "--model", "efficientnet_b1_pruned", "--modes", "fast", "--no-peak"]) == 2
    assert "fast" in capsys.readouterr().err
    assert main(["benchmark", "--model", "efficientnet_b1_pruned", "--compare", "tensorflow"]) == 2
    assert "--compare" in capsys.readouterr().err
    assert main(["benchmark", "--model", "efficientnet_b1_pruned", "--train", "--modes", "optimized",
                 "--no-peak"]) == 2
    assert "optimized" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (peers.int8_available() and peers.available("onnxruntime")), reason="needs torchao and onnx")
def test_int8_figures_against_fp32_and_onnxruntime_int8() -> None:
    res = bench_inference("efficientnet_b1_pruned", (2,), img_size=32, dtype="int8", modes=("compiled",),
                          peers=("onnxruntime",), warmup=1, iters=1)
    by = {(r.impl, r.mode, r.dtype): r for r in res}
    assert set(by) == {("effnet", "compiled", "fp32"), ("effnet", "compiled", "int8"),
                       ("onnxruntime", "onnx", "fp32"), ("onnxruntime", "onnx", "int8")}
    int8 = by["effnet", "compiled", "int8"]
    assert int8.ratio["effnet fp32"] == pytest.approx(int8.img_per_s / by["effnet", "compiled", "fp32"].img_per_s)
    assert int8.compile_s is not None and int8.best_peer is not None


@pytest.mark.slow
@pytest.mark.skipif(not peers.available("reference"), reason="the reference implementation is not installed")
def test_reference_peers_compiled() -> None:
    res = bench_inference("efficientnet_b1_pruned", (1,), img_size=32, dtype="bf16", modes=("compiled",),
                          peers=("reference",), warmup=1, iters=1)
    keys = {(r.impl, r.mode, r.dtype) for r in res}
    assert {("reference", "eager", "fp32"), ("reference", "compiled", "fp32"),
            ("reference", "compiled", "bf16-autocast")} <= keys
    assert all(r.compile_s is not None for r in res if r.mode == "compiled")


@pytest.mark.slow
def test_train_compiled_reports_compile_time() -> None:
    res = bench_train("efficientnet_b1_pruned", batch=2, img_size=32, modes=("eager", "compiled"), warmup=1, iters=1)
    by = {(r.impl, r.mode): r for r in res}
    assert set(by) == {("effnet", "eager"), ("effnet", "compiled")}
    compiled = by["effnet", "compiled"]
    assert compiled.compile_s is not None and by["effnet", "eager"].compile_s is None
    assert compiled.ratio["eager"] == pytest.approx(compiled.img_per_s / by["effnet", "eager"].img_per_s)


def _bench_report() -> types.ModuleType:
    """scripts/bench_report.py, imported as a module."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_report.py"
    spec = importlib.util.spec_from_file_location("bench_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(impl: str, mode: str, dtype: str, batch: int, img_s: float, share: float | None = None,
            train: bool = False, **ratio: float) -> Result:
    lat = {"p50": 1e3 * batch / img_s, "p90": 2e3, "p99": 3e3} if batch == 1 else {}
    return Result("tf_efficientnet_cc_b0_4e", impl, mode, dtype, batch, 224, img_s, 1e3 * batch / img_s, lat,
                  ratio={k.replace("_", " "): v for k, v in ratio.items()}, peak_share=share, train=train,
                  best_peer="reference compiled fp32" if "best_peer" in ratio else None)


def test_report_renders_targets_against_best_peer(tmp_path: Path) -> None:
    report = _bench_report()
    res = []
    for b in (1, 16):
        res += [_result("reference", "eager", "fp32", b, 40.0), _result("reference", "compiled", "fp32", b, 50.0),
                _result("onnxruntime", "onnx", "fp32", b, 45.0),
                _result("effnet", "compiled", "fp32", b, 70.0, 0.5, best_peer=1.4),
                _result("effnet", "compiled", "bf16", b, 100.0, 0.2, best_peer=2.0, effnet_fp32=100 / 70)]
    res += [_result("reference", "eager", "fp32", 32, 10.0, train=True),
            _result("effnet", "eager", "fp32", 32, 12.0, train=True, reference=1.2, dense=0.8),
            _result("effnet-dense", "eager", "fp32", 32, 15.0, train=True)]
    figures = {"machine": "Test CPU, 2 threads", "threads": 2, "peaks": {"fp32": 1.0}, "units": ["avx512_bf16"],
               "train": [32, 160], "int8": False, "peers": ["reference", "onnxruntime"],
               "models": {"tf_efficientnet_cc_b0_4e": res}}
    saved = tmp_path / "bench.json"
    report.save_figures(saved, figures)
    block = report.render(report.load_figures(saved))  # as --json, then --from-json
    assert block.startswith(report.START) and block.endswith(report.END)
    assert "Machine: Test CPU, 2 threads." in block
    assert "| tf_efficientnet_cc_b0_4e | 16 | 40.0 | 50.0 | 45.0 | - | 70.0 (50%) | x1.40 vs reference compiled fp32 " \
        in block
    assert "- fp32 batch 16: effnet's fastest path >= 1.3x the best peer: **met** (worst: tf_efficientnet_cc_b0_4e " \
        "b16 vs reference compiled fp32, x1.40" in block
    assert "- bf16: >= 2x effnet's fp32 compiled (batch 16): **missed** by 0.57 (worst:" in block
    assert "- CondConv fp32 (batch 16) >= 45% of the fp32 matmul peak: **met**" in block
    assert "- training step >= 1.3x the reference's (eager vs eager, compiled vs compiled): **missed** by 0.10" \
        in block
    assert "- CondConv training step time <= 1.2x its dense twin's: **missed** by 0.05 (worst: " \
        "tf_efficientnet_cc_b0_4e eager, x1.25" in block
    assert "- int8: >= 2x effnet's fp32 compiled (batch 16 and 1): not measured in this run (torchao not" in block
    assert "amx_bf16" in block and "the eager reference" in block  # AMX targets marked not applicable
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{report.START}\nold\n{report.END}\n\n## after\n")
    report.update_readme(block, readme)
    assert readme.read_text() == f"# title\n\n{block}\n\n## after\n"
