"""The data of a run: a seeded, stratified validation split carved from the training data, and the test split.

``dataset`` is a built-in name, ``imagefolder`` (a class-folder tree at ``data_root``:
``train/<class>/*.jpg`` and ``test/`` or ``val/``), or a ``package.module:callable`` of the user's
returning tensors (:func:`user_data`). A text dataset (``shakespeare``) gives :class:`TextData`
instead: the three splits its README fixes, read through :class:`WindowBatches` (random windows for
training, ``steps_per_epoch`` batches an epoch).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import ArrayDataset, DataError, TensorLoader, canonical_name, dataset_stats, epoch_seed, load_dataset
from ..data.imagefolder import load_image_folder
from ..data.text import CharVocab, TextSplits, load_shakespeare, random_windows, shakespeare_root
from ..models.factory import import_factory, is_factory
from .config import TrainConfig

IMAGE_FOLDER = "imagefolder"


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


@dataclass
class TextData:
    """The token ids of a text dataset's three fixed splits, and its vocabulary."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    key: str
    vocab: CharVocab


def load_data(cfg: TrainConfig) -> Data | TextData:
    """Train/validation split carved from the training data (seeded, stratified) and the test split;
    for a text dataset its fixed splits."""
    if cfg.is_language_model:
        splits = cached_shakespeare(shakespeare_root(cfg.data_root))
        if splits.train.numel() <= cfg.context:  # before a model of that context is built
            raise DataError(f"dataset {cfg.dataset!r}: the training text has {splits.train.numel()} characters, no window of context {cfg.context} + 1")
        return TextData(splits.train, splits.val, splits.test, cfg.dataset, splits.vocab)
    stats: Mapping[str, Any] = {}
    if is_factory(cfg.dataset):
        key = cfg.dataset
        full, test, stats = user_data(cfg.dataset)
    elif cfg.dataset == IMAGE_FOLDER:
        key = IMAGE_FOLDER
        full, test = (load_image_folder(cfg.data_root, split, cfg.image_size) for split in ("train", "test"))  # type: ignore[arg-type]
    else:
        key = canonical_name(cfg.dataset)
        full = load_dataset(cfg.dataset, cfg.data_root, "train")
        test = load_dataset(cfg.dataset, cfg.data_root, "test")
        stats = dataset_stats(key)
    if test.classes != full.classes or test.image_shape != full.image_shape:
        raise DataError(f"dataset {cfg.dataset!r}: the test split has classes {test.classes[:10]} and images {list(test.image_shape)}, "
                        f"the training split {full.classes[:10]} and {list(full.image_shape)}")
    if cfg.train_subset and cfg.train_subset < len(full):
        gen = torch.Generator().manual_seed(cfg.split_seed)
        full = full.subset(torch.randperm(len(full), generator=gen)[: cfg.train_subset].sort().values)
    if cfg.test_subset and cfg.test_subset < len(test):
        test = test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(cfg.split_seed))[: cfg.test_subset].sort().values)
    train, val = full.split(cfg.val_fraction, seed=cfg.split_seed)
    stats = stats or channel_stats(train)
    return Data(train, val, test, key, tuple(stats["mean"]), tuple(stats["std"]))


def cached_shakespeare(root: Path) -> TextSplits:
    """:func:`load_shakespeare`, read once per process for the same files (several seconds to encode 5 MB)."""
    files = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted((root / "plays").glob("*.txt")))
    return _read_text_splits(root.resolve(), files)


@functools.lru_cache(maxsize=2)
def _read_text_splits(root: Path, files: tuple) -> TextSplits:
    return load_shakespeare(root)


