"""Training settings: the `TrainConfig` dataclass, its command-line flags (close to timm's train.py),
YAML config files, and the `--recipe` presets (`paper`: the published recipe).

Precedence, lowest first: dataclass defaults, the data settings of an embedded `--dataset`,
`--recipe`, `--config FILE`, flags given on the command line. Flags are registered with
`argparse.SUPPRESS` defaults so that only the flags a user typed appear in the namespace and can
override the lower layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EffnetError
from ..validators import arg_type
from .rules import DATASETS, OPTIMIZERS, RULES, SCHEDULERS, SEQUENCES, combined_problem, flag_name


class ConfigError(EffnetError, ValueError):
    """A training setting that is missing, unknown or out of range."""


@dataclass
class TrainConfig:
    """Every setting of a training run; `args.yaml` in the output folder is `to_dict()` of it."""

    # model
    model: str = "tf_efficientnet_cc_b0_4e"
    pretrained: bool = False
    initial_checkpoint: str | None = None
    num_classes: int | None = None
    in_chans: int = 3
    drop: float | None = None
    drop_path: float | None = None
    bn_momentum: float | None = None
    head_init_scale: float | None = None
    sync_bn: bool = False
    # data
    data_dir: str | None = None
    dataset: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    img_size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    train_interpolation: str = "random"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # 32, not timm's 128: on a small dataset 128 leaves so few steps per epoch (11 on the digits) that
    # BatchNorm's running statistics still hold the first, wild batches when the run is evaluated
    batch_size: int = 32
    validation_batch_size: int | None = None
    workers: int = 4
    # augmentation and regularisation
    no_aug: bool = False
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.4
    aa: str | None = None
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1
    # optimiser
    # AdamW, not timm's SGD: from scratch on small data it learns in a few epochs where SGD at the same
    # batch stalls (digits, 5 epochs, batch 32: 85% top-1 with SGD at 0.0125, 97% with AdamW)
    opt: str = "adamw"
    opt_eps: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 0.05 for AdamW (decoupled), 2e-5 (timm's) for the others
    clip_grad: float | None = None
    clip_mode: str = "norm"
    lr: float | None = None
    lr_base: float | None = None  # None: 0.016 for Adam/AdamW, 0.1 (timm's) for the others
    lr_base_size: int = 256
    # schedule
    sched: str = "cosine"
    epochs: int = 300
    warmup_epochs: float | None = None  # None: 5 epochs, at most a tenth of the run (scheduler.warmup_epochs)
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    decay_epochs: float = 2.4
    decay_rate: float = 0.97
    freeze_epochs: int = 0
    # EMA
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    # run
    amp: bool = False
    amp_dtype: str = "bfloat16"
    channels_last: bool = False
    seed: int = 42
    output: str | None = None
    resume: str | None = None
    eval_metric: str = "top1"
    log_interval: int = 50
    log_tensorboard: bool = False
    log_mlflow: bool = False
    mlflow_uri: str | None = None
    mlflow_experiment: str = "effnet"
    device: str | None = None
    recipe: str | None = None
    config: str | None = None
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-friendly values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        """A config from a dict, rejecting keys that are not settings (hyphens accepted as underscores)."""
        return apply_overrides(cls(), values, source)

    def scaled_lr(self, global_batch: int) -> float:
        """The learning rate: `lr` when set, else `lr_base` scaled to the global batch, as timm does:
        with the square root of the batch ratio for Adam/AdamW, linearly for the others."""
        if self.lr is not None:
            return self.lr
        ratio = global_batch / self.lr_base_size
        if self.opt.lower().startswith("adam"):
            return (0.016 if self.lr_base is None else self.lr_base) * math.sqrt(ratio)
        return (0.1 if self.lr_base is None else self.lr_base) * ratio


# The papers' recipe (TF EfficientNet / CondConv): RMSProp TF-style, 0.256 per 2048 images, step decay
# 0.97 every 2.4 epochs after 5 warmup epochs, label smoothing 0.1, AutoAugment, weight decay 1e-5,
# BatchNorm decay 0.99 (= momentum 0.01 in PyTorch's convention), dropout and stochastic depth 0.2,
# weight EMA 0.9999, 350 epochs.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(opt="rmsproptf", opt_eps=1e-3, momentum=0.9, lr=None, lr_base=0.256, lr_base_size=2048,
                 sched="step", decay_epochs=2.4, decay_rate=0.97, warmup_epochs=5.0, warmup_lr=1e-6,
                 smoothing=0.1, aa="original", weight_decay=1e-5, bn_momentum=0.01, drop=0.2, drop_path=0.2,
                 model_ema=True, model_ema_decay=0.9999, epochs=350, train_interpolation="bicubic",
                 # the TF classifier init, and the augmentation even where a dataset asks for none
                 head_init_scale=1.0, no_aug=False, crop_pct=None),
}

# Data settings an embedded dataset brings, applied before any recipe: the digits are 8x8 images, so a
# random crop of 8% of the area keeps about 2x2 of their pixels and a mirror image can be another digit.
# With timm's crops and flips AdamW stayed at 20% top-1 after 5 epochs; the same run without them
# reached 79% (batch 128; 97% with the defaults, scripts/bench_default_recipe.py).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(no_aug=True, crop_pct=1.0, train_interpolation="bicubic"),
}

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any, source: str) -> Any:
    """A YAML (or saved, or typed) value as the field's type, checked by the same rule as its flag; a
    wrong type or range is a ConfigError naming `source` and the flag."""
    if value is None:
        return None
    if name == "class_names":
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: class_names must be a list of names, got {value!r}")
        return [str(v) for v in value]
    rule = RULES.get(name)
    if rule is None:
        return value
    try:
        if name in SEQUENCES:
            items = value if isinstance(value, (list, tuple)) else [value]
            return tuple(rule.parse(v) for v in items)
        return rule.parse(value)
    except ValueError as e:
        raise ConfigError(f"{source}: {flag_name(name)} {e}") from None


def apply_overrides(cfg: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """`cfg` with `values` replacing its fields; unknown keys are an error naming `source`."""
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}")
    return dataclasses.replace(cfg, **{k: _coerce(k, v, source) for k, v in values.items()})


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from `path`, with errors naming the file."""
    import yaml
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of settings, not {type(data).__name__}")
    return data


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check ranges and choices; returns `cfg`."""
    checks = [
        (cfg.opt.lower() in OPTIMIZERS, f"--opt {cfg.opt!r}: choose from {', '.join(OPTIMIZERS)}"),
        (cfg.sched in SCHEDULERS, f"--sched {cfg.sched!r}: choose from {', '.join(SCHEDULERS)}"),
        (cfg.dataset is None or cfg.dataset in DATASETS,
         f"--dataset {cfg.dataset!r}: the embedded datasets are {', '.join(DATASETS)}"),
        (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
        (cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
        (cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}"),
        (cfg.lr is None or (math.isfinite(cfg.lr) and cfg.lr > 0), f"--lr must be > 0, got {cfg.lr}"),
        (0.0 <= cfg.smoothing < 1.0, f"--smoothing must be in [0, 1), got {cfg.smoothing}"),
        (cfg.warmup_epochs is None or cfg.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {cfg.warmup_epochs}"),
        (cfg.decay_epochs > 0, f"--decay-epochs must be > 0, got {cfg.decay_epochs}"),
        (0.0 <= cfg.model_ema_decay < 1.0, f"--model-ema-decay must be in [0, 1), got {cfg.model_ema_decay}"),
        (cfg.amp_dtype in ("bfloat16", "float16"), f"--amp-dtype {cfg.amp_dtype!r}: bfloat16 or float16"),
        (cfg.clip_mode in ("norm", "value"), f"--clip-mode {cfg.clip_mode!r}: norm or value"),
        (cfg.eval_metric in ("top1", "top5", "loss"), f"--eval-metric {cfg.eval_metric!r}: top1, top5 or loss"),
        (cfg.img_size is None or cfg.img_size >= 8, f"--img-size must be >= 8, got {cfg.img_size}"),
        (cfg.num_classes is None or cfg.num_classes >= 1, f"--num-classes must be >= 1, got {cfg.num_classes}"),
        (cfg.freeze_epochs >= 0, f"--freeze-epochs must be >= 0, got {cfg.freeze_epochs}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for name in RULES:  # values set from Python rather than parsed from a flag or a file
        _coerce(name, getattr(cfg, name), "setting")
    problem = combined_problem(cfg)
    if problem:
        raise ConfigError(problem)
    if cfg.recipe is not None and cfg.recipe not in RECIPES:
        raise ConfigError(f"--recipe {cfg.recipe!r}: known recipes are {', '.join(RECIPES)}")
    return cfg


def config_from_args(args: argparse.Namespace | dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """The run's config: defaults (or `base`), then the embedded dataset's data settings, then the
    recipe, then the YAML file, then the flags.

    Namespace entries that are not TrainConfig fields (a tool's own flags) are ignored.
    """
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    given = {k: v for k, v in given.items() if k in _FIELDS}
    cfg = base or TrainConfig()
    from_file = load_yaml(given["config"]) if given.get("config") else {}
    # a dataset's settings and a recipe apply only when asked for here; a `base` (a resumed run's
    # settings) already holds their values
    dataset = given.get("dataset", from_file.get("dataset"))
    if dataset in DATASET_DEFAULTS:
        cfg = apply_overrides(cfg, DATASET_DEFAULTS[dataset], f"dataset {dataset!r}")
    recipe = given.get("recipe", from_file.get("recipe"))
    if recipe is not None:
        if recipe not in RECIPES:
            raise ConfigError(f"--recipe {recipe!r}: known recipes are {', '.join(RECIPES)}")
        cfg = apply_overrides(cfg, dict(RECIPES[recipe], recipe=recipe), f"recipe {recipe!r}")
    if from_file:
        from_file.pop("config", None)
        cfg = apply_overrides(cfg, from_file, f"config file {given['config']!r}")
    cfg = apply_overrides(cfg, given, "command line")
    return validate_config(cfg)


def _flag(p: argparse._ActionsContainer, name: str, help: str, short: str | None = None, **kw: Any) -> None:
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
    p.add_argument(*([short] if short else []), name, dest=dest, default=argparse.SUPPRESS, help=help, **kw)


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
    _flag(g, "--device", "torch device (default: cuda if available, else cpu)")
    _flag(g, "--log-interval", "batches between log lines when not on a terminal", type=int)
    _flag(g, "--eval-metric", "metric that picks model_best", choices=("top1", "top5", "loss"))
    g = parser.add_argument_group("experiment tracking (optional extras)")
    _flag(g, "--log-tensorboard", "write the settings and epoch metrics as TensorBoard events to "
          "OUTPUT/tensorboard (pip install 'effnet[tensorboard]')", action="store_true")
    _flag(g, "--log-mlflow", "log the settings and epoch metrics to an MLflow run (pip install 'effnet[mlflow]')",
          action="store_true")
    _flag(g, "--mlflow-uri", "MLflow tracking store (default: MLFLOW_TRACKING_URI, else MLflow's local default)",
          metavar="URI")
    _flag(g, "--mlflow-experiment", "MLflow experiment name", metavar="NAME")

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


def resolve_output_dir(cfg: TrainConfig) -> Path:
    """Where the run writes. A resumed run continues in the folder holding its checkpoint (a copy
    of a run continues in the copy). A new run gets --output, else output/train/<time>-<model>-<size>;
    when that folder already holds something, the first free `DIR-1`, `DIR-2`, ... instead (with a
    warning), so a new run never writes into an existing one. The folder is created here."""
    import time

    from ..outputs import fresh_dir
    if cfg.resume:
        here = Path(cfg.resume).expanduser().resolve().parent
        if not cfg.output or Path(cfg.output).expanduser().resolve() == here:
            return here
    if cfg.output:
        base = Path(cfg.output).expanduser()
    else:
        size = cfg.img_size if cfg.img_size else "native"
        model = cfg.model.replace("local-dir:", "").replace("/", "_")
        base = Path("output") / "train" / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{size}"
    return fresh_dir(base)

