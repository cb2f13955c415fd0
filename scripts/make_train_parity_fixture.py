"""Writes tests/fixtures/train_parity.json: the reference implementation's losses over 20 training
steps of SGD and of RMSpropTF, per model, from the synthetic weights and batches that
tests/train_parity_setup.py defines (tests/test_train_parity.py replays them with effnet).

Run with the reference environment's Python (`make fixtures` does this):
    REF=$(../shared/reference/setup-reference-env.sh)
    PYTHONPATH=src:tests $REF/bin/python scripts/make_train_parity_fixture.py
"""

from __future__ import annotations

import json

import timm  # the reference implementation: only ever imported here, in its side environment
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2

from train_parity_setup import DTYPE, FIXTURE, MODELS, OPTIMIZERS, SMOOTHING, STEPS, initial_state_dict, train_losses


def main() -> None:
    torch.manual_seed(0)
    losses: dict[str, dict[str, list[float]]] = {}
    for name in MODELS:
        losses[name] = {}
        for opt, kwargs in OPTIMIZERS.items():
            model = timm.create_model(name, drop_rate=0.0, drop_path_rate=0.0).to(DTYPE)
            model.load_state_dict(initial_state_dict(name), strict=True)
            optimizer = create_optimizer_v2(model, opt=opt, **kwargs)
            losses[name][opt] = train_losses(model, optimizer, LabelSmoothingCrossEntropy(SMOOTHING))
            print(name, opt, " ".join(f"{v:.5f}" for v in losses[name][opt]), flush=True)
    FIXTURE.write_text(json.dumps({
        "reference": f"timm {timm.__version__}, torch {torch.__version__}",
        "steps": STEPS, "optimizers": OPTIMIZERS, "losses": losses}, indent=1) + "\n")


if __name__ == "__main__":
    main()
