"""The training flags on an argparse parser, named as in timm's train.py. Each flag's default is
`argparse.SUPPRESS`, so only typed flags reach the namespace and `config_from_args` can layer them over
the defaults, the dataset's settings, a `--recipe` and a `--config` file."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..validators import arg_type
from .config import _FIELDS, COMPILE_BACKENDS, RECIPES
from .rules import DATASETS, OPTIMIZERS, RULES, SCHEDULERS


def _flag(p: argparse._ActionsContainer, name: str, help: str, short: str | None = None,
          aliases: tuple[str, ...] = (), **kw: Any) -> None:
    """A flag (with timm's `short` form, where timm has one) whose default comes from TrainConfig (shown
    in the help), absent from the namespace when not typed."""
    dest = name.lstrip("-").replace("-", "_")
    default = _FIELDS[dest].default if dest in _FIELDS else None
    if "type" in kw and dest in RULES:
        kw["type"] = arg_type(RULES[dest])  # the same check as a YAML value of this setting
    elif dest in RULES and RULES[dest].choices and "choices" not in kw and kw.get("action") is None:
        kw["type"] = arg_type(RULES[dest])
    if kw.get("action") not in ("store_true", "store_false") and default not in (None, dataclasses.MISSING):
        help = f"{help} (default: {default})"
    p.add_argument(*([short] if short else []), name, *aliases, dest=dest, default=argparse.SUPPRESS, help=help,
                   **kw)


def add_train_arguments(parser: argparse.ArgumentParser, *, model_required: bool = False) -> None:
    """Register the training flags (timm train.py names) on `parser`; read them with `config_from_args`."""
    g = parser.add_argument_group("run")
    _flag(g, "--config", short="-c", help="YAML file of settings (keys as in args.yaml); flags typed here override it",
          metavar="FILE")
    _flag(g, "--recipe", f"preset ({', '.join(RECIPES)}): paper is the papers' published ImageNet recipe, lr "
          "scaled to the batch",
          choices=tuple(RECIPES))
    _flag(g, "--output", "output folder (default: output/train/<time>-<model>-<size>, or the resumed "
          "checkpoint's folder)", metavar="DIR")
    _flag(g, "--resume", "continue a run from its last.pth.tar", metavar="CHECKPOINT")
    _flag(g, "--seed", "random seed", type=int)
    _flag(g, "--amp", "mixed precision (bfloat16 on CPU; --amp-dtype on CUDA)", action="store_true")
    _flag(g, "--amp-dtype", "autocast dtype", choices=("bfloat16", "float16"))
    _flag(g, "--channels-last", "channels-last memory layout", action="store_true")
    _flag(g, "--compile", aliases=("--torchcompile",), nargs="?", const="inductor", choices=COMPILE_BACKENDS,
          metavar="BACKEND", help="train through torch.compile (BACKEND: inductor when not given; aot_eager or "
          "eager only trace); validation and the saved weights use the plain model")
    _flag(g, "--device", "torch device (default: cuda if available, else cpu)")
    _flag(g, "--log-interval", "batches between log lines when not on a terminal", type=int)
    _flag(g, "--eval-metric", "metric that picks model_best", choices=("top1", "top5", "loss"))
    g = parser.add_argument_group("experiment tracking (optional extras)")
    _flag(g, "--log-tensorboard", "write the settings and epoch metrics as TensorBoard events to "
          "OUTPUT/tensorboard (pip install 'effnet[tensorboard]')", action="store_true")
    _flag(g, "--log-mlflow", "log the settings and epoch metrics to an MLflow run (pip install 'effnet[mlflow]')",
          action="store_true")
    _flag(g, "--mlflow-uri", "MLflow tracking store (default: MLFLOW_TRACKING_URI, else MLflow's local default)",
          type=str, metavar="URI")
    _flag(g, "--mlflow-experiment", "MLflow experiment name", type=str, metavar="NAME")

    g = parser.add_argument_group("model")
    _flag(g, "--model", short="-m", help="model name or local-dir:DIR", required=model_required, metavar="NAME")
    _flag(g, "--pretrained", "start from the published weights", action="store_true")
    _flag(g, "--initial-checkpoint", "start from these weights", metavar="FILE")
    _flag(g, "--num-classes", "classifier outputs (default: the data's class count)", type=int)
    _flag(g, "--in-chans", "input channels", type=int)
    _flag(g, "--drop", "dropout before the classifier (default: the model's)", type=float)
    _flag(g, "--drop-path", "stochastic depth rate", type=float)
    _flag(g, "--bn-momentum", "BatchNorm momentum, PyTorch convention", type=float)
    _flag(g, "--head-init-scale", "scale the fresh classifier's initial weights (default: 0, zero logits, when "
          "training from scratch; 1, the initialisation as made, otherwise)", type=float)
    _flag(g, "--sync-bn", "SyncBatchNorm across processes (CUDA only)", action="store_true")

    g = parser.add_argument_group("data")
    _flag(g, "--data-dir", "folder with train/ and val/ (or validation/) class folders", metavar="DIR")
    _flag(g, "--dataset", f"embedded dataset: {', '.join(DATASETS)}", choices=DATASETS)
    _flag(g, "--train-split", "training sub-folder of --data-dir")
    _flag(g, "--val-split", "validation sub-folder of --data-dir")
    _flag(g, "--img-size", "image size (default: the model's)", type=int)
    _flag(g, "--crop-pct", "evaluation centre-crop fraction", type=float)
    _flag(g, "--interpolation", "evaluation resize interpolation")
    _flag(g, "--train-interpolation", "training resize interpolation ('random': bilinear or bicubic)")
    _flag(g, "--mean", "normalisation mean per channel", type=float, nargs="+")
    _flag(g, "--std", "normalisation std per channel", type=float, nargs="+")
    _flag(g, "--batch-size", short="-b", help="images per process per step", type=int, metavar="N")
    _flag(g, "--validation-batch-size", short="-vb", help="evaluation batch (default: --batch-size)", type=int,
          metavar="N")
    _flag(g, "--workers", short="-j", help="DataLoader worker processes", type=int)

    g = parser.add_argument_group("augmentation and regularisation")
    _flag(g, "--no-aug", "train on resized centre crops only", action="store_true")
    _flag(g, "--scale", "RandomResizedCrop area range", type=float, nargs=2)
    _flag(g, "--ratio", "RandomResizedCrop aspect range", type=float, nargs=2)
    _flag(g, "--hflip", "horizontal flip probability", type=float)
    _flag(g, "--vflip", "vertical flip probability", type=float)
    _flag(g, "--color-jitter", "colour jitter strength (without --aa)", type=float)
    _flag(g, "--aa", "AutoAugment policy: 'original', 'v0', 'rand-m9-mstd0.5', ...")
    _flag(g, "--reprob", "random erasing probability", type=float)
    _flag(g, "--remode", "random erasing fill: pixel, rand, const")
    _flag(g, "--recount", "random erasing count", type=int)
    _flag(g, "--mixup", "Mixup alpha (0: off)", type=float)
    _flag(g, "--cutmix", "CutMix alpha (0: off)", type=float)
    _flag(g, "--mixup-prob", "probability of mixing a batch", type=float)
    _flag(g, "--mixup-switch-prob", "probability of CutMix when both are on", type=float)
    _flag(g, "--mixup-mode", "batch, pair or elem")
    _flag(g, "--smoothing", "label smoothing", type=float)

    g = parser.add_argument_group("optimiser and schedule")
    _flag(g, "--opt", f"optimiser: {', '.join(OPTIMIZERS)}", choices=OPTIMIZERS)
    _flag(g, "--opt-eps", "optimiser epsilon (default: 1e-3 for rmsproptf, 1e-8 otherwise)", type=float)
    _flag(g, "--momentum", "momentum", type=float)
    _flag(g, "--weight-decay", "weight decay, not applied to norms and biases (default: 0.05 for adamw, 2e-5 "
          "otherwise)", type=float)
    _flag(g, "--clip-grad", "gradient clipping threshold", type=float)
    _flag(g, "--clip-mode", "norm or value", choices=("norm", "value"))
    _flag(g, "--lr", "learning rate (default: --lr-base scaled to the global batch)", type=float)
    _flag(g, "--lr-base", "learning rate at --lr-base-size images per step, scaled by the square root of the "
          "batch ratio for adam/adamw, linearly otherwise (default: 0.016 for adam/adamw, 0.1 otherwise)",
          type=float)
    _flag(g, "--lr-base-size", "batch that --lr-base refers to", type=int)
    _flag(g, "--sched", f"schedule after warmup: {', '.join(SCHEDULERS)}", choices=SCHEDULERS)
    _flag(g, "--epochs", "epochs", type=int)
    _flag(g, "--warmup-epochs", "linear warmup epochs, fractions allowed (default: 5, at most a tenth of "
          "--epochs)", type=float)
    _flag(g, "--warmup-lr", "learning rate at the start of warmup", type=float)
    _flag(g, "--min-lr", "cosine floor", type=float)
    _flag(g, "--decay-epochs", "step schedule: epochs between decays", type=float)
    _flag(g, "--decay-rate", "step schedule: factor per decay", type=float)
    _flag(g, "--model-ema", "keep an exponential moving average of the weights", action="store_true")
    _flag(g, "--model-ema-decay", "EMA decay", type=float)
