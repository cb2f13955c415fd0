"""`effnet upcycle`: turn a dense EfficientNet into its CondConv twin (outputs equal at the start),
optionally fine-tune it with the normal training loop, and save a local-dir: folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, EffnetError
from ..hf_dir import save_hf_dir
from ..outputs import fresh_dir
from ..validators import Rule, arg_type, at_least, memory_problem
from ..train import TrainConfig, add_train_arguments, build_loaders, evaluate, fit
from ..train.evaluate import resolve_device
from ..upcycle import upcycle
from ..loading import load_source_model, starting_point
from .prune import set_data_config, train_config, write_json

HELP = "build the CondConv twin of a dense model (same outputs at start), fine-tune it, save a local-dir: folder"

UPCYCLE_DEFAULTS = TrainConfig(opt="sgd", epochs=0, warmup_epochs=0.0, lr_base=0.01, sched="cosine", smoothing=0.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p)
    g = p.add_argument_group("upcycling")
    g.add_argument("--checkpoint", metavar="FILE",
                   help="weights of the dense model: a run's model_best.pth.tar (model, classes and preprocessing "
                        "come with it), .safetensors or .pth")
    g.add_argument("--random-weights", action="store_true", help="allow upcycling randomly initialised weights")
    g.add_argument("--experts", type=arg_type(Rule(int, 2)), required=True, metavar="E",
                   help="experts per CondConv layer (>= 2)")
    g.add_argument("--expert-noise", type=arg_type(at_least(0.0)), default=0.01, metavar="S",
                   help="zero-sum perturbation of the experts, relative to the kernel's std, so they can "
                        "specialise (default: 0.01; the mixed kernel is unchanged)")
    p.epilog = ("The dense model: --checkpoint RUN/model_best.pth.tar alone, or --model NAME[.TAG] (with "
                "--pretrained or --checkpoint), hf-hub:ORG/NAME, local-dir:DIR or a run folder; flags typed here "
                "override the run's preprocessing. --output DIR receives "
                "config.json and model.safetensors (and DIR/train with --epochs N > 0, which needs data). "
                "Default: --epochs 0 (no fine-tuning).")


def expert_bytes(dense: nn.Module, experts: int, training: bool) -> int:
    """A lower bound on the memory the twin's expert banks take: two copies while they are built (bank
    and perturbation), three more when fine-tuned (gradients, optimiser state)."""
    per_expert = sum(p.numel() for i, stage in enumerate(dense.cfg.stages) if stage.condconv
                     for name, p in dense.blocks[i].named_parameters()
                     if name.endswith(("conv_pw.weight", "conv_dw.weight", "conv_pwl.weight")))
    return experts * per_expert * 4 * (5 if training else 2)


def name_source(args: argparse.Namespace) -> str | None:
    """Fill in, unless typed, the dense model's name and its run's preprocessing (input size, crop,
    interpolation, mean, std) from `--checkpoint` or a run folder; returns the model as typed (None:
    the checkpoint names it), which is what its weights are loaded by."""
    given = vars(args)
    typed = given.get("model")
    if args.checkpoint and not Path(args.checkpoint).expanduser().exists():
        raise CheckpointError(f"--checkpoint {args.checkpoint!r} does not exist or is not a file")
    name, _, settings = starting_point(typed, args.checkpoint)
    if name is None:
        why = f" (--checkpoint {args.checkpoint} does not say which model it holds)" if args.checkpoint else ""
        raise EffnetError(f"no model: give --model NAME (or a run folder) or --checkpoint RUN/model_best.pth.tar{why}")
    given["model"] = typed or name
    for key, value in settings.items():
        given.setdefault(key, value)
    return typed


def run(args: argparse.Namespace) -> int:
    typed_model = name_source(args)
    cfg, epochs = train_config(args, UPCYCLE_DEFAULTS)
    if args.experts < 2:
        raise EffnetError(f"--experts must be >= 2, got {args.experts}")
    has_data = bool(cfg.dataset or cfg.data_dir)
    if epochs > 0 and not has_data:
        raise EffnetError(f"--epochs {epochs} needs training data: give --data-dir DIR or --dataset digits")
    device = resolve_device(cfg)
    torch.manual_seed(cfg.seed)
    loaders = build_loaders(cfg) if has_data else None
    classes = loaders[2] if loaders else None
    dense = load_source_model(cfg.model if typed_model else None, args.checkpoint, pretrained=cfg.pretrained,
                              data_classes=len(classes) if classes else None, num_classes=cfg.num_classes,
                              in_chans=cfg.in_chans, random_weights=args.random_weights)
    if dense.cfg.experts:
        raise EffnetError(f"{cfg.model} already has CondConv layers ({dense.cfg.experts} experts); "
                          f"upcycle a dense model")
    input_size = set_data_config(dense, cfg, dense.num_classes)
    problem = memory_problem(f"--experts {args.experts}", expert_bytes(dense, args.experts, epochs > 0),
                             "use fewer experts")
    if problem:
        raise EffnetError(problem)
    out = fresh_dir(cfg.output)  # never into an earlier result
    try:
        twin = upcycle(dense.eval(), args.experts, noise=args.expert_noise, seed=cfg.seed)
    except ValueError as e:
        raise EffnetError(str(e)) from None
    if loaders is not None:  # real images: random ones can drive a trained model far off its range
        x = next(iter(loaders[1]))[0][:16]
    else:
        x = torch.randn(4, *input_size, generator=torch.Generator().manual_seed(cfg.seed))
    with torch.no_grad():
        ref = dense(x)
        gap = float((twin.eval()(x) - ref).abs().max())
        rel = gap / max(float(ref.abs().max()), 1e-12)
    print(f"{twin.cfg.name}: {args.experts} experts in {sum(1 for s in twin.cfg.stages if s.condconv)} stages; "
          f"max |twin - dense| at init {gap:.2e} ({rel:.1e} of the largest logit)", flush=True)
    report: dict = dict(model=cfg.model, checkpoint=args.checkpoint, experts=args.experts, epochs=epochs,
                        max_abs_diff_at_init=gap, rel_diff_at_init=rel, input_size=list(input_size),
                        params=dict(dense=sum(p.numel() for p in dense.parameters()),
                                    upcycled=sum(p.numel() for p in twin.parameters())))
    t0 = time.perf_counter()
    if loaders is not None:
        train_loader, val_loader, _ = loaders
        report["top1_dense"] = evaluate(dense.to(device), val_loader, device=device)["top1"]
        report["top1_at_init"] = evaluate(twin.to(device), val_loader, device=device)["top1"]
        if epochs > 0:
            cfg.class_names = classes
            fit(twin, train_loader, val_loader, cfg, out / "train")
            report["top1_fine_tuned"] = evaluate(twin, val_loader, device=device)["top1"]
        print(", ".join(f"{k} {v:.2f}%" for k, v in report.items() if k.startswith("top1")), flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    save_hf_dir(twin.cpu().eval(), out, class_names=classes or dense.pretrained_cfg.get("label_names"))
    write_json(out / "upcycle_report.json", report)
    print(f"done: load it with create_model('local-dir:{out}')", flush=True)
    return 0
