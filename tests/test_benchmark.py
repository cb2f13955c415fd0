"""The benchmark tool on tiny inputs: figures are produced, ratios computed, bad input rejected."""

from __future__ import annotations

import json

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
