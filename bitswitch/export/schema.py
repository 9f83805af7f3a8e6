"""What a checkpoint's metadata and tensors may hold, checked before anything is built from them.

:func:`decode_metadata` validates every metadata key against a schema (known keys only, types,
ranges) and returns it decoded; :func:`check_values` validates the tensor values a model will
compute with (finite floats, integer codes on their grid, non-zero scales, non-negative BatchNorm
variances). Each problem raises :class:`CheckpointError` naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..nn.convert import QuantConfig, quantized_layers
from ..quant.grid import MAX_BITS, MIN_BITS, ROUNDING_MODES, int_range
from ..quant.weight import WEIGHT_QUANTIZERS

FORMAT = "bitswitch"
VERSIONS = {"1": "int", "2": "packed"}  # format_version -> the storage it introduced
REQUIRED = ("format", "format_version", "quant_config", "arch", "precision", "extra", "sha256")
OPTIONAL = ("storage", "packing", "tied", "ptq")
MAX_INPUT_ELEMENTS = 1 << 24  # one sample; a 4096x4096x1 image is the largest a command builds


class CheckpointError(ValueError):
    """A file that is not a readable bitswitch checkpoint (truncated, corrupted, edited or foreign)."""


def _fail(path: Any, key: str, message: str) -> CheckpointError:
    return CheckpointError(f"{path}: metadata {key}: {message}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bits(value: Any, path: Any, key: str) -> None:
    if not _is_int(value) or not MIN_BITS <= value <= MAX_BITS:
        raise _fail(path, key, f"must be an integer bit-width in [{MIN_BITS}, {MAX_BITS}], got {value!r}")


def _bit_list(value: Any, path: Any, key: str) -> None:
    if not isinstance(value, list) or not value or len(set(map(repr, value))) != len(value):
        raise _fail(path, key, f"must be a non-empty list of distinct bit-widths, got {value!r}")
    for b in value:
        _bits(b, path, key)


def _names(value: Any, path: Any, key: str) -> None:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise _fail(path, key, f"must be a list of layer names, got {value!r}")


def _check_quant_config(qc: Any, path: Any) -> None:
    if qc is None:  # an FP32 model: no quantized layers
        return
    if not isinstance(qc, dict):
        raise _fail(path, "quant_config", f"must be an object or null, got {type(qc).__name__}")
    fields = {f.name for f in dataclasses.fields(QuantConfig)}
    unknown = sorted(set(qc) - fields)
    if unknown:
        raise _fail(path, f"quant_config.{unknown[0]}", f"unknown key; valid: {sorted(fields)}")
    for key in ("bits", "act_bits", "storage_bits", "quantized"):
        if key not in qc:
            raise _fail(path, f"quant_config.{key}", "is missing")
    _bit_list(qc["bits"], path, "quant_config.bits")
    _bit_list(qc["act_bits"], path, "quant_config.act_bits")
    _bits(qc["storage_bits"], path, "quant_config.storage_bits")
    if max(qc["bits"]) > qc["storage_bits"]:
        raise _fail(path, "quant_config.storage_bits", f"{qc['storage_bits']} is below the highest bit-width {max(qc['bits'])}")
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "rounding": (lambda v: v in ROUNDING_MODES, f"one of {list(ROUNDING_MODES)}"),
        "variant": (lambda v: v in WEIGHT_QUANTIZERS, f"one of {list(WEIGHT_QUANTIZERS)}"),
        "switchable_bn": (lambda v: isinstance(v, bool), "true or false"),
        "act_asymmetric": (lambda v: isinstance(v, bool), "true or false"),
    }
    for key, (ok, valid) in checks.items():
        if key in qc and not ok(qc[key]):
            raise _fail(path, f"quant_config.{key}", f"must be {valid}, got {qc[key]!r}")
    _names(qc.get("full_precision", []), path, "quant_config.full_precision")
    _names(qc["quantized"], path, "quant_config.quantized")
    _names(qc.get("weight_only", []), path, "quant_config.weight_only")
    outside = sorted(set(qc.get("weight_only", [])) - set(qc["quantized"]))
    if outside:
        raise _fail(path, "quant_config.weight_only", f"{outside[0]!r} is not in quant_config.quantized")
    bns = qc.get("batchnorms", {})
    if not isinstance(bns, dict) or not all(isinstance(v, str) and v in qc["quantized"] for v in bns.values()):
        raise _fail(path, "quant_config.batchnorms", "must be an object {batchnorm: quantized layer it follows}")


def _check_tied(tied: Any, path: Any) -> None:
    if not isinstance(tied, dict) or not all(isinstance(k, str) and isinstance(v, str) and k != v for k, v in tied.items()):
        raise _fail(path, "tied", f"must be an object {{alias key: stored key}}, got {tied!r}")
    chained = sorted(set(tied) & set(tied.values()))
    if chained:
        raise _fail(path, "tied", f"{chained[0]!r} is both an alias and a stored key")


def _json_value_ok(v: Any, depth: int = 0) -> bool:
    """Constructor arguments: finite scalars, strings, and short nested lists of them."""
    if v is None or isinstance(v, (bool, str)):
        return True
    if isinstance(v, (int, float)):
        return math.isfinite(v)
    if isinstance(v, list):
        return depth < 3 and all(_json_value_ok(x, depth + 1) for x in v)
    return False


def _check_arch(arch: Any, path: Any) -> None:
    if arch is None:
        return
    from ..models import available
    from ..models.factory import FACTORY_PATTERN

    if isinstance(arch, dict) and "factory" in arch:  # a user's package.module:factory (never imported here)
        if set(arch) - {"factory", "kwargs"} or not isinstance(arch["factory"], str) or not FACTORY_PATTERN.fullmatch(arch["factory"]):
            raise _fail(path, "arch", f"must be {{\"factory\": \"package.module:callable\", \"kwargs\": {{...}}}}, got {arch!r}")
    elif not isinstance(arch, dict) or set(arch) - {"name", "kwargs"} or not isinstance(arch.get("name"), str):
        raise _fail(path, "arch", f"must be {{\"name\": str, \"kwargs\": {{...}}}}, {{\"factory\": str, \"kwargs\": {{...}}}} or null, got {arch!r}")
    elif arch["name"] not in available():
        raise _fail(path, "arch.name", f"unknown architecture {arch['name']!r}; available: {', '.join(available())}")
    kwargs = arch.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise _fail(path, "arch.kwargs", f"must be an object, got {kwargs!r}")
    for k, v in kwargs.items():
        if not _json_value_ok(v):
            raise _fail(path, f"arch.kwargs.{k}", f"must be a finite number, string, bool, null or short list, got {v!r}")


def _check_precision(precision: Any, path: Any) -> None:
    if not isinstance(precision, dict):
        raise _fail(path, "precision", f"must be an object {{layer: [w_bits, a_bits]}}, got {type(precision).__name__}")
    for name, v in precision.items():
        pair_ok = isinstance(v, list) and len(v) == 2 and (v == [None, None] or (
            all(_is_int(b) and MIN_BITS <= b <= MAX_BITS for b in v if b is not None) and v[0] is not None))
        if not pair_ok:
            raise _fail(path, f"precision.{name}", f"must be [w_bits, a_bits] with bits in [{MIN_BITS}, {MAX_BITS}], [w_bits, null] "
                                                   f"(weight-only) or [null, null], got {v!r}")


def _check_packing(packing: Any, path: Any) -> None:
    if not isinstance(packing, dict) or set(packing) != {"exact", "layers"} or not isinstance(packing["exact"], bool) or not isinstance(packing["layers"], dict):
        raise _fail(path, "packing", "must be {\"exact\": bool, \"layers\": {name: {shape, bits, ties}}}")
    for name, info in packing["layers"].items():
        ok = (isinstance(info, dict) and set(info) == {"shape", "bits", "ties"} and isinstance(info["ties"], bool)
              and isinstance(info["shape"], list) and all(_is_int(d) and d > 0 for d in info["shape"]) and len(info["shape"]) <= 8
              and _is_int(info["bits"]) and 1 <= info["bits"] <= 8)
        if not ok:
            raise _fail(path, f"packing.layers.{name}", f"must be {{\"shape\": [positive ints], \"bits\": 1..8, \"ties\": bool}}, got {info!r}")


def decode_metadata(meta: Mapping[str, str], path: Any) -> dict[str, Any]:
    """Validate raw safetensors metadata against the checkpoint schema; return it JSON-decoded."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file but not a bitswitch checkpoint (no format='{FORMAT}' metadata)")
    version = meta.get("format_version")
    if version not in VERSIONS:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is not supported (this bitswitch reads {sorted(VERSIONS)})")
    unknown = sorted(set(meta) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise _fail(path, unknown[0], f"unknown key; valid: {sorted(REQUIRED + OPTIONAL)}")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise _fail(path, missing[0], "is missing")
    storage = meta.get("storage", "int")
    if storage not in ("int", "packed", "float") or (storage == "packed") != (version == "2") or (storage == "packed") != ("packing" in meta):
        raise _fail(path, "storage", f"{storage!r} does not fit format_version {version!r} (1: 'int' or 'float'; 2: 'packed' with packing metadata)")
    decoded: dict[str, Any] = {"storage": storage}
    for key in ("quant_config", "arch", "precision", "extra") + tuple(k for k in ("packing", "tied", "ptq") if k in meta):
        try:
            decoded[key] = json.loads(meta[key], parse_constant=lambda c: _reject_constant(c, path, key))
        except (json.JSONDecodeError, RecursionError) as e:
            raise _fail(path, key, f"is not valid JSON ({e})") from None
    _check_quant_config(decoded["quant_config"], path)
    if (storage == "float") != (decoded["quant_config"] is None):
        raise _fail(path, "storage", f"{storage!r}: a float checkpoint has quant_config null, an integer one a quant_config")
    _check_arch(decoded["arch"], path)
    _check_precision(decoded["precision"], path)
    if not isinstance(decoded["extra"], dict):
        raise _fail(path, "extra", f"must be an object, got {type(decoded['extra']).__name__}")
    if "packing" in decoded:
        _check_packing(decoded["packing"], path)
    decoded.setdefault("tied", {})
    _check_tied(decoded["tied"], path)
    if "ptq" in decoded:
        from .ptq_form import check_ptq

        if storage != "int":
            raise _fail(path, "ptq", f"a PTQ checkpoint has storage 'int', not {storage!r}")
        check_ptq(decoded["ptq"], path)
    return decoded


def _reject_constant(name: str, path: Any, key: str) -> Any:
    raise _fail(path, key, f"contains {name}; only finite numbers are allowed")


def input_shape(value: Any, source: str) -> list[int]:
    """A one-sample input shape (``C,H,W`` or ``N`` features) from a flag or a file, bounded in size."""
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",")]
        except ValueError:
            raise ValueError(f"{source}: input shape {value!r} must be comma-separated integers, e.g. 3,32,32") from None
    if not (isinstance(value, list) and 1 <= len(value) <= 4 and all(_is_int(d) and d > 0 for d in value)):
        raise ValueError(f"{source}: input shape must be 1 to 4 positive integers, got {value!r}")
    if math.prod(value) > MAX_INPUT_ELEMENTS:
        raise ValueError(f"{source}: input shape {value} has {math.prod(value)} elements per sample; the limit is {MAX_INPUT_ELEMENTS}")
    return value


