"""Datasets, augmentation and loaders for bitswitch (cifar10-airbench style: one uint8 tensor per dataset).

Small datasets (:func:`load_fashion_mnist`, :func:`load_cifar10`, :func:`load_digits_dataset`) load
into an :class:`ArrayDataset` and are iterated with :class:`TensorLoader`, which shuffles and augments
whole batches with tensor ops. ImageNet-style data is decoded lazily by :class:`ImageFolderDataset`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .arrays import ArrayDataset
from .augment import augment_batch, pad, random_crop, random_cutout, random_flip
from .cache import cache_dir
from .cifar10 import CIFAR10_CLASSES, detect_cifar10_layout, load_cifar10
from .digits import DIGITS_CLASSES, load_digits_dataset
from .errors import DataError
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx
from .imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataset,
    Preprocess,
    batches,
    efficientnet_lite_preprocess,
    imagenet_preprocess,
    load_imagenet_samples,
)
from .loader import DATASET_STATS, TensorLoader, epoch_seed

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DATASET_STATS",
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayDataset",
    "DataError",
    "ImageFolderDataset",
    "Preprocess",
    "TensorLoader",
    "canonical_name",
    "dataset_stats",
    "augment_batch",
    "batches",
    "cache_dir",
    "default_data_root",
    "detect_cifar10_layout",
    "efficientnet_lite_preprocess",
    "epoch_seed",
    "imagenet_preprocess",
    "load_cifar10",
    "load_dataset",
    "load_digits_dataset",
    "load_fashion_mnist",
    "load_imagenet_samples",
    "pad",
    "random_crop",
    "random_cutout",
    "random_flip",
    "read_idx",
]

DATASETS = ("cifar10", "digits", "fashion_mnist")
_ALIASES = {"fashionmnist": "fashion_mnist", "cifar": "cifar10", "cifar_10": "cifar10"}


def default_data_root() -> Path | None:
    """``Path($BITSWITCH_DATA)`` when that variable is set (and non-empty), else None."""
    env = os.environ.get("BITSWITCH_DATA")
    return Path(env).expanduser() if env else None


def canonical_name(name: str) -> str:
    """The dataset's canonical name ("Fashion-MNIST" -> "fashion_mnist"), the key of ``DATASET_STATS``."""
    key = str(name).strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


def dataset_stats(name: str) -> dict[str, tuple[float, ...]]:
    """Normalisation ``{"mean": ..., "std": ...}`` of a built-in dataset, or ``{}`` when it has none."""
    return dict(DATASET_STATS.get(canonical_name(name), {}))


def load_dataset(name: str, root: str | Path | None = None, split: str = "train") -> ArrayDataset:
    """Load ``name`` ("fashion_mnist", "cifar10" or "digits") ``split`` ("train" / "test").

    ``root`` is the dataset's own folder (e.g. ``.../fashion_mnist``); a parent folder holding a
    ``<name>`` sub-folder is accepted too. With ``root=None`` the folder is ``$BITSWITCH_DATA/<name>``;
    if ``BITSWITCH_DATA`` is unset a :class:`DataError` asks for a path. ``digits`` needs no root
    (it ships with scikit-learn).
    """
    key = canonical_name(name)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if key == "digits":
        train, test = load_digits_dataset()
        return train if split == "train" else test
    if root is None:
        base = default_data_root()
        if base is None:
            raise DataError(
                f"no data path given for {key!r}: pass root=<folder holding the {key} files> or set "
                f"BITSWITCH_DATA to a folder containing a '{key}/' sub-folder"
            )
        path = base / key
    else:
        path = Path(root).expanduser()
        if (path / key).is_dir():
            path = path / key
    if key == "fashion_mnist":
        return load_fashion_mnist(path, split)
    return load_cifar10(path, split)