class WindowBatches:
    """``steps`` training batches per epoch of ``batch_size`` random windows of ``context + 1`` tokens.

    Epoch ``e`` draws from a generator seeded by ``(seed, e)``, so a run is reproducible and resumes
    with :meth:`set_epoch`, as :class:`~bitswitch.data.TensorLoader`; iterating uses the current
    epoch and then advances it by one. Yields ``(inputs, next tokens)``, int64 ``(B, context)``.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, context: int, steps: int, seed: int = 0, device: str | torch.device = "cpu"):
        if ids.numel() <= context:
            raise DataError(f"a text of {ids.numel()} tokens has no window of context {context} + 1")
        self.ids, self.batch_size, self.context, self.steps, self.seed = ids, int(batch_size), int(context), int(steps), int(seed)
        self.device = torch.device(device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch ``epoch`` (for resuming)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        for _ in range(self.steps):
            x, y = random_windows(self.ids, self.batch_size, self.context, gen)
            yield x.to(self.device), y.to(self.device)


def channel_stats(ds: ArrayDataset) -> dict[str, tuple[float, ...]]:
    """Per-channel mean and std of a dataset's images in [0, 1] units (the normalisation of user data)."""
    x = ds.images.transpose(0, 1).reshape(ds.images.shape[1], -1).double().div(255)
    return {"mean": tuple(x.mean(1).tolist()), "std": tuple(x.std(1).clamp_min(1e-3).tolist())}


def user_data(spec: str) -> tuple[ArrayDataset, ArrayDataset, dict[str, Any]]:
    """The train and test splits a ``package.module:callable`` returns (called with no arguments).

    It returns ``(train_x, train_y, test_x, test_y)`` or a dict ``{"train": (x, y), "test": (x, y)}``
    with optional ``"classes"`` (names) and ``"mean"``/``"std"`` (per channel, [0, 1] units; default:
    computed from the training images). Images are ``(N, C, H, W)`` uint8, or float in [0, 1]
    (rounded to uint8 levels: the loaders augment and normalise uint8 batches); labels integers.
    """
    load = import_factory(spec, "dataset")
    try:
        out = load()
    except TypeError as e:
        raise ValueError(f"dataset {spec!r} is called with no arguments ({e})") from None
    if isinstance(out, Mapping):
        if not {"train", "test"} <= set(out) or set(out) - {"train", "test", "classes", "mean", "std"}:
            raise ValueError(f"dataset {spec!r} returned a dict with keys {sorted(out)}; expected train, test and optionally classes, mean, std")
        parts, classes = (*out["train"], *out["test"]), list(out.get("classes") or [])
        stats = {k: tuple(float(v) for v in out[k]) for k in ("mean", "std") if k in out}
        if len(stats) == 1:
            raise ValueError(f"dataset {spec!r}: give both mean and std, or neither")
    else:
        parts, classes, stats = tuple(out) if isinstance(out, (tuple, list)) else (), [], {}
    if len(parts) != 4 or not all(isinstance(t, torch.Tensor) for t in parts):
        raise ValueError(f"dataset {spec!r} must return (train_x, train_y, test_x, test_y) tensors or a dict "
                         f"{{'train': (x, y), 'test': (x, y)}}; got {type(out).__name__}")

    def split(x: torch.Tensor, y: torch.Tensor, name: str) -> ArrayDataset:
        if x.is_floating_point():
            if x.numel() and (x.min() < 0 or x.max() > 1):
                raise ValueError(f"dataset {spec!r}: float {name} images must be in [0, 1] (got [{float(x.min()):.3g}, {float(x.max()):.3g}]); or return uint8")
            x = x.mul(255).round().to(torch.uint8)
        try:
            return ArrayDataset(x, y, classes)
        except DataError as e:
            raise ValueError(f"dataset {spec!r}, {name} split: {e}") from None

    train, test = split(parts[0], parts[1], "train"), split(parts[2], parts[3], "test")
    if not classes:
        n = max(train.num_classes, test.num_classes)
        train.classes = test.classes = [str(k) for k in range(n)]
    return train, test, stats


def make_loader(data: Data, split: str, cfg: TrainConfig, device: str, *, train: bool = False) -> TensorLoader:
    """Batches of one split: shuffled and augmented for training, in order for evaluation."""
    ds = getattr(data, split)
    if train:
        drop = len(ds) > cfg.batch_size
        return TensorLoader(ds, cfg.batch_size, shuffle=True, augment=cfg.augment, drop_last=drop, seed=cfg.seed,
                            mean=data.mean, std=data.std, device=device, flip=data.key == "cifar10",
                            crop_padding=cfg.crop_padding, cutout=cfg.cutout)
    return TensorLoader(ds, cfg.eval_batch_size, shuffle=False, mean=data.mean, std=data.std, device=device)


__all__ = ["Data", "TextData", "WindowBatches", "load_data", "make_loader"]
