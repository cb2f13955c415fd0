"""Trains the reference implementation's model on the digits with effnet's own data, training loop
and recipe: `effnet train` runs unchanged except that the model it trains is the reference's.
This isolates the model: any difference from the same run of effnet's model is the model's.

A measurement script, run only in the reference environment (it imports the reference):
    REF=$(../shared/reference/setup-reference-env.sh)
    PYTHONPATH=src $REF/bin/python scripts/train_reference_digits.py --reference-model tf_efficientnet_cc_b0_4e \\
        [effnet train flags: the demo's recipe by default, see DEMO_RECIPE]

`--reference-model` names the reference's architecture (e.g. `tf_efficientnet_b0`, the CondConv
model's dense twin there); `--model` (effnet's name) only sets the data config.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

# the demo's single-threaded setting (see scripts/demo.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import timm  # noqa: E402  the reference implementation, in its side environment only
from torch import nn  # noqa: E402

from effnet import cli  # noqa: E402
from effnet.train import runner  # noqa: E402

# scripts/demo.py's `effnet train` flags at 32 px
DEMO_RECIPE = ["--model", "tf_efficientnet_cc_b0_4e", "--dataset", "digits", "--img-size", "32", "--epochs", "15",
               "--batch-size", "16", "--opt", "adamw", "--lr", "4e-3", "--weight-decay", "0.05", "--sched", "cosine",
               "--warmup-epochs", "0.5", "--smoothing", "0", "--head-init-scale", "0", "--no-aug", "--crop-pct", "1.0",
               "--train-interpolation", "bicubic", "--workers", "0", "--seed", "0", "--device", "cpu",
               "--log-interval", "30"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference-model", required=True, help="the reference's model name")
    args, rest = p.parse_known_args()

    def reference_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return timm.create_model(args.reference_model, pretrained=pretrained, **kwargs)

    runner.create_model = reference_model
    # only the train tool: the others' optional extras (e.g. the server's) need not be in this environment
    cli.TOOLS = ("train",)
    print(f"training the reference's {args.reference_model} (timm {timm.__version__}) with effnet train", flush=True)
    # flags given later win, so the demo recipe is the base and `rest` overrides it
    return cli.main(["train", *DEMO_RECIPE, *rest])


if __name__ == "__main__":
    sys.exit(main())
