"""`effnet finetune`: start from pretrained weights (or --checkpoint), put a new classifier for the
data's classes on top, optionally train only that classifier for the first --freeze-epochs."""

from __future__ import annotations

import argparse

from ..loading import starting_point
from ..train.cli_args import add_train_arguments
from ..train.config import TrainConfig
from ..train.runner import config_for_run, run_training

HELP = "fine-tune pretrained weights on your class folders (new classifier, optional frozen backbone first)"

# Fine-tuning defaults: short, gentle, from the published weights.
FINETUNE_DEFAULTS = TrainConfig(opt="sgd", pretrained=True, epochs=10, warmup_epochs=1.0, lr_base=0.01, sched="cosine")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p)
    p.add_argument("--checkpoint", dest="initial_checkpoint", default=argparse.SUPPRESS, metavar="FILE",
                   help="start from these weights instead of the published ones (a classifier of another "
                        "size is replaced); a run's model_best.pth.tar or folder also names the model")
    p.add_argument("--freeze-epochs", dest="freeze_epochs", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="train only the classifier for the first N epochs (default: 0)")


def run(args: argparse.Namespace) -> int:
    given = vars(args)
    model, checkpoint, run_settings = starting_point(given.get("model"), given.get("initial_checkpoint"))
    if checkpoint is not None:  # a run to start from: its weights, not the published ones
        args.initial_checkpoint = checkpoint
        given.setdefault("pretrained", False)
    if model is not None:
        args.model = model
    for key, value in run_settings.items():  # the run's input size and normalisation, unless typed
        given.setdefault(key, value)
    return run_training(config_for_run(args, FINETUNE_DEFAULTS), finetune=True)
