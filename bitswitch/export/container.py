"""Signed safetensors files: the one reader and writer behind checkpoints and training states.

Why not ``safetensors.safe_open``: a damaged or hostile header must become one clear error, and
every byte of the file must be covered by the digest. This reader parses the header itself,
checks that the tensor table is well formed (known dtypes, sizes that match shapes, data regions
that tile the data section exactly, nothing after it), and verifies one SHA-256 over the
canonical metadata and every tensor's name, dtype, shape and bytes before a tensor is returned.
Memory stays bounded by the file's size: nothing is allocated from a size the header merely
declares.

The digest proves integrity (no accidental or partial edit), not authenticity: anyone can edit a
file and write a new digest (see ``docs/security.md``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .atomic import atomic_write_bytes

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
MAX_DIMS = 8
DIGEST_KEY = "sha256"


@dataclass(frozen=True)
class Entry:
    """One tensor as the header declares it; ``begin``/``end`` are offsets into the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    metadata: dict[str, str]
    entries: dict[str, Entry]
    data_start: int


def _canonical_metadata(metadata: Mapping[str, str]) -> bytes:
    return json.dumps({k: v for k, v in metadata.items() if k != DIGEST_KEY}, sort_keys=True, separators=(",", ":")).encode()


def _digest(metadata: Mapping[str, str], items: list[tuple[str, str, tuple[int, ...], bytes]]) -> str:
    h = hashlib.sha256(b"bitswitch-safetensors-v2\0")
    h.update(_canonical_metadata(metadata))
    for name, dtype, shape, data in sorted(items, key=lambda i: i[0]):
        h.update(f"\0{name}|{dtype}|{list(shape)}|{len(data)}|".encode())
        h.update(data)
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def write(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Write ``tensors`` and string ``metadata`` atomically, adding the digest over both."""
    for name, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}, which bitswitch files do not store; valid: {sorted(map(str, DTYPE_NAMES))}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    items = [(k, DTYPE_NAMES[v.dtype], tuple(v.shape), _tensor_bytes(v)) for k, v in tensors.items()]
    signed = {**{k: v for k, v in metadata.items() if k != DIGEST_KEY}, DIGEST_KEY: _digest(metadata, items)}
    path = Path(path)
    atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=signed))
    return path


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_header(path: str | os.PathLike, error: type[Exception]) -> Header:
    """Parse and check the header of ``path``; any defect raises ``error`` naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise error(f"{path}: file is {size} bytes, too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n <= 1 or 8 + n > size:
            raise error(f"{path}: not a safetensors file, or truncated (header length {n}, file size {size})")
        text = f.read(n)
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, or nesting deeper than Python recurses
        raise error(f"{path}: corrupted safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise error(f"{path}: corrupted safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise error(f"{path}: __metadata__ must map strings to strings")
    entries: dict[str, Entry] = {}
    for name, e in header.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise error(f"{path}: tensor {name!r}: header entry must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in DTYPES:
            raise error(f"{path}: tensor {name!r}: unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_int(d) and d >= 0 for d in shape):
            raise error(f"{path}: tensor {name!r}: shape must be a list of at most {MAX_DIMS} non-negative integers, got {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise error(f"{path}: tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise error(f"{path}: tensor {name!r}: shape {shape} of {dtype} needs {nbytes} bytes, data_offsets give {offsets[1] - offsets[0]}")
        entries[name] = Entry(dtype, tuple(shape), offsets[0], offsets[1])
    data_len = size - 8 - n
    pos = 0
    for name, e in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin != pos:
            raise error(f"{path}: tensor {name!r}: data region [{e.begin}, {e.end}) leaves a gap or overlaps (expected to start at {pos})")
        pos = e.end
    if pos != data_len:
        raise error(f"{path}: the tensors cover {pos} bytes of a {data_len}-byte data section (truncated or extended file)")
    return Header(metadata, entries, 8 + n)


def read(path: str | os.PathLike, error: type[Exception], header: Header | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a file written by :func:`write`: ``(tensors, raw metadata)``, verified.

    Pass the ``header`` :func:`read_header` returned when the caller checked it first (a schema
    check before any tensor data is read), so it is not parsed twice.
    """
    path = Path(path)
    header = header or read_header(path, error)
    with open(path, "rb") as f:
        f.seek(header.data_start)
        data = f.read()
    view = memoryview(data)  # slices without copying: bytearray() below is the one copy per tensor
    items = [(k, e.dtype, e.shape, view[e.begin:e.end]) for k, e in header.entries.items()]
    if _digest(header.metadata, items) != header.metadata.get(DIGEST_KEY):
        raise error(f"{path}: checksum mismatch: the file is corrupted or was edited (the sha256 covers the metadata and every tensor)")
    tensors = {}
    for name, dtype, shape, raw in items:
        t = torch.frombuffer(bytearray(raw), dtype=DTYPES[dtype]) if raw else torch.empty(0, dtype=DTYPES[dtype])
        tensors[name] = t.reshape(shape)
    return tensors, header.metadata


__all__ = ["DTYPES", "DTYPE_NAMES", "Entry", "Header", "read", "read_header", "write"]
