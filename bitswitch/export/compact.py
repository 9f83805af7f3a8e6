"""Compact checkpoints for devices that never need the top precision.

A model stored at ``h`` bits (int8 codes) but deployed where only ``{4, 3, 2}`` are used wastes half
its weight bytes. :func:`save_compact` re-stores it with the codes of the highest kept bit-width
``p`` packed ``8/p`` per byte (4-bit codes two per byte, low nibble first), drops the BatchNorms of
the removed bit-widths, and writes ``format_version`` 2 with ``storage="packed"``;
:func:`bitswitch.load` dispatches on that key.

Why a tie plane. Lower precisions are derived from the ``h``-bit codes (``W_b = round(W_h/2^(h-b))``).
Deriving them from the rounded ``p``-bit codes instead is a *double* rounding, which differs from the
single one wherever the first rounding lands exactly on a rounding boundary of the second (e.g.
``round(11/8) = 1`` but ``round(round(11/4)/2) = round(1.5) = 2``). Those boundary cases are decided
by the sign of the discarded remainder ``d = W_h - W_p·2^(h-p)`` alone, so the file keeps that sign
(one of -1/0/+1, 2 bits per weight) when more than one bit-width is kept and the rounding is not
``floor``. The loader rebuilds ``W_h' = W_p·2^(h-p) + sign(d)``, which gives exactly the original
codes at every kept bit-width (checked exhaustively in the tests), so the reloaded model is
bit-identical. ``exact=False`` drops the plane (pure ``p``-bit storage); the kept lower
bit-widths are then re-derived from the ``p``-bit codes and :func:`verify_compact` reports how many
codes differ.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..nn.batchnorm import SwitchableBatchNorm
from ..nn.convert import QuantConfig, get_precision, quantized_layers, set_precision
from ..quant.grid import check_bit_list, int_range, requantize, storage_dtype
from . import container
from .checkpoint import integer_state_dict, split_tied
from .schema import FORMAT, CheckpointError

STORAGE = "packed"
FORMAT_VERSION = 2


def pack_bits(values: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """Pack integers of ``bits`` bits (two's complement if signed) into a flat uint8 tensor.

    Bits go little-endian into a continuous stream, so 4-bit codes sit two per byte (first value in
    the low nibble) and 2-bit values four per byte.
    """
    v = values.reshape(-1).to(torch.int64).numpy()
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if v.size and (v.min() < lo or v.max() > hi):
        raise ValueError(f"values outside the {bits}-bit {'signed' if signed else 'unsigned'} range [{lo}, {hi}]")
    u = (v & ((1 << bits) - 1)).astype(np.uint8)
    planes = ((u[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little").copy())


def unpack_bits(packed: torch.Tensor, bits: int, count: int, signed: bool = True) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``count`` int64 values."""
    raw = np.unpackbits(packed.numpy().astype(np.uint8), count=count * bits, bitorder="little")
    u = (raw.reshape(count, bits).astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(1)
    if signed:
        u = np.where(u >= 2 ** (bits - 1), u - 2**bits, u)
    return torch.from_numpy(u)


def _needs_ties(keep: tuple[int, ...], rounding: str, high: int) -> bool:
    return len(keep) > 1 and rounding != "floor" and keep[0] < high


def compact_codes(codes_h: torch.Tensor, high: int, keep: tuple[int, ...], rounding: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W_p, sign(d) or None)`` for storage at ``p = max(keep)``."""
    p = keep[0]
    wp = requantize(codes_h, high, p, rounding).to(torch.int64)
    if not _needs_ties(keep, rounding, high):
        return wp, None
    d = codes_h.to(torch.int64) - wp * 2 ** (high - p)
    return wp, torch.sign(d)


def expand_codes(wp: torch.Tensor, ties: torch.Tensor | None, high: int, p: int) -> torch.Tensor:
    """Rebuild ``h``-bit codes that give the original codes at every kept bit-width."""
    codes = wp.to(torch.int64) * 2 ** (high - p)
    if ties is not None:
        if ties.numel() and not bool(((ties >= -1) & (ties <= 1)).all()):
            raise ValueError("tie signs must be -1, 0 or +1")
        codes = codes + ties
    lo, hi = int_range(high, signed=True)
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise ValueError(f"expanded codes leave the {high}-bit range [{lo}, {hi}]")
    return codes.to(storage_dtype(high))


def save_compact(model: nn.Module, path: str | os.PathLike, keep: Sequence[int], *, exact: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``model`` keeping only the bit-widths ``keep``, weights packed at ``max(keep)`` bits.

    Returns a summary (bytes of weight storage before/after, packing per layer).
    """
    config: QuantConfig | None = getattr(model, "bitswitch_config", None)
    if config is None:
        raise ValueError("only quantized models can be stored compactly: call bitswitch.quantize first")
    if config.variant != "shared":
        raise ValueError("the unshared-scale variant keeps FP32 weights; only Double Rounding (variant='shared') models can be packed")
    keep_t = check_bit_list(tuple(keep), what="keep")
    missing = [b for b in keep_t if b not in config.bits]
    if missing:
        raise ValueError(f"bit-widths {missing} are not in the model's list {list(config.bits)}")
    high, p = config.storage_bits, keep_t[0]
    tensors, tied = split_tied(integer_state_dict(model))
    layers = quantized_layers(model)
    packing: dict[str, dict[str, Any]] = {}
    before = after = 0
    for name in layers:
        if f"{name}.weight_int" in tied:
            continue  # tied to a layer packed under its own name
        codes_h = tensors.pop(f"{name}.weight_int")
        before += codes_h.numel() * codes_h.element_size()
        wp, ties = compact_codes(codes_h, high, keep_t, config.rounding)
        if not exact:
            ties = None
        tensors[f"{name}.weight_packed"] = pack_bits(wp, p)
        after += tensors[f"{name}.weight_packed"].numel()
        if ties is not None:
            tensors[f"{name}.weight_ties"] = pack_bits(ties + 1, 2, signed=False)
            after += tensors[f"{name}.weight_ties"].numel()
        packing[name] = {"shape": list(codes_h.shape), "bits": p, "ties": ties is not None}
    # BatchNorms of removed bit-widths are dead weight on this device
    for name, m in model.named_modules():
        if isinstance(m, SwitchableBatchNorm):
            for b in m.bits:
                if b not in keep_t:
                    for k in [k for k in tensors if k.startswith(f"{name}.bn.{b}.")]:
                        del tensors[k]
    precision = {}
    for k, (w, a) in get_precision(model).items():
        precision[k] = [w if w in keep_t else p, None if layers[k].weight_only else a if a is not None else config.act_bits[0]]
    new_config = dataclasses.replace(config, bits=keep_t, act_asymmetric=False)
    metadata = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "storage": STORAGE,
        "quant_config": json.dumps(new_config.to_dict()),
        "arch": json.dumps(getattr(model, "bitswitch_arch", None)),
        "precision": json.dumps(precision),
        "extra": json.dumps(extra if extra is not None else getattr(model, "bitswitch_extra", {}) or {}),
        "packing": json.dumps({"exact": exact, "layers": packing}),
    }
    if tied:
        metadata["tied"] = json.dumps(tied)
    path = container.write(path, tensors, metadata)
    return {"path": str(path), "keep": list(keep_t), "packed_bits": p, "exact": exact,
            "weight_bytes_int": before, "weight_bytes_packed": after, "file_bytes": path.stat().st_size}


def packed_entries(expected: dict[str, tuple[str, tuple[int, ...]]], meta: dict[str, Any], path: Any) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The (dtype, shape) of every tensor a packed file must hold, from the model's ``expected`` ones."""
    high = meta["quant_config"]["storage_bits"]
    out = dict(expected)
    for name, info in meta["packing"]["layers"].items():
        key = f"{name}.weight_int"
        if key not in out:
            raise CheckpointError(f"{path}: metadata packing.layers.{name}: not an integer-coded layer of the model")
        _, shape = out.pop(key)
        if list(shape) != info["shape"] or info["bits"] > high:
            raise CheckpointError(f"{path}: metadata packing.layers.{name}: shape {info['shape']} at {info['bits']} bits does not fit "
                                  f"the model's {list(shape)} at storage precision {high}")
        n = math.prod(shape)
        out[f"{name}.weight_packed"] = ("U8", (math.ceil(n * info["bits"] / 8),))
        if info["ties"]:
            out[f"{name}.weight_ties"] = ("U8", (math.ceil(n * 2 / 8),))
    return out


def expand_packed(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Any) -> dict[str, torch.Tensor]:
    """Called by :func:`bitswitch.load` after :func:`packed_entries` matched: turn packed codes into ``weight_int``."""
    high = meta["quant_config"]["storage_bits"]
    out = dict(tensors)
    for name, info in meta["packing"]["layers"].items():
        shape, p = info["shape"], info["bits"]
        n = math.prod(shape)
        wp = unpack_bits(out.pop(f"{name}.weight_packed"), p, n)
        ties = unpack_bits(out.pop(f"{name}.weight_ties"), 2, n, signed=False) - 1 if info["ties"] else None
        try:
            out[f"{name}.weight_int"] = expand_codes(wp, ties, high, p).reshape(shape)
        except ValueError as e:
            raise CheckpointError(f"{path}: tensor {name}.weight_packed: {e}") from None
    return out


@torch.no_grad()
def verify_compact(model: nn.Module, path: str | os.PathLike, keep: Sequence[int], *, input_shape: Sequence[int] | None = None,
                   inputs: torch.Tensor | None = None) -> dict[str, Any]:
    """Reload ``path`` and compare with ``model`` at every kept bit-width (codes and outputs).

    Returns per bit-width the number of weight codes that differ and whether the outputs are
    bit-identical (``torch.equal``) on ``inputs`` (or random inputs of ``input_shape``).
    """
    from .checkpoint import load

    reloaded = load(path)
    saved = get_precision(model)
    ref_layers, new_layers = quantized_layers(model), quantized_layers(reloaded)
    if inputs is None and input_shape is not None:
        inputs = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(0))
    result: dict[str, Any] = {}
    model.eval()
    try:
        for b in check_bit_list(tuple(keep)):
            diff = sum(int((ref_layers[n].weight_qparams(b)[0] != new_layers[n].weight_qparams(b)[0]).sum()) for n in ref_layers)
            row: dict[str, Any] = {"codes_differing": diff}
            if inputs is not None:
                set_precision(model, b)
                set_precision(reloaded, b)
                row["outputs_bit_identical"] = bool(torch.equal(model(inputs), reloaded(inputs)))
            result[str(b)] = row
    finally:
        set_precision(model, {k: (w, a) if w is not None else None for k, (w, a) in saved.items()})
    return result


__all__ = ["compact_codes", "expand_codes", "expand_packed", "pack_bits", "packed_entries", "save_compact", "unpack_bits", "verify_compact"]
