"""Data readers are bounded and never silently wrong: gzip bombs, empty class folders, 16-bit images (issue 17)."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bitswitch.data.cifar10 import load_cifar10
from bitswitch.data.errors import DataError
from bitswitch.data.fashion_mnist import read_idx
from bitswitch.data.imagenet import ImageFolderDataset


def test_gzip_bomb_stops_at_the_declared_size(tmp_path: Path) -> None:
    """A header for 10 28x28 images followed by 64 MB of zeros: refused after reading ~8 KB."""
    path = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 10, 28, 28))
        chunk = bytes(1 << 20)
        for _ in range(64):
            f.write(chunk)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="longer than its header says"):
            read_idx(path, 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"peak {peak} bytes"


def test_idx_header_declaring_a_huge_shape_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, 2**31, 2**16, 28) + bytes(100))
    with pytest.raises(DataError, match="above the limit"):
        read_idx(path, 3)


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_empty_cifar_class_folder_is_an_error(tmp_path: Path) -> None:
    for c in ("bird", "cat"):
        for i in range(2):
            _png(tmp_path / "train" / c / f"{i}.png", np.full((32, 32, 3), 10 * i, np.uint8))
    (tmp_path / "train" / "ant").mkdir()
    with pytest.raises(DataError, match="ant.*holds no"):
        load_cifar10(tmp_path, "train", cache=False)


def test_16_bit_images_are_refused_not_clipped(tmp_path: Path) -> None:
    wide = np.full((32, 32), 40000, np.uint16)
    for c in ("bird", "cat"):
        _png(tmp_path / "train" / c / "0.png", np.full((32, 32, 3), 7, np.uint8))
    _png(tmp_path / "train" / "cat" / "1.png", wide)
    with pytest.raises(DataError, match="16-bit or float"):
        load_cifar10(tmp_path, "train", cache=False)
    folder = tmp_path / "imagenet"
    _png(folder / "n1" / "a.png", wide)
    with pytest.raises(DataError, match="16-bit or float"):
        ImageFolderDataset(folder).load_image(0)
