"""Training settings: the `TrainConfig` dataclass, YAML config files, and the `--recipe` presets
(`paper`: the published recipe). The command-line flags are in `cli_args.py`.

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
from .rules import DATASETS, OPTIMIZERS, RULES, SCHEDULERS, SEQUENCES, combined_problem, flag_name


class ConfigError(EffnetError, ValueError):
    """A training setting that is missing, unknown or out of range."""


# torch.compile backends `--compile` takes: inductor generates fused kernels; aot_eager and eager only
# trace (quick, for checking that a model compiles)
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


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
    compile: str | None = None  # a torch.compile backend for the training forward, or None (eager)
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
    if name == "compile":  # `compile: true` in YAML means the default backend, false means eager
        if isinstance(value, bool):
            return "inductor" if value else None
        if value not in COMPILE_BACKENDS:
            raise ConfigError(f"{source}: --compile {value!r}: choose from {', '.join(COMPILE_BACKENDS)}")
        return value
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
    for name in (*RULES, "compile"):  # values set from Python rather than parsed from a flag or a file
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

