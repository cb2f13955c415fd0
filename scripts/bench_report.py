"""Regenerate the README's benchmark table (the block between the `benchmarks` markers).

Run from the repository root with the reference implementation importable, so every ratio is
measured side by side, interleaved in one process:

    PYTHONPATH=src /root/.cache/effnet-reference/bin/python scripts/bench_report.py --update-readme

Without --update-readme the table is printed only. --json FILE also keeps the raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from effnet.benchmark import Result, bench_inference, bench_train, reference_available
from effnet.registry import get_config, list_models
from effnet.tools.benchmark import machine

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def _pick(results: list[Result], impl: str, mode: str, dtype: str, batch: int) -> Result | None:
    return next((r for r in results if (r.impl, r.mode, r.dtype, r.batch) == (impl, mode, dtype, batch)), None)


def measure(names: list[str], iters: int, train: bool, save: Path | None) -> dict[str, list[Result]]:
    """All figures per model: fp32 eager/optimised and bf16 optimised inference, fp32 training of the
    CondConv models. With `save`, the figures so far are written there after every model."""
    out: dict[str, list[Result]] = {}
    for name in names:
        res = bench_inference(name, (1, 16), dtype="fp32", modes=("eager", "optimized"), compare=True, iters=iters)
        bf = bench_inference(name, (16,), dtype="bf16", modes=("optimized",), compare=True, iters=iters)
        res += [r for r in bf if r.impl == "effnet"]
        if train and get_config(name).experts:
            res += bench_train(name, 32, 128, compare=True, iters=max(3, iters // 2))
        out[name] = res
        print(f"measured {name}", file=sys.stderr, flush=True)
        if save is not None:
            save.write_text(json.dumps({k: [asdict(r) for r in v] for k, v in out.items()}, indent=1))
    return out


@torch.no_grad()
def bf16_error(name: str) -> float:
    """Max |bf16 - fp32| / max |fp32| of the logits, with the parity fixtures' synthetic weights."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import synthetic_input, synthetic_state_dict  # the tests' deterministic weights

    from effnet import create_model, optimize_for_inference
    from effnet.registry import load_weights
    fixtures = ROOT / "tests" / "fixtures"
    sd = synthetic_state_dict(json.loads((fixtures / "reference" / f"{name}.json").read_text())["state_dict"])
    sd.update({k[3:]: v for k, v in load_file(str(fixtures / "parity" / f"{name}.safetensors")).items()
               if k.startswith("bn.")})
    model = create_model(name).eval()
    load_weights(model, sd, "synthetic weights")
    size = model.pretrained_cfg["input_size"][-1]
    x = synthetic_input(2, size, size)
    ref = model(x)
    low = optimize_for_inference(model, dtype=torch.bfloat16, input_size=size)(x).float()
    return ((low - ref).abs().max() / ref.abs().max()).item()


def _fmt(r: Result | None, key: str = "reference", lat: bool = False) -> str:
    if r is None:
        return "-"
    value = f"{r.latency_ms['p50']:.0f} ms" if lat else f"{r.img_per_s:.1f}"
    ratio = r.ratio.get(key)
    return value + (f" (x{ratio:.2f})" if ratio is not None else "")


