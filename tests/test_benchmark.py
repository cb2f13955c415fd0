"""The benchmark tool on tiny inputs: figures are produced, ratios computed, bad input rejected."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import pytest

from effnet.benchmark import bench_inference, bench_train, reference_available
from effnet.cli import main


def test_inference_figures() -> None:
    res = bench_inference("efficientnet_b1_pruned", (1, 2), img_size=32, modes=("eager", "optimized"),
                          warmup=1, iters=1)
    assert {(r.mode, r.batch) for r in res} == {("eager", 1), ("eager", 2), ("optimized", 1), ("optimized", 2)}
    for r in res:
        assert r.img_per_s > 0 and abs(r.img_per_s * r.ms_per_batch / 1e3 - r.batch) < 1e-6 * r.batch
        assert bool(r.latency_ms) == (r.batch == 1)
        if r.latency_ms:
            assert r.latency_ms["p50"] <= r.latency_ms["p90"] <= r.latency_ms["p99"]


def test_train_figures_include_dense_twin() -> None:
    res = bench_train("tf_efficientnet_cc_b0_4e", batch=2, img_size=32, warmup=1, iters=1)
    impls = {r.impl: r for r in res}
    assert set(impls) == {"effnet", "effnet-dense"}
    assert impls["effnet"].ratio["dense"] == pytest.approx(impls["effnet"].img_per_s / impls["effnet-dense"].img_per_s)


def test_cli_json_and_compare(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["benchmark", "--model", "tf_efficientnet_cc_b0_4e", "--batch-size", "2", "--img-size", "32",
               "--iters", "1", "--warmup", "1", "--modes", "optimized", "--dtype", "bf16",
               "--compare", "reference", "--format", "json"])
    assert rc == 0
    out = capsys.readouterr().out
    if not reference_available():
        assert out.startswith("effnet benchmark: reference implementation (timm) not importable")
        out = out.split("\n", 1)[1]
    data = json.loads(out)
    assert data["results"][0]["dtype"] == "bf16" and data["results"][0]["batch"] == 2


def test_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", "--model", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["benchmark", "--model", "efficientnet_b1_pruned", "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main(["benchmark", "--model", "efficientnet_b1_pruned", "--modes", "fast"]) == 2
    assert "fast" in capsys.readouterr().err


def _bench_report() -> types.ModuleType:
    """scripts/bench_report.py, imported as a module."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_report.py"
    spec = importlib.util.spec_from_file_location("bench_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:optimize_for_inference")  # bf16 on a CPU without bf16 units
def test_report_renders_saved_figures_into_readme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from effnet.benchmark import Result
    report = _bench_report()
    monkeypatch.setattr(report, "cpu_bf16_units", lambda: ())

    def result(impl: str, mode: str, dtype: str, batch: int, img_s: float, ratio: float | None) -> dict:
        lat = {"p50": 1e3 * batch / img_s, "p90": 2e3, "p99": 3e3} if batch == 1 else {}
        return dict(model="efficientnet_b1_pruned", impl=impl, mode=mode, dtype=dtype, batch=batch, img_size=240,
                    img_per_s=img_s, ms_per_batch=1e3 * batch / img_s, latency_ms=lat,
                    ratio={} if ratio is None else {"reference": ratio})

    raw = {"efficientnet_b1_pruned": [
        result("reference", "eager", "fp32", 16, 50.0, None), result("reference", "eager", "fp32", 1, 40.0, None),
        result("effnet", "optimized", "fp32", 16, 200.0, 4.0), result("effnet", "optimized", "fp32", 1, 160.0, 4.0),
        result("effnet", "optimized", "bf16", 16, 100.0, 2.0)]}
    saved = tmp_path / "bench.json"
    report.save_figures(saved, {k: [Result(**r) for r in v] for k, v in raw.items()})
    block = report.render(report.load_figures(saved))  # as --json, then --from-json
    assert block.startswith(report.START) and block.endswith(report.END)
    assert "| efficientnet_b1_pruned | 50.0 | - | 200.0 (x4.00) | - | 25 ms | - | 6 ms (x0.25) | - |" in block
    assert "This run measured 1 of the 6 models" in block
    assert "- fp32 batch-16 throughput >= 3x the reference: **met**" in block
    assert "- fp32 batch-1 latency <= 1/3 of the reference's: **met**" in block
    assert "6x the reference's fp32: **not met** (worst efficientnet_b1_pruned x2.00" in block
    assert "this CPU has no bf16 units" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{report.START}\nold\n{report.END}\n\n## after\n")
    report.update_readme(block, readme)
    assert readme.read_text() == f"# title\n\n{block}\n\n## after\n"
