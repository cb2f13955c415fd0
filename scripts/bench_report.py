"""Regenerate the README's benchmark block (between the `benchmarks` markers) from one run.

Every figure is measured side by side, interleaved in one process, against the peers a user could
pick instead, so it needs an environment where effnet, the reference implementation (timm),
onnx/onnxruntime and torchao (for int8) are importable: the side environment built by
`../shared/reference/setup-reference-env.sh DIR`, then `DIR/bin/pip install onnx onnxruntime onnxscript torchao`:

    PYTHONPATH=src DIR/bin/python scripts/bench_report.py --update-readme --json bench.json

The README's figures: the default two models at batch 16 and 1, training at batch 32 and 160 px.
`--models`, `--batch-sizes`, `--img-size`, `--train-batch`, `--train-img` make a quicker trial.

`--from-json bench.json` renders saved figures again without measuring. Without --update-readme
the block is printed only."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
MODELS = ("tf_efficientnet_cc_b0_4e", "efficientnet_b1_pruned")
# oneDNN reads this when it creates its first primitive, PyTorch THP_MEM_ALLOC_ENABLE at its first large
# allocation: both set before anything runs (as `effnet benchmark` sets them), for every candidate alike
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

from effnet import peers as peer_models  # noqa: E402
from effnet.benchmark import Result, bench_inference, bench_train  # noqa: E402
from effnet.peak import cpu_units, describe, matmul_peaks  # noqa: E402
from effnet.registry import get_config  # noqa: E402

Figures = dict[str, Any]  # {"machine": str, "threads": int, "peaks": {...}, "train": [batch, px], "models": {...}}


def save_figures(path: Path, figures: Figures) -> None:
    """The raw figures as JSON (the `--json` file)."""
    out = dict(figures, models={k: [asdict(r) for r in v] for k, v in figures["models"].items()})
    path.write_text(json.dumps(out, indent=1))


def load_figures(path: Path) -> Figures:
    """Figures written by `save_figures` (read by `--from-json`)."""
    data = json.loads(path.read_text())
    data["models"] = {k: [Result(**r) for r in v] for k, v in data["models"].items()}
    return data


def measure(names: list[str], iters: int, train: tuple[int, int] | None, save: Path | None,
            batches: tuple[int, ...] = (16, 1), img_size: int | None = None,
            train_modes: tuple[str, ...] = ("eager", "compiled")) -> Figures:
    """Per model, one interleaved rotation at each batch size (16 and 1) of every peer and of effnet optimized and
    compiled at fp32 and bf16 (int8 compiled where this effnet has int8), then the training steps."""
    peers = tuple(p for p in peer_models.PEERS if peer_models.available(p))
    for p in peer_models.PEERS:
        if p not in peers:
            print(peer_models.missing_reason(p), file=sys.stderr)
    peaks = matmul_peaks()
    dtypes = ("fp32", "bf16", "int8") if peer_models.int8_available() else ("fp32", "bf16")
    figures: Figures = {"machine": describe(torch.get_num_threads(), peaks), "threads": torch.get_num_threads(),
                        "peaks": peaks, "units": cpu_units(), "train": list(train) if train else None,
                        "int8": "int8" in dtypes, "iters": iters, "peers": list(peers), "batches": list(batches),
                        "img_size": img_size, "models": {}}
    for name in names:
        res = bench_inference(name, batches, img_size, dtype=dtypes, modes=("optimized", "compiled"), peers=peers,
                              iters=iters, peaks=peaks)
        torch._dynamo.reset()  # this model's compiled graphs are no longer needed
        if train:
            res += bench_train(name, train[0], train[1], peers=peers, modes=train_modes, amp=True,
                               iters=max(3, iters // 2))
            torch._dynamo.reset()
        figures["models"][name] = res
        print(f"measured {name}", file=sys.stderr, flush=True)
        if save is not None:
            save_figures(save, figures)
    return figures


def _pick(res: list[Result], impl: str, mode: str, dtype: str, batch: int, train: bool = False) -> Result | None:
    return next((r for r in res if (r.impl, r.mode, r.dtype, r.batch, r.train) == (impl, mode, dtype, batch, train)),
                None)


def _cell(r: Result | None, ratio: str | None = None) -> str:
    """img/s, the share of peak at its precision, and optionally a ratio."""
    if r is None:
        return "-"
    text = f"{r.img_per_s:.1f}"
    if r.peak_share is not None:
        text += f" ({100 * r.peak_share:.0f}%)"
    if ratio and ratio in r.ratio:
        text += f" x{r.ratio[ratio]:.2f}"
    return text


def _best(*rs: Result | None) -> Result | None:
    found = [r for r in rs if r is not None]
    return max(found, key=lambda r: r.img_per_s) if found else None


def _secs(r: Result | None) -> str:
    return f"{r.compile_s:.0f} s" if r is not None and r.compile_s is not None else "-"


class Targets:
    """The issue's targets: each with its worst measured figure and met / missed by how much."""

    def __init__(self) -> None:
        self.values: dict[str, list[tuple[str, float]]] = {}

    def add(self, key: str, where: str, value: float | None) -> None:
        if value is not None:
            self.values.setdefault(key, []).append((where, value))

    def worst(self, key: str, higher: bool = True) -> tuple[str, float] | None:
        vals = self.values.get(key)
        return (min if higher else max)(vals, key=lambda t: t[1]) if vals else None

    def line(self, key: str, text: str, bound: float, higher: bool, kind: str = "ratio",
             missing: str = "not measured in this run") -> str:
        worst = self.worst(key, higher)
        if worst is None:
            return f"- {text}: {missing}"
        where, value = worst
        met = value >= bound if higher else value <= bound
        gap = abs(value - bound)
        by = {"ratio": f"{gap:.2f}", "pct": f"{100 * gap:.0f} points", "sci": f"{gap:.1e}"}[kind]
        verdict = "**met**" if met else f"**missed** by {by}"
        return f"- {text}: {verdict} (worst: {where}, {_fmt(value, kind)}; {len(self.values[key])} figure(s))"


