"""Training, fine-tuning and validation: `fit`, `evaluate`, the `TrainConfig` with its command-line
flags, data loaders, TF-style RMSProp, schedules, EMA, resumable atomic checkpoints, torchrun.

    from effnet.train import TrainConfig, build_loaders, fit
    cfg = TrainConfig(model="tf_efficientnet_cc_b0_4e", dataset="digits", img_size=32, epochs=10)
    train_loader, val_loader, classes = build_loaders(cfg)
    model = effnet.create_model(cfg.model, num_classes=len(classes))
    fit(model, train_loader, val_loader, cfg, "output/digits")
"""

from .checkpoint import atomic_save, load_training_checkpoint, rng_state, set_rng_state
from .cli_args import add_train_arguments
from .config import RECIPES, ConfigError, TrainConfig, config_from_args, resolve_output_dir
from .data import build_dataset, build_loaders, data_config_for, eval_transform, make_eval_loader, set_loader_epoch
from .distributed import DistInfo, init_distributed
from .ema import ModelEma
from .losses import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from .evaluate import evaluate
from .loop import TrainingDivergedError, fit
from .optim import RMSpropTF, create_optimizer, param_groups
from .scheduler import Scheduler, create_scheduler

__all__ = [
    "ConfigError", "DistInfo", "LabelSmoothingCrossEntropy", "ModelEma", "RECIPES", "RMSpropTF", "Scheduler",
    "SoftTargetCrossEntropy", "TrainConfig", "TrainingDivergedError", "add_train_arguments", "atomic_save",
    "build_dataset", "build_loaders", "config_from_args", "create_optimizer", "create_scheduler",
    "data_config_for", "eval_transform", "evaluate", "fit", "init_distributed", "load_training_checkpoint",
    "make_eval_loader", "param_groups", "resolve_output_dir", "rng_state", "set_loader_epoch", "set_rng_state",
]
