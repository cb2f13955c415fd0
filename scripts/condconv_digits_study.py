"""Why does CondConv trained from scratch on the digits lag its dense twin? Each configuration below is
one run of the default recipe (`effnet train --model tf_efficientnet_cc_b0_4e --dataset digits
--img-size 32 --epochs 5`: AdamW, batch 32, cosine, label smoothing 0.1, seed 42) with one thing changed:

    effnet_e4 / reference_e4   effnet's and the reference's CondConv from identical initial weights
                               (effnet's init loaded into the reference model) and the same batches
    dense_e0                   the dense twin: the same widths, experts=0
    effnet_e1                  one expert: CondConv's per-sample kernel without the extra parameters
    *_64px                     at 64 px the CondConv stages run at 4x4, 2x2, 2x2 instead of 2x2, 1x1, 1x1
    effnet_e4_expert_lr0.1     expert banks and routing layers at a tenth of the learning rate
    effnet_e4_expert_no_wd     expert banks and routing layers without weight decay
    upcycle_e0_to_e4           `effnet upcycle --experts 4` of dense_e0's run folder, fine-tuned 1 epoch
    *_seed0                    a second seed, for differences too small to trust from one run

Every run is its own process with one thread, at most --jobs at a time; reference runs use
--reference-python (an environment with timm). A configuration whose result.json is already in
--output is not run again, so a study can be run in parts; the table covers all results there.

    .venv/bin/python scripts/condconv_digits_study.py --jobs 2 --reference-python /work/refenv/bin/python
    .venv/bin/python scripts/condconv_digits_study.py --only dense_e0,effnet_e4
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["OMP_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tf_efficientnet_cc_b0_4e"


@dataclasses.dataclass(frozen=True)
class Spec:
    """One configuration: what differs from the default recipe."""

    impl: str = "effnet"  # or "reference" (timm's model, started from effnet's initial weights)
    experts: int = 4
    img_size: int = 32
    seed: int = 42
    expert_lr_scale: float = 1.0
    expert_weight_decay: float | None = None  # None: the recipe's
    upcycle: bool = False  # upcycle dense_e0's trained model to 4 experts and fine-tune it


SPECS: dict[str, Spec] = {
    "effnet_e4": Spec(),
    "reference_e4": Spec(impl="reference"),
    "dense_e0": Spec(experts=0),
    "effnet_e1": Spec(experts=1),
    "effnet_e4_expert_lr0.1": Spec(expert_lr_scale=0.1),
    "effnet_e4_expert_no_wd": Spec(expert_weight_decay=0.0),
    "upcycle_e0_to_e4": Spec(upcycle=True),
    "effnet_e4_64px": Spec(img_size=64),
    "dense_e0_64px": Spec(experts=0, img_size=64),
    "effnet_e4_seed0": Spec(seed=0),
    "dense_e0_seed0": Spec(experts=0, seed=0),
    "effnet_e4_expert_lr0.1_seed0": Spec(expert_lr_scale=0.1, seed=0),
}

# the README's upcycling command ({dense}: dense_e0's run folder, {out}: this run's folder); the
# upcycle tool's own recipe (SGD, 0.01 per 256 images, cosine, no warmup, no label smoothing)
UPCYCLE_COMMAND = ["upcycle", "--model", "local-dir:{dense}", "--experts", "4", "--dataset", "digits", "--img-size",
                   "32", "--epochs", "1", "--workers", "0", "--output", "{out}/cc4"]


def is_expert_param(module_name: str, module: Any) -> bool:
    """Expert banks (CondConv2d weights) and routing layers, in effnet's and the reference's models."""
    return type(module).__name__ == "CondConv2d" or module_name.endswith("routing_fn")


def expert_optimizer(spec: Spec, model: Any, original: Any) -> Any:
    """A create_optimizer that gives the expert parameters their own groups (lr_scale is honoured by
    effnet's scheduler; weight decay is per group)."""
    expert_ids = {id(p) for n, m in model.named_modules() if is_expert_param(n, m)
                  for p in m.parameters(recurse=False)}

    def create(cfg: Any, params: Any, lr: float) -> Any:
        opt = original(cfg, params, lr)
        groups = []
        for g in opt.param_groups:
            rest = {k: v for k, v in g.items() if k != "params"}
            experts = [p for p in g["params"] if id(p) in expert_ids]
            others = [p for p in g["params"] if id(p) not in expert_ids]
            if others:
                groups.append(dict(rest, params=others))
            if experts:
                wd = rest["weight_decay"] if spec.expert_weight_decay is None else spec.expert_weight_decay
                groups.append(dict(rest, params=experts, weight_decay=wd, lr_scale=spec.expert_lr_scale))
        opt.param_groups = []  # no state yet: regrouping the fresh optimiser is all it takes
        for g in groups:
            opt.add_param_group(g)
        return opt

    return create


def routing_summary(model: Any, loader: Any) -> list[dict[str, Any]]:
    """Per CondConv block over the validation images: the block's input size, and of the routing
    weights sigmoid(W x + b): mean, spread across images (std), across experts (std of one image's
    weights), across classes (max - min of the per-class means, largest over experts), and the share of
    images whose largest weight is below 0.1 (the block's kernel all but switched off for them)."""
    import torch
    blocks = [(n, m) for n, m in model.named_modules() if getattr(m, "routing_fn", None) is not None]
    sizes: dict[str, list[int]] = {}
    outs: dict[str, list[Any]] = {n: [] for n, _ in blocks}
    handles = []
    for n, b in blocks:
        handles.append(b.register_forward_pre_hook(lambda m, a, n=n: sizes.__setitem__(n, list(a[0].shape[-2:]))))
        handles.append(b.routing_fn.register_forward_hook(
            lambda m, a, o, n=n: outs[n].append(torch.sigmoid(o.detach().float()))))
    labels = []
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            model(x)
            labels.append(y)
    for h in handles:
        h.remove()
    y = torch.cat(labels)
    rows = []
    for n, _ in blocks:
        r = torch.cat(outs[n])  # (images, experts)
        per_class = torch.stack([r[y == c].mean(0) for c in y.unique()])
        rows.append(dict(block=n, input_hw=sizes.get(n), mean=round(float(r.mean()), 4),
                         std_images=round(float(r.std(0).mean()), 4),
                         std_experts=round(float(r.std(1).mean()), 4) if r.shape[1] > 1 else 0.0,
                         class_spread=round(float((per_class.max(0).values - per_class.min(0).values).max()), 4),
                         gated_off=round(float((r.max(1).values < 0.1).float().mean()), 4)))
    return rows


def read_summary(folder: Path) -> list[float]:
    with open(folder / "summary.csv", newline="") as f:
        return [float(r["eval_top1"]) for r in csv.DictReader(f)]


def run_upcycle(out: Path) -> dict[str, Any]:
    """The README's upcycling command on dense_e0's run folder (its best epoch's weights), in this process."""
    from effnet import cli
    dense = out.parent / "dense_e0" / "train"
    if not (out.parent / "dense_e0" / "result.json").exists():
        raise SystemExit(f"study: upcycle_e0_to_e4 needs dense_e0's run first (no {dense.parent}/result.json)")
    cmd = [a.format(dense=dense, out=out) for a in UPCYCLE_COMMAND]
    start = time.perf_counter()
    code = cli.main(cmd)
    if code:
        raise SystemExit(f"study: effnet upcycle failed with exit status {code}")
    report = json.loads((out / "cc4" / "upcycle_report.json").read_text())
    tuned = read_summary(out / "cc4" / "train")
    return dict(top1_per_epoch=[report["top1_at_init"], *tuned], final=report["top1_fine_tuned"],
                best=max(tuned), dense_top1=report["top1_dense"], at_init=report["top1_at_init"],
                params=report["params"]["upcycled"], train_seconds=round(time.perf_counter() - start, 1),
                command=" ".join(["effnet", *cmd]))


def run_one(name: str, out: Path) -> dict[str, Any]:
    """Train one configuration in this process; returns its result."""
    import torch
    torch.set_num_threads(1)
    spec = SPECS[name]
    if spec.upcycle:
        return run_upcycle(out)
    from effnet.registry import build_model, get_config
    from effnet.train import runner
    from effnet.train.config import config_from_args
    from effnet.train.data import build_loaders
    built: dict[str, Any] = {}

    def factory(model_name: str, pretrained: bool = False, **kw: Any) -> Any:
        cfg = dataclasses.replace(get_config(model_name), experts=spec.experts)
        if kw.get("bn_momentum") is not None:
            cfg = dataclasses.replace(cfg, bn_momentum=kw["bn_momentum"])
        model = build_model(cfg, num_classes=kw["num_classes"], in_chans=kw.get("in_chans", 3),
                            drop_rate=kw.get("drop_rate", 0.0), drop_path_rate=kw.get("drop_path_rate", 0.0))
        built["init_checksum"] = float(sum(p.detach().double().abs().sum() for p in model.parameters()))
        if spec.impl == "reference":
            import timm  # the reference implementation, in its own environment only
            ref = timm.create_model(model_name, num_classes=kw["num_classes"], in_chans=kw.get("in_chans", 3))
            ref.load_state_dict(model.state_dict(), strict=True)  # the same key names
            model = ref
        built["model"] = model
        if spec.expert_lr_scale != 1.0 or spec.expert_weight_decay is not None:
            # wherever the training loop imports create_optimizer from (the train package is being reorganised)
            for module in [importlib.import_module(f"effnet.train.{m}") for m in ("loop", "run_state")
                           if importlib.util.find_spec(f"effnet.train.{m}")]:
                if hasattr(module, "create_optimizer"):
                    module.create_optimizer = expert_optimizer(spec, model, module.create_optimizer)
        return model

    runner.create_model = factory
    cfg = config_from_args(dict(model=MODEL, dataset="digits", img_size=spec.img_size, epochs=5, workers=0,
                                seed=spec.seed, output=str(out / "train")))
    start = time.perf_counter()
    code = runner.run_training(cfg)
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(f"study: {name} failed with exit status {code}")
    top1 = read_summary(out / "train")
    model = built["model"]
    result = dict(top1_per_epoch=top1, final=top1[-1], best=max(top1), train_seconds=round(seconds, 1),
                  params=sum(p.numel() for p in model.parameters()), init_checksum=built["init_checksum"])
    if spec.experts:
        _, val_loader, _ = build_loaders(cfg)
        result["routing"] = routing_summary(model, val_loader)
    return result


def reanalyse(parent: Path) -> None:
    """Recompute the routing summary of finished effnet CondConv runs from their last.pth.tar."""
    import torch
    from effnet.checkpoint import load_state_dict_into, read_state_dict
    from effnet.registry import build_model, get_config
    from effnet.train.config import config_from_args
    from effnet.train.data import build_loaders
    torch.set_num_threads(1)
    for name, spec in SPECS.items():
        path = parent / name / "result.json"
        if spec.impl != "effnet" or spec.upcycle or not spec.experts or not path.exists():
            continue
        model = build_model(dataclasses.replace(get_config(MODEL), experts=spec.experts), num_classes=10)
        checkpoint = parent / name / "train" / "last.pth.tar"
        load_state_dict_into(model, read_state_dict(str(checkpoint), use_ema=False), str(checkpoint))
        cfg = config_from_args(dict(model=MODEL, dataset="digits", img_size=spec.img_size, workers=0))
        result = json.loads(path.read_text())
        result["routing"] = routing_summary(model, build_loaders(cfg)[1])
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"study: routing of {name} recomputed from {checkpoint}", flush=True)