def check_values(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: Any) -> None:
    """Refuse tensors that would load into NaN outputs or off-grid codes; each error names the key."""
    for key, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: tensor {key}: contains NaN or Inf")
    for name, layer in quantized_layers(model).items():
        wq, aq = layer.weight_quant, layer.act_quant
        codes = tensors.get(f"{name}.weight_int")
        if codes is not None:
            lo, hi = int_range(wq.storage_bits, signed=True)
            if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
                raise CheckpointError(f"{path}: tensor {name}.weight_int: codes outside the {wq.storage_bits}-bit range [{lo}, {hi}]")
        for key in [k for k in tensors if k.startswith((f"{name}.weight_quant.scale", f"{name}.act_quant.scales."))]:
            # training can drive an LSQ weight scale through zero (the codes then change sign and the
            # product stays right); a zero scale divides by zero, so only that is refused
            if not (tensors[key] != 0).all():
                raise CheckpointError(f"{path}: tensor {key}: scales must be non-zero")
        flag = tensors.get(f"{name}.act_quant.signed_flag")
        if flag is not None and int(flag) not in (-1, 0, 1):
            raise CheckpointError(f"{path}: tensor {name}.act_quant.signed_flag: must be -1, 0 or 1, got {int(flag)}")
        zp = tensors.get(f"{name}.act_quant.zero_points")
        if zp is not None:
            hi_zp = torch.tensor([2**b - 1 for b in aq.bits], dtype=zp.dtype)
            if not ((zp >= 0) & (zp <= hi_zp) & (zp == zp.round())).all():
                raise CheckpointError(f"{path}: tensor {name}.act_quant.zero_points: must be integers in [0, 2^b - 1]")
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            var = tensors.get(f"{name}.running_var")
            if var is not None and not (var >= 0).all():
                raise CheckpointError(f"{path}: tensor {name}.running_var: BatchNorm variances must be non-negative")


__all__ = ["CheckpointError", "FORMAT", "check_values", "decode_metadata", "input_shape"]
