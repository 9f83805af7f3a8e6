"""Integer checkpoints: safetensors with storage-precision codes, scales and JSON metadata.

Layout of a ``.safetensors`` file written by :func:`save`:

* ``<layer>.weight_int``: integer codes ``W_h`` of every quantized layer (int8 for h <= 8), never
  an FP32 copy of a quantized weight;
* ``<layer>.weight_quant.scale``, ``<layer>.act_quant.scales.<b>``, ``<layer>.act_quant.signed_flag``;
* every other state-dict entry as is (full-precision layers, per-bit BatchNorms, biases);
* metadata (strings): ``format="bitswitch"``, ``format_version``, ``quant_config`` (JSON of
  :class:`~bitswitch.nn.convert.QuantConfig`, which names the rounding mode), ``arch`` (JSON of the
  built-in architecture and its constructor arguments, or ``null``), ``precision`` (JSON of the
  current per-layer precision), ``extra`` (JSON supplied by the caller) and ``sha256`` of the
  tensor contents, so a corrupted byte anywhere is detected.

A model without quantized layers (an FP32 run's) is saved the same way with ``storage="float"``:
its state dict as is, ``quant_config`` and ``precision`` ``null``; :func:`load` rebuilds it as a
float model.

No pickle is involved anywhere; writes go to a temporary file that replaces the target atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..nn.convert import QuantConfig, get_precision, quantize, quantized_layers, set_precision

FORMAT = "bitswitch"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1, 2)  # 2: storage="packed" (bitswitch.export.compact)


class CheckpointError(ValueError):
    """A file that is not a readable bitswitch checkpoint (truncated, corrupted or foreign)."""


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def integer_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every shared-scale quantized weight replaced by its int codes."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    for name, layer in quantized_layers(model).items():
        if not getattr(layer.weight_quant, "shared_scale", False):
            continue  # unshared variant: FP32 latent weights are its storage
        state.pop(f"{name}.weight", None)
        state[f"{name}.weight_int"] = layer.integer_codes()
    return {k: v.contiguous().clone() for k, v in state.items()}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then move the file into place; no half-written ``path`` ever exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600; the result gets the mode of the file it replaces, or the
    # umask's default for a new file (as open() would give), not a private file by accident
    mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON through :func:`atomic_write_bytes` (results, configs, caches)."""
    text = json.dumps(obj, indent=indent)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
    return Path(path)


def read_tagged_json(path: str | os.PathLike, fmt: str, *, missing: str, wrong: str) -> dict[str, Any]:
    """Read a JSON document whose ``format`` is ``fmt`` and that has a ``layers`` mapping.

    ``missing`` is the full message of the FileNotFoundError for an absent file, ``wrong`` that of the
    ValueError for a readable JSON file of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt or not isinstance(doc.get("layers"), dict):
        raise ValueError(wrong)
    return doc


def save(model: nn.Module, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a checkpoint (see the module docstring for the layout): integer codes for a
    quantized model, the float state dict (``storage="float"``) for a model :func:`quantize` never saw."""
    config: QuantConfig | None = getattr(model, "bitswitch_config", None)
    tensors = integer_state_dict(model)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "quant_config": json.dumps(None if config is None else config.to_dict()),
        "arch": json.dumps(getattr(model, "bitswitch_arch", None)),
        "precision": json.dumps(None if config is None else {k: list(v) for k, v in get_precision(model).items()}),
        "extra": json.dumps(extra or {}),
        "sha256": tensor_digest(tensors),
    }
    if config is None:
        metadata["storage"] = "float"
    path = Path(path)
    atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def _read_header(path: Path) -> dict[str, Any]:
    """Parse the safetensors header ourselves, so any damage becomes a CheckpointError."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: file is {size} bytes, too short to be a safetensors checkpoint")
        (n,) = struct.unpack("<Q", raw)
        if n <= 0 or 8 + n > size:
            raise CheckpointError(f"{path}: not a safetensors file, or truncated (header length {n} exceeds the file size {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupted safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupted safetensors header")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    if ends and 8 + n + max(ends) > size:
        raise CheckpointError(f"{path}: file is truncated ({size} bytes, the header needs {8 + n + max(ends)})")
    return header


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint: (tensors, decoded metadata). Raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    header = _read_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file but not a bitswitch checkpoint (no format='{FORMAT}' metadata)")
    try:
        version = int(meta.get("format_version", "-1"))
    except ValueError:
        version = -1
    if version not in SUPPORTED_VERSIONS:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('format_version')!r} is not supported (this bitswitch reads {SUPPORTED_VERSIONS})")
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
        decoded = {k: json.loads(meta[k]) for k in ("quant_config", "arch", "precision", "extra")}
        decoded["storage"] = meta.get("storage", "int")
        if "packing" in meta:
            decoded["packing"] = json.loads(meta["packing"])
    except CheckpointError:
        raise
    except Exception as e:  # safetensors/json raise several types for damaged files
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    if tensor_digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupted")
    return tensors, decoded


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model from a checkpoint: a quantized one in integer (deployment) form, or a float one.

    Built-in architectures are rebuilt from the file alone. For a custom architecture pass the
    un-quantized ``model`` it was converted from (its weights are replaced). The result gives
    bit-identical outputs to the saved model at every bit-width, and is in eval mode.
    """
    tensors, meta = read_checkpoint(path)
    if meta["storage"] == "packed":  # packed low-precision storage: expand to ordinary integer codes first
        from .compact import expand_packed

        tensors = expand_packed(tensors, meta, path)
    elif meta["storage"] not in ("int", "float"):
        raise CheckpointError(f"{path}: unknown storage {meta['storage']!r} (this bitswitch reads 'int', 'packed' and 'float')")
    config = None if meta["storage"] == "float" else QuantConfig.from_dict(meta["quant_config"])
    if model is None:
        arch = meta["arch"]
        if not arch:
            raise CheckpointError(f"{path}: the checkpoint holds a custom architecture; pass the FP32 model: bitswitch.load(path, model=...)")
        from ..models import build

        model = build(arch["name"], **arch.get("kwargs", {}))
    if config is not None:  # a float checkpoint's state dict fits the model as built
        try:
            model = quantize(
                model, config.bits, act_bits=config.act_bits, storage_bits=config.storage_bits,
                full_precision=list(config.full_precision), rounding=config.rounding, variant=config.variant,
                switchable_bn=config.switchable_bn, inplace=True, act_asymmetric=config.act_asymmetric,
            )
        except ValueError as e:
            raise CheckpointError(f"{path}: the model's layers do not match the checkpoint ({e})") from None
        if tuple(model.bitswitch_config.quantized) != tuple(config.quantized):
            raise CheckpointError(f"{path}: the model's layers do not match the checkpoint's quantized layers")
        if config.variant == "shared":
            for layer in quantized_layers(model).values():
                layer.to_integer()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{path}: checkpoint does not fit the model: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), shape mismatches {sorted(shapes)[:5]} ({len(shapes)})"
        )
    model.load_state_dict(tensors, strict=True)
    if config is not None:
        set_precision(model, {k: tuple(v) if v[0] is not None else None for k, v in meta["precision"].items()})
    model.bitswitch_extra = meta["extra"]
    return model.eval()


__all__ = ["save", "load", "read_checkpoint", "CheckpointError", "integer_state_dict", "atomic_write_bytes", "atomic_write_json", "read_tagged_json"]
