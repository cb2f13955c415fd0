"""What each training setting may be: one rule per TrainConfig field, used by the command-line flag
(at parse time) and for the same key in a YAML config or a resumed run's saved settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..validators import COMMON, INTERPOLATIONS, Rule, at_least, check_sequence, memory_problem, positive, unit

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsproptf", "rmsprop", "adamw", "adam")
SCHEDULERS = ("step", "cosine", "none")
DATASETS = ("digits",)
MAX_SEED = 2**32 - 1  # NumPy's limit; torch's generators take any value up to it too
# the tracking stores MLflow opens: a folder (a path or file:), a server, Databricks, or a database
# named by its SQLAlchemy dialect (postgresql+psycopg2: and the like)
MLFLOW_SCHEMES = ("file", "http", "https", "databricks", "sqlite", "postgresql", "mysql", "mssql")


@dataclass(frozen=True)
class Name(Rule):
    """Text that must hold more than blanks (a name the setting is looked up by)."""

    kind: type = str

    def parse(self, value: Any) -> Any:
        text = super().parse(value)
        if not text.strip():
            raise ValueError(f"must not be empty, got {text!r}")
        return text


class TrackingUri(Name):
    """An MLflow tracking store MLflow can open; a local store must be a folder, not a file."""

    def parse(self, value: Any) -> Any:
        uri = super().parse(value)
        scheme = urlparse(uri).scheme.lower()
        if len(scheme) > 1 and scheme.split("+")[0] not in MLFLOW_SCHEMES:  # one letter: a Windows drive
            raise ValueError(f"has the unsupported scheme {scheme + ':'!r}; use a folder, file:, http(s):, databricks "
                             f"or a database URI (sqlite:, postgresql:, mysql:, mssql:), got {uri!r}")
        if len(scheme) <= 1 or scheme == "file":
            folder = Path(urlparse(uri).path if scheme == "file" else uri).expanduser()
            if folder.exists() and not folder.is_dir():
                raise ValueError(f"names a file, not a folder (MLflow's local store is a folder of runs), got {uri!r}")
        return uri


RULES: dict[str, Rule] = dict(
    # model
    model=Rule(str), pretrained=Rule(bool), initial_checkpoint=Rule(str), num_classes=COMMON["num_classes"],
    in_chans=COMMON["in_chans"], drop=unit(open_hi=True), drop_path=unit(open_hi=True), bn_momentum=unit(),
    head_init_scale=Rule(float), sync_bn=Rule(bool),
    # data
    data_dir=Rule(str), dataset=Rule(str, choices=DATASETS), train_split=Rule(str), val_split=Rule(str),
    img_size=COMMON["img_size"], crop_pct=COMMON["crop_pct"], interpolation=COMMON["interpolation"],
    train_interpolation=Rule(str, choices=INTERPOLATIONS + ("random",)),
    mean=COMMON["mean"], std=COMMON["std"], batch_size=COMMON["batch_size"], validation_batch_size=positive(int),
    workers=COMMON["workers"],
    # augmentation and regularisation
    no_aug=Rule(bool), scale=Rule(float, 0.0, 1.0, lo_open=True), ratio=positive(), hflip=unit(), vflip=unit(),
    color_jitter=at_least(0.0), aa=Rule(str), reprob=unit(), remode=Rule(str, choices=("pixel", "rand", "const")),
    recount=positive(int), mixup=at_least(0.0), cutmix=at_least(0.0), mixup_prob=unit(), mixup_switch_prob=unit(),
    mixup_mode=Rule(str, choices=("batch", "pair", "elem")), smoothing=unit(open_hi=True),
    # optimiser
    opt=Rule(str, choices=OPTIMIZERS), opt_eps=positive(), momentum=unit(), weight_decay=at_least(0.0),
    clip_grad=positive(), clip_mode=Rule(str, choices=("norm", "value")), lr=positive(), lr_base=positive(),
    lr_base_size=positive(int),
    # schedule (epochs 0 is allowed where a tool means "no fine-tuning"; `effnet train` asks for >= 1)
    sched=Rule(str, choices=SCHEDULERS), epochs=Rule(int, 0, 10**6), warmup_epochs=Rule(float, 0.0, 10**6),
    warmup_lr=at_least(0.0), min_lr=at_least(0.0), decay_epochs=positive(),
    decay_rate=Rule(float, 0.0, 1.0, lo_open=True),
    freeze_epochs=Rule(int, 0, 10**6),
    # EMA
    model_ema=Rule(bool), model_ema_decay=unit(open_hi=True),
    # run
    amp=Rule(bool), amp_dtype=Rule(str, choices=("bfloat16", "float16")), channels_last=Rule(bool),
    seed=Rule(int, 0, MAX_SEED), output=Rule(str), resume=Rule(str),
    eval_metric=Rule(str, choices=("top1", "top5", "loss")), log_interval=Rule(int, 0, None), device=Rule(str),
    log_tensorboard=Rule(bool), log_mlflow=Rule(bool), mlflow_uri=TrackingUri(), mlflow_experiment=Name(),
    recipe=Rule(str), config=Rule(str),
)

# per-element rules of the multi-value settings, and how many values each takes
SEQUENCES = {"mean": None, "std": None, "scale": (2,), "ratio": (2,)}
ORDERED = ("scale", "ratio")


def flag_name(name: str) -> str:
    """The command-line flag of a setting: drop_path -> --drop-path."""
    return "--" + name.replace("_", "-")


def combined_problem(cfg: Any) -> str | None:
    """What is wrong with settings that are fine one by one (value counts, MIN MAX order, memory), or None."""
    if cfg.log_tensorboard and cfg.resume:  # a resumed run appends to its folder's tensorboard/
        events = Path(cfg.resume).expanduser().parent / "tensorboard"
        same_folder = not cfg.output or Path(cfg.output).expanduser().resolve() == events.parent.resolve()
        if same_folder and events.exists() and not events.is_dir():
            return (f"--log-tensorboard: {str(events)!r} is a file, not the folder of the run's TensorBoard events; "
                    "move it away or resume without --log-tensorboard")
    for name, length in SEQUENCES.items():
        problem = check_sequence(flag_name(name), getattr(cfg, name), length=length or (1, cfg.in_chans),
                                 ordered=name in ORDERED)
        if problem:
            return f"{problem}{'' if length else ' (one per input channel, or one for all)'}"
    # a lower bound: the stem's output, its BatchNorm and activation kept for the backward pass (every
    # published model reads at least 224 px)
    size, batch = cfg.img_size or 224, max(cfg.batch_size, cfg.validation_batch_size or 0)
    return memory_problem(f"--img-size {size} with --batch-size {batch}",
                          batch * size**2 * (cfg.in_chans + 3 * 8) * 4, "lower --img-size or --batch-size")
