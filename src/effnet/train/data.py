"""Datasets and DataLoaders for training and validation, with a data order fixed by (seed, epoch) so
that a resumed run sees exactly the batches an uninterrupted one would."""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..data import DigitsDataset, ImageFolder, Mixup, create_transform, find_split_dir, resolve_data_config
from ..data.samples import SampleDataset, skip_collate
from ..registry import get_config
from .config import ConfigError, TrainConfig
from .distributed import DistInfo, current


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (a permutation seeded by seed + epoch, this rank's share) that can
    start part-way into an epoch, for resuming a run that was stopped mid-epoch. Works without a
    process group (one replica)."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first `start` samples of this rank's share in the next pass."""
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Evaluation order: this rank's every world-th sample, no padding, so reduced metrics count each
    image exactly once."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def seed_worker(worker_id: int) -> None:
    """DataLoader workers: ignore Ctrl-C and SIGTERM (the main process stops the run and shuts the
    workers down, so one message is printed, not one per worker), and seed Python and NumPy from
    torch's per-worker seed. Augmentation does not depend on these seeds: `SampleDataset` reseeds per
    sample from (seed, epoch, index)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A per-(seed, epoch, rank) integer seed."""
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**63 - 1)


def set_loader_epoch(loader: Any, epoch: int, seed: int, start_batch: int = 0) -> None:
    """Fix this epoch's sample order and worker seeds; optionally skip batches already trained."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, SampleDataset):
        dataset.set_epoch(epoch)
    if start_batch:
        if not hasattr(sampler, "set_start"):
            raise ConfigError("resuming mid-epoch needs a loader built by effnet.train.build_loaders")
        sampler.set_start(start_batch * loader.batch_size)
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(epoch_seed(seed, epoch, current().rank))


def data_config_for(cfg: TrainConfig) -> dict[str, Any]:
    """Input size, interpolation, mean/std and crop of the run: flags over the model's pretrained config."""
    pretrained_cfg = get_config(cfg.model).pretrained.to_dict()
    args = dict(img_size=cfg.img_size, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, mean=cfg.mean,
                std=cfg.std, in_chans=cfg.in_chans)
    return resolve_data_config(args, pretrained_cfg=pretrained_cfg)


def build_dataset(cfg: TrainConfig, split: str, transform: Any) -> Dataset:
    """The 'train' or 'val' dataset of `cfg` (--dataset digits, or --data-dir class folders)."""
    if cfg.dataset is not None and cfg.data_dir:
        raise ConfigError(f"--data-dir and --dataset {cfg.dataset} both name the data; give only one")
    if cfg.dataset == "digits":
        return DigitsDataset("train" if split == "train" else "val", transform=transform)
    if cfg.dataset is not None:
        raise ConfigError(f"unknown dataset {cfg.dataset!r}; the embedded one is 'digits'")
    if not cfg.data_dir:
        raise ConfigError("no data: give --data-dir DIR (with train/ and val/ class folders) or --dataset digits")
    name = cfg.train_split if split == "train" else cfg.val_split
    return ImageFolder(split_dir(cfg.data_dir, name), transform=transform)


def split_dir(data_dir: str, name: str) -> Path:
    """`data_dir/name`; 'train' and 'val' also find training/, validation/ and valid/."""
    if name in ("train", "val"):
        return find_split_dir(data_dir, name)
    path = Path(data_dir) / name
    if not path.is_dir():
        raise ConfigError(f"no folder {name!r} in {data_dir!r}")
    return path


def dataset_classes(dataset: Dataset) -> list[str]:
    """The class names a dataset declares."""
    classes = getattr(dataset, "classes", None)
    if not classes:
        raise ConfigError(f"{type(dataset).__name__} declares no classes")
    return [str(c) for c in classes]


def train_transform(cfg: TrainConfig, data_config: dict[str, Any]) -> Any:
    """The training augmentation pipeline of `cfg`."""
    return create_transform(
        data_config["input_size"], is_training=True, no_aug=cfg.no_aug, scale=cfg.scale, ratio=cfg.ratio,
        hflip=cfg.hflip, vflip=cfg.vflip, color_jitter=cfg.color_jitter, auto_augment=cfg.aa,
        interpolation=cfg.train_interpolation, mean=data_config["mean"], std=data_config["std"],
        re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount)


def eval_transform(data_config: dict[str, Any]) -> Any:
    """Resize, centre crop, normalise."""
    return create_transform(data_config["input_size"], is_training=False, interpolation=data_config["interpolation"],
                            mean=data_config["mean"], std=data_config["std"], crop_pct=data_config["crop_pct"],
                            crop_mode=data_config["crop_mode"])


def make_eval_loader(dataset: Dataset, batch_size: int, workers: int, info: DistInfo | None = None) -> DataLoader:
    """A loader over this rank's share of `dataset`, in order."""
    info = info or current()
    if not isinstance(dataset, SampleDataset):
        dataset = SampleDataset(dataset, seeded=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(dataset, info.world_size, info.rank),
                      num_workers=workers, pin_memory=info.device.type == "cuda", worker_init_fn=seed_worker,
                      persistent_workers=False, collate_fn=skip_collate)


def build_loaders(cfg: TrainConfig, info: DistInfo | None = None) -> tuple[DataLoader, DataLoader, list[str]]:
    """(train_loader, val_loader, class_names) for `cfg`; in a torchrun group each rank gets its share.

    The training loader drops the last incomplete batch and draws its order from (seed, epoch) via
    `set_loader_epoch`, which `fit` calls every epoch.
    """
    info = info or current()
    data_config = data_config_for(cfg)
    train_ds = build_dataset(cfg, "train", train_transform(cfg, data_config))
    val_ds = build_dataset(cfg, "val", eval_transform(data_config))
    classes = dataset_classes(train_ds)
    check_class_sets(classes, dataset_classes(val_ds))
    per_rank = len(train_ds) // info.world_size
    if per_rank < cfg.batch_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {len(train_ds)} training images "
                          f"({per_rank} per process); lower it")
    # augmentation draws come from (seed, epoch, index), so they do not depend on which worker loads a
    # sample or where a resumed run starts in the epoch
    train_ds = SampleDataset(train_ds, seed=cfg.seed)
    sampler = EpochSampler(train_ds, info.world_size, info.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, 0, info.rank))
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                              drop_last=True, pin_memory=info.device.type == "cuda", worker_init_fn=seed_worker,
                              generator=generator, persistent_workers=False, collate_fn=skip_collate)
    val_loader = make_eval_loader(val_ds, cfg.validation_batch_size or cfg.batch_size, cfg.workers, info)
    return train_loader, val_loader, classes


def check_class_sets(train: list[str], val: list[str]) -> None:
    """Refuse training on one class (any model scores 100%) or on train/val class sets that differ
    (labels would mean different classes in the two splits)."""
    if len(train) < 2:
        raise ConfigError(f"the training data has {len(train)} class ({', '.join(train)}); a classifier needs at "
                          "least 2 class folders")
    if val != train:
        only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        detail = "; ".join(part for part in (
            f"only in train: {', '.join(only_train[:5])}" if only_train else "",
            f"only in val: {', '.join(only_val[:5])}" if only_val else "") if part) or "same names in another order"
        raise ConfigError(f"train and validation classes differ ({len(train)} vs {len(val)} classes; {detail}); "
                          "both splits need the same class folders")


def build_mixup(cfg: TrainConfig, num_classes: int) -> Mixup | None:
    """Mixup/CutMix for `cfg`, or None when both are off."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                 num_classes=num_classes)
