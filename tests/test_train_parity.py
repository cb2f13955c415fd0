"""Training parity with the reference implementation: 20 steps of SGD and of RMSpropTF from the same
weights on the same batches give the reference's losses (tests/fixtures/train_parity.json, written
by scripts/make_train_parity_fixture.py under the reference) within 1e-4 relative.

effnet's side uses its own optimisers and loss, built from a TrainConfig as `effnet train` builds them.
"""

from __future__ import annotations

import json

import pytest
import torch

import effnet
from effnet.train import TrainConfig
from effnet.train.losses import create_criterion
from effnet.train.optim import create_optimizer
from train_parity_setup import DTYPE, FIXTURE, MODELS, OPTIMIZERS, SMOOTHING, STEPS, initial_state_dict, train_losses

RTOL = 1e-4


# the steps are small: a second thread only adds synchronisation (and spinning on a shared CPU)
pytestmark = pytest.mark.usefixtures("one_thread")


def _losses(name: str, opt: str, kwargs: dict[str, float]) -> list[float]:
    model = effnet.create_model(name, drop_rate=0.0, drop_path_rate=0.0).to(DTYPE)
    model.load_state_dict(initial_state_dict(name), strict=True)
    cfg = TrainConfig(model=name, opt=opt, momentum=kwargs["momentum"], weight_decay=kwargs["weight_decay"],
                      opt_eps=kwargs.get("eps"), smoothing=SMOOTHING)
    optimizer = create_optimizer(cfg, [model], kwargs["lr"])
    return train_losses(model, optimizer, create_criterion(cfg.smoothing, mixup=False))


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("name", MODELS)
def test_losses_match_the_reference(name: str, opt: str) -> None:
    fixture = json.loads(FIXTURE.read_text())
    assert fixture["optimizers"][opt] == OPTIMIZERS[opt], "settings changed: rerun `make fixtures`"
    expected = fixture["losses"][name][opt]
    assert len(expected) == STEPS
    ours = _losses(name, opt, OPTIMIZERS[opt])
    rel = [abs(a - b) / abs(b) for a, b in zip(ours, expected)]
    worst = max(range(STEPS), key=rel.__getitem__)
    assert rel[worst] <= RTOL, (f"{name} {opt}: step {worst} loss {ours[worst]:.6f} vs reference "
                                f"{expected[worst]:.6f} (relative {rel[worst]:.1e} > {RTOL:.0e})")
    # the steps moved the weights: the loss on the first batch, seen again every few steps, fell
    assert min(expected[5::5]) < expected[0]


def test_fixture_tells_optimisers_apart() -> None:
    """The comparison can fail: torch's RMSprop (eps outside the root, square average from 0) in
    place of RMSpropTF leaves the reference's losses within 3 steps."""
    name, kwargs = MODELS[1], OPTIMIZERS["rmsproptf"]
    expected = json.loads(FIXTURE.read_text())["losses"][name]["rmsproptf"]
    model = effnet.create_model(name).to(DTYPE)
    model.load_state_dict(initial_state_dict(name), strict=True)
    groups = [dict(params=[p for p in model.parameters() if p.ndim > 1], weight_decay=kwargs["weight_decay"]),
              dict(params=[p for p in model.parameters() if p.ndim <= 1], weight_decay=0.0)]
    wrong = torch.optim.RMSprop(groups, lr=kwargs["lr"], alpha=0.9, eps=kwargs["eps"], momentum=kwargs["momentum"])
    losses = train_losses(model, wrong, create_criterion(SMOOTHING, mixup=False), steps=3)
    assert max(abs(a - b) / abs(b) for a, b in zip(losses, expected)) > 100 * RTOL
