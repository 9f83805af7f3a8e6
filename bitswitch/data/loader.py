"""A DataLoader replacement for in-memory :class:`ArrayDataset` (no workers, batched augmentation)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence

import torch

from .arrays import ArrayDataset
from .augment import augment_batch, random_cutout
from .errors import DataError

__all__ = ["DATASET_STATS", "TensorLoader", "epoch_seed"]

# Per-channel mean/std of the training sets in [0, 1] units.
DATASET_STATS: dict[str, dict[str, tuple[float, ...]]] = {
    "cifar10": {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    "fashion_mnist": {"mean": (0.2860,), "std": (0.3530,)},
    "digits": {"mean": (0.3060,), "std": (0.3763,)},
}


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed derived from ``(seed, epoch)`` (stable across runs and platforms)."""
    digest = hashlib.blake2b(f"bitswitch:{int(seed)}:{int(epoch)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class TensorLoader:
    """Iterate an :class:`ArrayDataset` in batches of normalised float images.

    Each epoch draws its permutation (and augmentation randomness) from a ``torch.Generator``
    seeded by ``(seed, epoch)``, so a run is reproducible and can be resumed with
    :meth:`set_epoch`. Iterating uses the current epoch and then advances it by one.

    Yields ``(images float32 (B, C, H, W) on device, labels int64 (B,) on device)`` where images are
    ``(x / 255 - mean) / std`` (just ``x / 255`` when ``mean``/``std`` are None). With
    ``augment=True`` each batch gets a random crop (``crop_padding``, ``pad_mode``) and, if ``flip``,
    a random horizontal flip, applied to the uint8 batch before normalisation, and, if ``cutout``
    is set, one ``cutout x cutout`` square per image set to the mean (0 after normalisation).
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        shuffle: bool,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: str | torch.device = "cpu",
        *,
        crop_padding: int = 4,
        pad_mode: str = "reflect",
        flip: bool = True,
        cutout: int = 0,
    ) -> None:
        if not isinstance(dataset, ArrayDataset):
            raise DataError(f"TensorLoader needs an ArrayDataset, got {type(dataset).__name__}")
        if int(batch_size) <= 0:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.crop_padding = int(crop_padding)
        self.pad_mode = pad_mode
        self.flip = bool(flip)
        if int(cutout) < 0:
            raise DataError(f"cutout must be >= 0, got {cutout}")
        self.cutout = int(cutout)
        self.epoch = 0
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        c = self.images.shape[1]
        self.mean = self._channel_vector(mean, c, "mean", 0.0)
        self.std = self._channel_vector(std, c, "std", 1.0)
        if bool((self.std <= 0).any()):
            raise DataError("TensorLoader std values must be positive")

    def _channel_vector(self, v, c: int, name: str, default: float) -> torch.Tensor:
        if v is None:
            return torch.full((1, c, 1, 1), default, device=self.device)
        t = torch.as_tensor(v, dtype=torch.float32, device=self.device).flatten()
        if t.numel() == 1:
            t = t.expand(c)
        if t.numel() != c:
            raise DataError(f"TensorLoader {name} has {t.numel()} values but images have {c} channels")
        return t.reshape(1, c, 1, 1).clone()

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch ``epoch`` (for resuming)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 255] float) images -> normalised float32."""
        x = images.to(torch.float32).div_(255.0)
        return x.sub_(self.mean).div_(self.std)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self._iterate(epoch)

    def _iterate(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        n = len(self.dataset)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = augment_batch(x, gen, padding=self.crop_padding, flip=self.flip, mode=self.pad_mode)
            x = self.normalize(x)
            if self.augment and self.cutout:
                x = random_cutout(x, self.cutout, gen)
            yield x, self.labels[idx]

    def __repr__(self) -> str:
        return (
            f"TensorLoader(n={len(self.dataset)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"augment={self.augment}, drop_last={self.drop_last}, seed={self.seed}, epoch={self.epoch}, "
            f"device={self.device})"
        )
