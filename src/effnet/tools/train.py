"""`effnet train`: train a model from scratch (or from given weights) on class folders or digits."""

from __future__ import annotations

import argparse

from ..train.cli_args import add_train_arguments
from ..train.runner import config_for_run, run_training

HELP = "train a model (timm-style flags; --recipe paper for the published recipe; torchrun for many processes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p)


def run(args: argparse.Namespace) -> int:
    return run_training(config_for_run(args))