def _fmt(v: float, kind: str = "ratio") -> str:
    return {"ratio": f"x{v:.2f}", "pct": f"{100 * v:.0f}%", "sci": f"{v:.1e}"}[kind]


def render(figures: Figures, trained: dict[str, dict[str, float]] | None = None) -> str:
    """The markdown block: machine, method, tables, and every target against the best peer."""
    units = figures.get("units") or ()
    bf16_units = any(u in units for u in ("avx512_bf16", "amx_bf16"))
    t = Targets()
    batches = figures.get("batches") or [16, 1]
    big = max(batches)
    inf = ["| model | batch | reference eager | reference compiled | ONNX Runtime | effnet optimized "
           "| **effnet compiled** | effnet vs best peer | compile time effnet / reference |",
           "|---|---|---|---|---|---|---|---|---|"]
    low = ["| model | batch | reference compiled + autocast bf16 | effnet bf16 optimized | **effnet bf16 compiled** "
           "| bf16 vs effnet fp32 compiled | ONNX Runtime int8 | **effnet int8 compiled** "
           "| int8 vs effnet fp32 compiled |", "|---|---|---|---|---|---|---|---|---|"]
    trn = ["| model | reference eager | reference compiled | effnet eager | effnet compiled | dense twin eager "
           "| dense twin compiled | effnet bf16 autocast eager / compiled | compile time effnet / dense / reference "
           "| MB per sample effnet / reference |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in figures["models"].items():
        cond = bool(get_config(name).experts)
        for b in batches:
            k = "big" if b == big else f"b{b}"
            p = lambda impl, mode, dtype: _pick(res, impl, mode, dtype, b)  # noqa: E731
            fast = _best(p("effnet", "optimized", "fp32"), p("effnet", "compiled", "fp32"))
            inf.append(f"| {name} | {b} | {_cell(p('reference', 'eager', 'fp32'))} "
                       f"| {_cell(p('reference', 'compiled', 'fp32'))} | {_cell(p('onnxruntime', 'onnx', 'fp32'))} "
                       f"| {_cell(p('effnet', 'optimized', 'fp32'))} | {_cell(p('effnet', 'compiled', 'fp32'))} "
                       + (f"| x{fast.ratio['best peer']:.2f} vs {fast.best_peer} " if fast and "best peer" in fast.ratio
                          else "| - ")
                       + f"| {_secs(p('effnet', 'compiled', 'fp32'))} / {_secs(p('reference', 'compiled', 'fp32'))} |")
            if fast is not None:
                t.add(f"fp32-{k}", f"{name} b{b} vs {fast.best_peer}", fast.ratio.get("best peer"))
                if b == big:
                    t.add("share-pruned" if not cond else "share-cc", f"{name} b{b}", fast.peak_share)
            bf = _best(p("effnet", "optimized", "bf16"), p("effnet", "compiled", "bf16"))
            i8 = p("effnet", "compiled", "int8") or p("effnet", "optimized", "int8")
            low.append(f"| {name} | {b} | {_cell(p('reference', 'compiled', 'bf16-autocast'))} "
                       f"| {_cell(p('effnet', 'optimized', 'bf16'))} | {_cell(p('effnet', 'compiled', 'bf16'))} "
                       f"| {_fmt(bf.ratio['effnet fp32']) if bf and 'effnet fp32' in bf.ratio else '-'} "
                       f"| {_cell(p('onnxruntime', 'onnx', 'int8'))} | {_cell(i8)} "
                       f"| {_fmt(i8.ratio['effnet fp32']) if i8 and 'effnet fp32' in i8.ratio else '-'} |")
            if bf is not None:
                t.add(f"bf16-{k}", f"{name} b{b}", bf.ratio.get("effnet fp32"))
                t.add(f"bf16peer-{k}", f"{name} b{b} vs {bf.best_peer}", bf.ratio.get("best peer"))
            if i8 is not None:
                t.add("int8", f"{name} b{b}", i8.ratio.get("effnet fp32"))
                t.add("int8peer", f"{name} b{b} vs {i8.best_peer}", i8.ratio.get("best peer"))
        if figures.get("train"):
            bt = figures["train"][0]
            q = lambda impl, mode, dtype="fp32": _pick(res, impl, mode, dtype, bt, train=True)  # noqa: E731
            mem = lambda r: f"{r.mem_mb_per_sample:.0f}" if r and r.mem_mb_per_sample is not None else "-"  # noqa: E731
            amp = " / ".join(_cell(q("effnet", m, "bf16-autocast"), "effnet fp32") for m in ("eager", "compiled"))
            trn.append(f"| {name} | {_cell(q('reference', 'eager'))} | {_cell(q('reference', 'compiled'))} "
                       f"| {_cell(q('effnet', 'eager'), 'reference')} | {_cell(q('effnet', 'compiled'), 'reference')} "
                       f"| {_cell(q('effnet-dense', 'eager'))} | {_cell(q('effnet-dense', 'compiled'))} | {amp} "
                       f"| {' / '.join(_secs(q(i, 'compiled')) for i in ('effnet', 'effnet-dense', 'reference'))} "
                       f"| {mem(q('effnet', 'eager'))} / {mem(q('reference', 'eager'))} |")
            for mode in ("eager", "compiled"):
                ours = q("effnet", mode)
                if ours is None:
                    continue
                t.add("train", f"{name} {mode}", ours.ratio.get("reference"))
                if cond and "dense" in ours.ratio:
                    t.add("dense", f"{name} {mode}", 1 / ours.ratio["dense"])
                a = q("effnet", mode, "bf16-autocast")
                if a is not None:
                    t.add("amp", f"{name} {mode}", a.ratio.get("effnet fp32"))
            ours_c, ref_c = q("effnet", "compiled"), q("reference", "compiled")
            if cond and ours_c and ref_c and ours_c.compile_s and ref_c.compile_s:
                t.add("compile", name, ours_c.compile_s / ref_c.compile_s)
    for name, err in (trained or {}).items():
        t.add("bf16err", name, err["err"])
    no_bf16 = "not applicable: this CPU has no bf16 units (bf16 is emulated)"
    amx = "amx_bf16" in units
    int8_peer = t.worst("int8peer")
    targets = [
        t.line("fp32-big", f"fp32 batch {big}: effnet's fastest path >= 1.3x the best peer", 1.3, True),
        t.line("fp32-b1", "fp32 batch 1: effnet's fastest path >= 1.3x the best peer", 1.3, True),
        t.line("int8", f"int8: >= 2x effnet's fp32 compiled (batch {big} and 1)", 2.0, True,
               missing="not measured in this run" + ("" if figures.get("int8") else " (torchao not importable)"))
        + (f"; against the best peer at any precision: worst {int8_peer[0]}, {_fmt(int8_peer[1])}" if int8_peer
           else ""),
        t.line("bf16-big", f"bf16: >= 2x effnet's fp32 compiled (batch {big})", 2.0, True)
        if bf16_units else f"- bf16 >= 2x effnet's fp32 compiled: {no_bf16}",
        t.line("share-pruned", f"efficientnet_b1_pruned fp32 (batch {big}) >= 65% of the fp32 matmul peak", 0.65,
               True, "pct"),
        t.line("share-cc", f"CondConv fp32 (batch {big}) >= 45% of the fp32 matmul peak", 0.45, True, "pct"),
        t.line("train", "training step >= 1.3x the reference's (eager vs eager, compiled vs compiled)", 1.3, True),
        t.line("dense", "CondConv training step time <= 1.2x its dense twin's", 1.2, False),
        t.line("amp", "bf16 autocast training >= 1.5x fp32", 1.5, True)
        if bf16_units else f"- bf16 autocast training >= 1.5x fp32: {no_bf16}",
        t.line("compile", "CondConv training compile time <= the reference's (ratio of seconds)", 1.0, False),
        t.line("bf16-big", f"bf16 on AMX: >= 3x effnet's fp32 compiled at batch {big}", 3.0, True)
        if amx else "- bf16 on AMX >= 3x fp32 compiled at batch 16: not applicable: this CPU has no amx_bf16",
        t.line("bf16-b1", "bf16 on AMX: not slower than fp32 at batch 1", 1.0, True)
        if amx else "- bf16 on AMX not slower than fp32 at batch 1: not applicable: this CPU has no amx_bf16",
        t.line("bf16err", "bf16 logits within 2e-2 relative of fp32 (digits-trained weights)", 2e-2, False, "sci",
               "not measured in this run (`--trained MODEL=CHECKPOINT`)"),
    ]
    train_text = []
    if figures.get("train"):
        bt, px = figures["train"]
        train_text = ["", f"Training: one SGD step (momentum 0.9) at batch {bt}, {px} px, channels-last for every "
                      "candidate, img/s (the ratio after effnet's figure is against the reference in the same mode, "
                      "after bf16 against effnet's fp32); *compiled* is `torch.compile` of the model (inductor, "
                      "default options); compile time is the first step. The dense twin is the same widths with "
                      "`experts=0`. Memory per sample is the peak resident-set growth over one step divided by "
                      "the batch size.", "", *trn]
    peers = ", ".join(figures.get("peers", [])) or "none"
    size_text = f"{figures['img_size']} px" if figures.get("img_size") else "each model's native input size"
    lines = [START, "", "### Benchmarks", "",
             f"Machine: {figures['machine']}. No GPU was available, so GPU figures are not measured.", "",
             "One run of `scripts/bench_report.py`; per model one process rotation: every candidate built from "
             "the same synthetic weights, warmed for at least two calls, timed interleaved with the order "
             f"reversed every round, medians ({figures.get('iters', 5)} round(s), at batch 1 at least 20); "
             f"{figures['threads']} thread(s) set "
             "explicitly; oneDNN's primitive cache enlarged so that the rotation does not overflow it; 2 MiB "
             "pages for PyTorch's CPU allocator (THP_MEM_ALLOC_ENABLE=1, as effnet's commands set it) for every "
             "candidate alike; effnet's native depthwise kernels as the machine line says. Peers "
             f"measured ({peers}): the reference implementation eager (channels-last), under `torch.compile` "
             "with the options effnet uses (inductor, weight freezing, static shapes), and compiled under "
             "`torch.autocast` for bf16; ONNX Runtime on effnet's own ONNX export (fp32, and int8 QDQ). "
             "Each figure is img/s and, in brackets, its share of this machine's measured matmul peak "
             "(2048x2048) at that precision: 2 x MACs per image x img/s over the peak. Compile time is the "
             "first call at that batch size, with inductor's on-disk cache off.", "",
             f"Inference, fp32, at {size_text}:", "", *inf, "",
             "Inference, low precision (effnet's ratio against its own fp32 compiled figure in the same run):", "",
             *low, *train_text, "",
             "*optimized* is `effnet.optimize_for_inference(model, input_size=...)` (BatchNorm folded, static "
             "padding, channels-last); *compiled* adds `compile=True`; bf16 is `dtype=torch.bfloat16`; int8 is "
             "`dtype=torch.int8` with calibration batches (PT2E post-training quantization), compiled. "
             "A `-` means not measured in this run.", "",
             "Any single figure: `effnet benchmark --model NAME [--batch-size 1,16] [--dtype fp32|bf16|int8] "
             "[--modes eager,optimized,compiled] [--train] [--compare [reference,onnxruntime]] [--threads N] "
             "[--format json]`.", "",
             "Targets, against the best peer measured in the same run, never the eager reference; "
             "worst figure over the models and batch sizes measured:", "", *targets, "",
             "Regenerate in two steps: measure in the side environment of the reference implementation "
             "(`../shared/reference/setup-reference-env.sh DIR`, then `DIR/bin/pip install onnx onnxruntime "
             "onnxscript torchao`; this run took 14 minutes for the two models on 2 cores with "
             "`--train-modes eager`, compiled training adds about 15 minutes per model), then render with the "
             "project's `.venv`, which also measures the bf16 error of digits-trained checkpoints "
             "(`scripts/demo.py --model NAME --output DIR` trains one):", "", "```",
             "PYTHONPATH=src DIR/bin/python scripts/bench_report.py --train-modes eager --json bench.json",
             ".venv/bin/python scripts/bench_report.py --from-json bench.json --update-readme \\",
             "    --trained efficientnet_b1_pruned=RUN1/model_best.pth.tar --trained tf_efficientnet_cc_b0_4e=RUN2/model_best.pth.tar",
             "```", "", END]
    return "\n".join(lines)


@torch.no_grad()
def bf16_error_trained(name: str, checkpoint: Path, img_size: int = 32) -> dict[str, float]:
    """bf16 vs fp32 logits of a digits-trained checkpoint over the whole digits validation split:
    max relative error, top-1 agreement, and fp32 top-1 (needs scikit-learn for the digits)."""
    from effnet import create_model, optimize_for_inference
    from effnet.data import DigitsDataset, create_transform
    model = create_model(name, num_classes=10, checkpoint_path=str(checkpoint)).eval()
    cfg = model.pretrained_cfg
    tf = create_transform(img_size, interpolation="bicubic", mean=cfg["mean"], std=cfg["std"], crop_pct=1.0)
    data = DigitsDataset("val", transform=tf)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    ref = model(x)
    low = optimize_for_inference(model, dtype=torch.bfloat16, input_size=img_size)(x).float()
    return {"err": ((low - ref).abs().max() / ref.abs().max()).item(),
            "agree": (low.argmax(1) == ref.argmax(1)).float().mean().item(),
            "top1": (ref.argmax(1) == y).float().mean().item(), "count": float(len(data))}


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
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated names (default: %(default)s)")
    p.add_argument("--iters", type=int, default=5, help="timed rounds per batch size (batch 1: at least 20)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--batch-sizes", default="16,1", help="inference batch sizes (default: %(default)s)")
    p.add_argument("--img-size", type=int, default=None, help="inference input size (default: each model's own)")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-img", type=int, default=160)
    p.add_argument("--train-modes", default="eager,compiled", help="training modes (default: %(default)s)")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--update-readme", action="store_true")
    p.add_argument("--json", default=None, help="also write the raw figures here (after every model)")
    p.add_argument("--from-json", default=None, help="render figures saved by --json instead of measuring")
    p.add_argument("--trained", action="append", default=[], metavar="MODEL=CHECKPOINT",
                   help="also measure the bf16 logits error of this digits-trained checkpoint (repeatable)")
    args = p.parse_args()
    checkpoints = {}
    for item in args.trained:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            print(f"bench_report: --trained expects MODEL=CHECKPOINT with an existing file, got {item!r}",
                  file=sys.stderr)
            return 2
        checkpoints[name] = Path(path)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.from_json:
        figures = load_figures(Path(args.from_json))
    else:
        if not peer_models.available("reference"):
            print("bench_report: the reference implementation (timm) is not importable; run it in the "
                  "reference environment (see the docstring)", file=sys.stderr)
            return 2
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        train = None if args.no_train else (args.train_batch, args.train_img)
        batches = tuple(int(b) for b in args.batch_sizes.split(","))
        figures = measure(names, args.iters, train, Path(args.json) if args.json else None, batches, args.img_size,
                          tuple(args.train_modes.split(",")))
    trained = {name: bf16_error_trained(name, ckpt) for name, ckpt in checkpoints.items()}
    block = render(figures, trained)
    print(block)
    if args.update_readme:
        update_readme(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
