"""scikit-learn's bundled 8x8 handwritten digits (no download), as ArrayDatasets."""

from __future__ import annotations

import numpy as np
import torch

from .arrays import ArrayDataset
from .errors import DataError

__all__ = ["DIGITS_CLASSES", "load_digits_dataset"]

DIGITS_CLASSES = [str(d) for d in range(10)]
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits_dataset() -> tuple[ArrayDataset, ArrayDataset]:
    """``(train, test)``: 1797 images uint8 ``(1, 8, 8)`` scaled 0..16 -> 0..255, stratified 80/20 split.

    The split is fixed (seed 0, stratified by class) so it is identical across runs and machines.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8) in 0..16
    images = np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    full = ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), list(DIGITS_CLASSES))
    return full.split(TEST_FRACTION, seed=SPLIT_SEED, stratified=True)
