"""The data of a run: a seeded, stratified validation split carved from the training data, and the test split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data import TensorLoader, canonical_name, dataset_stats, load_dataset
from .config import TrainConfig


@dataclass
class Data:
    """The three splits of a run and the normalisation every loader of the run applies."""

    train: Any
    val: Any
    test: Any
    key: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def load_data(cfg: TrainConfig) -> Data:
    """Train/validation split carved from the training data (seeded, stratified) and the test split."""
    key = canonical_name(cfg.dataset)
    full = load_dataset(cfg.dataset, cfg.data_root, "train")
    test = load_dataset(cfg.dataset, cfg.data_root, "test")
    if cfg.train_subset and cfg.train_subset < len(full):
        gen = torch.Generator().manual_seed(cfg.split_seed)
        full = full.subset(torch.randperm(len(full), generator=gen)[: cfg.train_subset].sort().values)
    if cfg.test_subset and cfg.test_subset < len(test):
        test = test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(cfg.split_seed))[: cfg.test_subset].sort().values)
    train, val = full.split(cfg.val_fraction, seed=cfg.split_seed)
    stats = dataset_stats(key) or {"mean": (0.5,), "std": (0.25,)}
    return Data(train, val, test, key, tuple(stats["mean"]), tuple(stats["std"]))


def make_loader(data: Data, split: str, cfg: TrainConfig, device: str, *, train: bool = False) -> TensorLoader:
    """Batches of one split: shuffled and augmented for training, in order for evaluation."""
    ds = getattr(data, split)
    if train:
        drop = len(ds) > cfg.batch_size
        return TensorLoader(ds, cfg.batch_size, shuffle=True, augment=cfg.augment, drop_last=drop, seed=cfg.seed,
                            mean=data.mean, std=data.std, device=device, flip=data.key == "cifar10")
    return TensorLoader(ds, cfg.eval_batch_size, shuffle=False, mean=data.mean, std=data.std, device=device)


__all__ = ["Data", "load_data", "make_loader"]
