"""Per-sample randomness and unreadable-image handling for DataLoaders.

`SampleDataset` wraps a dataset so that (1) each sample's augmentation draws come from a generator
seeded by (seed, epoch, index), not from whichever worker process happens to load it, which makes a
run resumed mid-epoch see exactly the images an uninterrupted one would; and (2) an image that
cannot be read becomes an `Unreadable` marker instead of an exception or a substitute. `skip_collate`
drops the markers, so a batch simply has fewer samples and metrics count only real images, and the
`Batch` it returns carries what was dropped so the training loop and `evaluate` can report it.
"""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from .images import ImageLoadError

_LOG = logging.getLogger(__name__)
# How many unreadable files are named one by one per loader pass before only the count is reported.
NAMED_PER_PASS = 5


@dataclass(frozen=True)
class Unreadable:
    """A sample that could not be loaded: its index, its file (when known) and why."""

    index: int
    path: str
    reason: str


class Batch(tuple):
    """(images, targets) of one loader step; `.unreadable` lists the samples dropped from it.

    A 2-tuple, so `for x, y in loader` keeps working in code that does not care about skips.
    """

    unreadable: tuple[Unreadable, ...]

    def __new__(cls, x: Tensor, target: Tensor, unreadable: Sequence[Unreadable] = ()) -> "Batch":
        self = super().__new__(cls, (x, target))
        self.unreadable = tuple(unreadable)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return Batch, (self[0], self[1], self.unreadable)

    def pin_memory(self) -> "Batch":
        """torch's pin_memory thread calls this, which keeps `.unreadable` (a plain tuple would lose it)."""
        return Batch(self[0].pin_memory(), self[1].pin_memory(), self.unreadable)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch, well mixed even for neighbouring indices."""
    return int(np.random.SeedSequence([seed % 2**63, epoch, index]).generate_state(1, np.uint64)[0]) >> 1


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python's `random`, NumPy's global generator and torch's CPU generator (what the
    transforms draw from) for the duration of the block, then put their previous states back, so
    the caller's own random streams (dropout, Mixup) are untouched whether or not workers are used."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class SampleDataset(Dataset):
    """`dataset` with per-(seed, epoch, index) randomness (when `seeded`) and unreadable images
    turned into `Unreadable` markers. Attributes such as `.classes` and `.samples` pass through.

    The epoch is an attribute (`set_epoch`), read by worker processes when a loader pass starts, so
    the loader must not keep persistent workers.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, seeded: bool = True) -> None:
        self.dataset, self.seed, self.seeded, self.epoch = dataset, int(seed), seeded, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation draws the next loader pass makes."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Any:
        context = seeded_rng(sample_seed(self.seed, self.epoch, index)) if self.seeded else contextlib.nullcontext()
        try:
            with context:
                return self.dataset[index]
        except ImageLoadError as e:
            samples = getattr(self.dataset, "samples", None)
            path = str(samples[index][0]) if samples is not None else f"sample {index}"
            return Unreadable(int(index), path, str(e))


def skip_collate(items: list[Any]) -> Batch:
    """Collate the readable samples of a batch; the unreadable ones go to `.unreadable`.

    A batch with no readable sample has an empty image tensor (0 rows) that callers skip.
    """
    bad = [s for s in items if isinstance(s, Unreadable)]
    good = [s for s in items if not isinstance(s, Unreadable)]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), bad)
    x, target = default_collate(good)
    return Batch(x, target, bad)


def unreadable_of(batch: Any) -> tuple[Unreadable, ...]:
    """The samples a loader dropped from `batch` (none for a loader without `skip_collate`)."""
    return getattr(batch, "unreadable", ())


class SkipReport:
    """Counts unreadable samples over one loader pass and names the first few, each file once per
    process (a bad file met again in the next epoch, or by the EMA evaluation, is only counted)."""

    _named_paths: set[str] = set()

    def __init__(self, split: str) -> None:
        self.split, self.count, self._named = split, 0, 0

    def add(self, items: Sequence[Unreadable], show: bool = True) -> None:
        """Record dropped samples; log the first `NAMED_PER_PASS` new files of this pass when `show`."""
        self.count += len(items)
        for item in items:
            if show and self._named < NAMED_PER_PASS and item.path not in self._named_paths:
                self._named_paths.add(item.path)
                _LOG.warning(f"{self.split}: skipping unreadable image {item.reason}")
                self._named += 1