def child(name: str, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = run_one(name, out)
    result.update(name=name, spec=dataclasses.asdict(SPECS[name]), wall_seconds=round(time.perf_counter() - start, 1))
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out / "result.json")
    return 0


def launch(name: str, args: argparse.Namespace, parent: Path) -> subprocess.Popen:
    python = args.reference_python if SPECS[name].impl == "reference" else sys.executable
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    log = open(parent / f"{name}.log", "w")
    print(f"study: start {name}", flush=True)
    return subprocess.Popen([python, __file__, "--child", name, "--output", str(parent)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'configuration':30} {'params':>7} {'best':>6} {'final':>6}  {'wall':>6}  top-1 per epoch",
             "-" * 100]
    for name, r in results.items():
        per_epoch = " ".join(f"{t:.1f}" for t in r["top1_per_epoch"])
        lines.append(f"{name:30} {r['params'] / 1e6:6.2f}M {r['best']:6.2f} {r['final']:6.2f} "
                     f"{r['wall_seconds']:6.0f}s  {per_epoch}")
    return "\n".join(lines)


def routing_table(results: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, r in results.items():
        if not r.get("routing"):
            continue
        lines.append(f"routing of {name} (block: input size, std over images / experts, class spread, "
                     f"images with every weight < 0.1)")
        for row in r["routing"]:
            hw = "x".join(str(s) for s in row["input_hw"] or [])
            off = f"{100 * row['gated_off']:.1f}%" if "gated_off" in row else "-"  # not in reference runs
            lines.append(f"  {row['block']:14} {hw:>5}  {row['std_images']:.3f} / {row['std_experts']:.3f}  "
                         f"{row['class_spread']:.3f}  off for {off}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated configurations (default: all): " + ", ".join(SPECS))
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default: 2)")
    p.add_argument("--reference-python", default="/work/refenv/bin/python",
                   help="python of an environment with timm, for the reference runs")
    p.add_argument("--output", default=str(ROOT / "runs" / "condconv-study"), help="study folder")
    p.add_argument("--reanalyse", action="store_true",
                   help="recompute the routing summary of the finished effnet runs, then print the table")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    parent = Path(args.output)
    if args.child:
        return child(args.child, parent / args.child)
    if args.reanalyse:
        reanalyse(parent)
        args.only = ",".join(n for n in SPECS if (parent / n / "result.json").exists())
    names = args.only.split(",") if args.only else list(SPECS)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        p.error(f"--only: unknown configuration(s) {', '.join(unknown)}; known: {', '.join(SPECS)}")
    parent.mkdir(parents=True, exist_ok=True)
    todo = [n for n in names if not (parent / n / "result.json").exists()]
    stale = [n for n in todo if (parent / n).exists()]
    if stale:
        sys.exit(f"study: {', '.join(stale)} in {parent} have no result.json (a failed run?); move them away first")
    running: list[tuple[str, subprocess.Popen]] = []
    failed = []
    while todo or running:
        while todo and len(running) < max(1, args.jobs):
            name = todo.pop(0)
            running.append((name, launch(name, args, parent)))
        time.sleep(2)
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                if item[1].returncode:
                    failed.append(item[0])
                print(f"study: {item[0]} ended with status {item[1].returncode}", flush=True)
    results = {n: json.loads((parent / n / "result.json").read_text()) for n in SPECS
               if (parent / n / "result.json").exists()}
    print(f"\ndigits, default recipe, 5 epochs, one thread per run, {args.jobs} run(s) at a time; {parent}")
    print(table(results))
    print(routing_table(results))
    (parent / "study.json").write_text(json.dumps(results, indent=1) + "\n")
    if failed:
        print(f"study: failed: {', '.join(failed)} (see {parent}/<name>.log)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
