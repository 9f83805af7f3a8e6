"""In-memory datasets held as a single uint8 tensor (cifar10-airbench style)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import DataError

__all__ = ["ArrayDataset"]


def _as_index_tensor(indices) -> torch.Tensor:
    if isinstance(indices, torch.Tensor):
        idx = indices
    else:
        idx = torch.as_tensor(np.asarray(indices))
    if idx.dtype == torch.bool:
        idx = idx.nonzero().flatten()
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise DataError(f"subset indices must be integers or a boolean mask, got dtype {idx.dtype}")
    return idx.to(torch.int64).flatten().cpu()


@dataclass
class ArrayDataset:
    """A labelled image dataset stored as one tensor.

    Attributes:
        images: ``uint8`` tensor of shape ``(N, C, H, W)``.
        labels: ``int64`` tensor of shape ``(N,)`` with values in ``[0, len(classes))``.
        classes: class names; ``classes[k]`` is the name of label ``k``.
    """

    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray):
            self.images = torch.from_numpy(self.images)
        if isinstance(self.labels, np.ndarray):
            self.labels = torch.from_numpy(self.labels)
        if not isinstance(self.images, torch.Tensor) or not isinstance(self.labels, torch.Tensor):
            raise DataError("ArrayDataset needs tensors for images and labels")
        if self.images.dtype != torch.uint8:
            raise DataError(f"ArrayDataset images must be uint8 (N, C, H, W), got dtype {self.images.dtype}")
        if self.images.dim() != 4:
            raise DataError(f"ArrayDataset images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels.dim() != 1:
            raise DataError(f"ArrayDataset labels must have shape (N,), got {tuple(self.labels.shape)}")
        if self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool or self.labels.is_complex():
            raise DataError(f"ArrayDataset labels must be integers, got dtype {self.labels.dtype}")
        self.labels = self.labels.to(torch.int64)
        self.classes = [str(c) for c in self.classes]
        n = self.images.shape[0]
        if n == 0:
            raise DataError("ArrayDataset is empty (0 images)")
        if self.labels.shape[0] != n:
            raise DataError(
                f"ArrayDataset has {n} images but {self.labels.shape[0]} labels; counts must match"
            )
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if not self.classes:
            self.classes = [str(k) for k in range(hi + 1)]
        if lo < 0 or hi >= len(self.classes):
            raise DataError(
                f"ArrayDataset labels span [{lo}, {hi}] but there are {len(self.classes)} classes"
            )

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """``(uint8 image (C, H, W), label)`` for one example."""
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        shape = tuple(self.images.shape)
        return f"ArrayDataset(images={shape} uint8, classes={len(self.classes)}, device={self.images.device})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> torch.Tensor:
        """Number of examples per class, shape ``(num_classes,)``."""
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes)

    def to(self, device: str | torch.device) -> ArrayDataset:
        return ArrayDataset(self.images.to(device), self.labels.to(device), list(self.classes))

    # ---------------------------------------------------------------- subsets
    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> ArrayDataset:
        """A new dataset with the examples at ``indices`` (ints or boolean mask), in that order."""
        idx = _as_index_tensor(indices)
        if idx.numel() == 0:
            raise DataError("subset() got no indices; an ArrayDataset cannot be empty")
        n = len(self)
        if int(idx.min()) < -n or int(idx.max()) >= n:
            raise DataError(f"subset() indices out of range for a dataset of {n} examples")
        idx = idx.to(self.images.device)
        return ArrayDataset(self.images[idx], self.labels[idx], list(self.classes))

    def split_indices(
        self, fraction: float, seed: int = 0, stratified: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Index tensors ``(keep, held_out)`` of :meth:`split` (each sorted ascending)."""
        n = len(self)
        if not 0.0 < float(fraction) < 1.0:
            raise DataError(f"split fraction must be in (0, 1), got {fraction}")
        n_held = int(round(n * float(fraction)))
        if n_held == 0 or n_held == n:
            raise DataError(
                f"split fraction {fraction} of {n} examples leaves an empty part ({n_held} held out)"
            )
        gen = torch.Generator().manual_seed(int(seed))
        labels = self.labels.cpu()
        if not stratified:
            perm = torch.randperm(n, generator=gen)
            held = perm[:n_held]
        else:
            # Per-class quotas by the largest-remainder method so the total is exactly n_held.
            counts = torch.bincount(labels, minlength=self.num_classes).double()
            exact = counts * (n_held / n)
            quota = exact.floor().long()
            short = n_held - int(quota.sum())
            if short > 0:
                remainder = exact - quota.double()
                # stable tie-break by class index
                order = sorted(range(len(quota)), key=lambda k: (-float(remainder[k]), k))
                for k in order[:short]:
                    quota[k] += 1
            parts = []
            for k in range(self.num_classes):
                q = int(quota[k])
                if q == 0:
                    continue
                members = (labels == k).nonzero().flatten()
                parts.append(members[torch.randperm(members.numel(), generator=gen)[:q]])
            held = torch.cat(parts)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[held] = True
        return (~mask).nonzero().flatten(), mask.nonzero().flatten()

    def split(
        self, fraction: float, seed: int = 0, stratified: bool = True
    ) -> tuple[ArrayDataset, ArrayDataset]:
        """Split into ``(rest, held_out)`` where ``held_out`` has ``round(fraction * N)`` examples.

        Typical use: ``train, val = train_full.split(0.1, seed=0)``. The split is deterministic
        given ``seed``; with ``stratified=True`` (default) each class contributes in proportion to its
        size. Both parts keep the original example order and share ``classes``.
        """
        keep, held = self.split_indices(fraction, seed, stratified)
        return self.subset(keep), self.subset(held)