def render(figures: dict[str, list[Result]]) -> str:
    """The markdown block: machine, table, and which targets are met."""
    lines = [START, "", "### Benchmarks", "",
             f"Machine: {machine()}; CPU flags include avx512_bf16 and amx_bf16. No GPU was available, so "
             "GPU figures are not measured. The machine was shared with other jobs while measuring, so "
             "absolute figures are noisy; ratios (in brackets, effnet over the reference implementation's "
             "fp32 eager figure) come from candidates timed interleaved in one process.", "",
             "| model | fp32 b16 eager img/s | fp32 b16 optimized | fp32 b1 p50 latency eager | b1 optimized "
             "| bf16 b16 optimized | bf16 logits rel. err | reference fp32 b16 | train img/s (b32, 128px) "
             "| train step vs dense twin |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    checks: dict[str, list[tuple[str, float]]] = {"inf": [], "lat": [], "bf16": [], "train": [], "dense": [],
                                                  "bf16err": []}
    for name, res in figures.items():
        e16, o16 = _pick(res, "effnet", "eager", "fp32", 16), _pick(res, "effnet", "optimized", "fp32", 16)
        e1, o1 = _pick(res, "effnet", "eager", "fp32", 1), _pick(res, "effnet", "optimized", "fp32", 1)
        r1, r16 = _pick(res, "reference", "eager", "fp32", 1), _pick(res, "reference", "eager", "fp32", 16)
        b16 = _pick(res, "effnet", "optimized", "bf16", 16)
        tr, dense = _pick(res, "effnet", "train", "fp32", 32), _pick(res, "effnet-dense", "train", "fp32", 32)
        best16 = max((r for r in (e16, o16) if r), key=lambda r: r.img_per_s)
        checks["inf"].append((name, best16.ratio.get("reference", float("nan"))))
        if r1 and (e1 or o1):
            best1 = min((r for r in (e1, o1) if r), key=lambda r: r.latency_ms["p50"])
            checks["lat"].append((name, best1.latency_ms["p50"] / r1.latency_ms["p50"]))
        if b16:
            checks["bf16"].append((name, b16.ratio.get("reference", float("nan"))))
        err = bf16_error(name)
        checks["bf16err"].append((name, err))
        step = "-"
        if tr:
            checks["train"].append((name, tr.ratio.get("reference", float("nan"))))
            if dense and get_config(name).experts:
                checks["dense"].append((name, 1 / tr.ratio["dense"]))
                step = f"{1 / tr.ratio['dense']:.2f}x"
        lat = lambda r: "-" if r is None or r1 is None else (  # noqa: E731
            f"{r.latency_ms['p50']:.0f} ms (x{r.latency_ms['p50'] / r1.latency_ms['p50']:.2f})")
        lines.append(f"| {name} | {_fmt(e16)} | {_fmt(o16)} | {lat(e1)} | {lat(o1)} | {_fmt(b16)} | {err:.1e} "
                     f"| {_fmt(r16)} | {_fmt(tr)} | {step} |")
    lines += ["", "Columns: *eager* is the model as `create_model` returns it; *optimized* is "
              "`effnet.optimize_for_inference(model, input_size=...)` (BatchNorm folded into every conv and "
              "CondConv expert, static padding, channels-last); bf16 is the same with `dtype=torch.bfloat16` "
              "(its logits error is measured on the parity fixtures' synthetic weights, which amplify rounding "
              "more than trained weights would). Latency ratios are effnet's batch-1 median latency over the "
              "reference's (lower is better). Training is an fp32 SGD step at batch 32, 128 px, channels-last "
              "for effnet; the dense twin is the same widths with `experts=0`. `torch.compile` of the optimized "
              "model (`effnet benchmark --modes optimized,compiled`) is not in the table: compiling takes "
              "minutes per model on this machine.", "",
              "Any single figure: `effnet benchmark --model NAME|all [--batch-size 1,16] [--dtype bf16] [--train] "
              "[--compare reference] [--format json]`.", "",
              "Targets (met / not met, worst model's figure):", ""]
    lines += _verdicts(checks)
    lines += ["", "Regenerate with `PYTHONPATH=src /root/.cache/effnet-reference/bin/python "
              "scripts/bench_report.py --update-readme` (any Python with effnet and timm importable).", "", END]
    return "\n".join(lines)


def _verdicts(checks: dict[str, list[tuple[str, float]]]) -> list[str]:
    specs = [("inf", "fp32 batch-16 throughput >= 3x the reference", 3.0, True),
             ("lat", "fp32 batch-1 latency <= 1/3 of the reference's", 1 / 3, False),
             ("bf16", "bf16 (optimize_for_inference) batch-16 throughput >= 6x the reference's fp32", 6.0, True),
             ("train", "CondConv training (b32, 128px) >= 3x the reference's img/s", 3.0, True),
             ("dense", "CondConv training step <= 1.3x the dense twin's", 1.3, False),
             ("bf16err", "bf16 logits within 2e-2 relative of fp32 (synthetic weights)", 2e-2, False)]
    out = []
    for key, text, bound, higher in specs:
        vals = [(n, v) for n, v in checks[key] if key != "train" or get_config(n).experts]
        if not vals:
            out.append(f"- {text}: not measured")
            continue
        worst = min(vals, key=lambda t: t[1]) if higher else max(vals, key=lambda t: t[1])
        met = all((v >= bound) if higher else (v <= bound) for _, v in vals)
        median = statistics.median(v for _, v in vals)
        fmt = (lambda v: f"{v:.1e}") if key == "bf16err" else (lambda v: f"x{v:.2f}")  # noqa: E731
        out.append(f"- {text}: **{'met' if met else 'not met'}** (worst {worst[0]} {fmt(worst[1])}, "
                   f"median {fmt(median)})")
    return out


def update_readme(block: str, readme: Path = README) -> None:
    """Replace the marked block (or append it), written atomically."""
    text = readme.read_text()
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".README.", dir=readme.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, readme)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="all", help="comma-separated names or 'all'")
    p.add_argument("--iters", type=int, default=3, help="timed rounds per batch size (batch 1: at least 20)")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--update-readme", action="store_true")
    p.add_argument("--json", default=None, help="also write the raw figures here")
    p.add_argument("--from-json", default=None, help="render from figures saved by --json instead of measuring")
    args = p.parse_args()
    if args.from_json:
        raw = json.loads(Path(args.from_json).read_text())
        figures = {k: [Result(**r) for r in v] for k, v in raw.items()}
    else:
        if not reference_available():
            print("bench_report: the reference implementation (timm) is not importable; run it with the "
                  "reference environment (see the docstring)", file=sys.stderr)
            return 2
        torch.manual_seed(0)
        # CondConv models first: their figures are the ones the targets are mostly about
        names = list_models() if args.models == "all" else args.models.split(",")
        names.sort(key=lambda n: not get_config(n).experts)
        figures = measure(names, args.iters, not args.no_train, Path(args.json) if args.json else None)
    block = render(figures)
    print(block)
    if args.update_readme:
        update_readme(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
