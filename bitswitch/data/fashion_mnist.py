"""Fashion-MNIST from the official IDX files (gzipped or not)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .arrays import ArrayDataset
from .errors import DataError, layout_error

__all__ = ["FASHION_MNIST_CLASSES", "load_fashion_mnist", "read_idx"]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Sub-folders searched below ``root`` (torchvision and common mirrors).
_SUBDIRS = ("", "raw", "FashionMNIST/raw", "fashion_mnist", "fashion-mnist", "fashion_mnist/raw")
_LAYOUTS = [
    "<root>/train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (official IDX files, gzipped or not)",
    "the same files in <root>/raw/ or <root>/FashionMNIST/raw/ (torchvision layout) "
    "or <root>/fashion_mnist/ or <root>/fashion-mnist/",
]

# IDX type codes -> numpy big-endian dtypes
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


#: an IDX file's data may not exceed this (Fashion-MNIST's largest is 47 MB)
MAX_IDX_BYTES = 1 << 30


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally ``.gz``) into a numpy array, validating header and size.

    Decompression stops one byte after the size the header declares, so a gzip bomb costs no more
    memory than an honest file of the declared shape (itself capped at :data:`MAX_IDX_BYTES`).
    """
    path = Path(path)
    try:
        with _open(path) as f:
            magic = f.read(4)
            if len(magic) < 4:
                raise DataError(f"IDX file {str(path)!r} is too short ({len(magic)} bytes) to hold a header")
            if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise DataError(
                    f"IDX file {str(path)!r} has a bad magic number {magic.hex()} "
                    "(expected 0x0000 + type code + ndim, e.g. 00000803 for images, 00000801 for labels)"
                )
            dtype = _IDX_DTYPES[magic[2]]
            ndim = magic[3]
            if expected_ndim is not None and ndim != expected_ndim:
                raise DataError(
                    f"IDX file {str(path)!r} has {ndim} dimensions, expected {expected_ndim} "
                    f"(magic {magic.hex()})"
                )
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataError(f"IDX file {str(path)!r} is truncated inside its header")
            shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4", count=ndim))
            expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if expected > MAX_IDX_BYTES:
                raise DataError(f"IDX file {str(path)!r}: header says shape {shape} ({expected} bytes), above the limit of {MAX_IDX_BYTES} bytes")
            data = f.read(expected + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"IDX file {str(path)!r} is truncated or not valid gzip: {exc}") from exc
    except OSError as exc:
        raise DataError(f"could not read IDX file {str(path)!r}: {exc}") from exc
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"IDX file {str(path)!r} is {kind}: header says shape {shape} ({expected} bytes of data) "
            f"but it holds {'more' if len(data) > expected else len(data)} bytes"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _find(root: Path, stem: str) -> Path | None:
    for sub in _SUBDIRS:
        base = root / sub if sub else root
        for name in (stem + ".gz", stem):
            p = base / name
            if p.is_file():
                return p
    return None


def load_fashion_mnist(root: str | Path, split: str = "train") -> ArrayDataset:
    """Load Fashion-MNIST ``split`` ("train": 60000, "test": 10000) as uint8 ``(N, 1, 28, 28)``."""
    if split not in _FILES:
        raise DataError(f"Fashion-MNIST split must be one of {sorted(_FILES)}, got {split!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise layout_error("Fashion-MNIST", root, _LAYOUTS, "not a directory")
    img_stem, lbl_stem = _FILES[split]
    img_path, lbl_path = _find(root, img_stem), _find(root, lbl_stem)
    missing = [s for s, p in ((img_stem, img_path), (lbl_stem, lbl_path)) if p is None]
    if missing:
        raise layout_error("Fashion-MNIST", root, _LAYOUTS, f"missing {', '.join(m + '[.gz]' for m in missing)}")
    images = read_idx(img_path, expected_ndim=3)
    labels = read_idx(lbl_path, expected_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(
            f"Fashion-MNIST IDX files {str(img_path)!r}/{str(lbl_path)!r} must hold uint8 data "
            "(magic 00000803 / 00000801)"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"Fashion-MNIST {split}: {images.shape[0]} images in {str(img_path)!r} but "
            f"{labels.shape[0]} labels in {str(lbl_path)!r}"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"Fashion-MNIST labels in {str(lbl_path)!r} exceed 9 (max {int(labels.max())})")
    return ArrayDataset(
        torch.from_numpy(images).unsqueeze(1).contiguous(),
        torch.from_numpy(labels.astype(np.int64)),
        list(FASHION_MNIST_CLASSES),
    )
