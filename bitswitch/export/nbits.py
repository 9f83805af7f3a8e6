"""Weight-only linear layers as onnxruntime's ``com.microsoft::MatMulNBits``: real 2/4/8-bit kernels.

A weight-only layer's weight is ``codes * step`` with signed ``b``-bit codes and one step per output
channel (:meth:`~bitswitch.nn.layers.QuantLayer.weight_qparams`, the Double Rounding of the stored
int8 codes). ``MatMulNBits`` computes ``A @ ((B - zero_point) * scale)^T`` with unsigned codes ``B``
quantized blockwise along the input dimension ``K``. The per-channel grid is that exactly: the
channel's step in every block of its row, the codes shifted to unsigned by ``2^(b-1)``, which is the
op's default zero point (so none is stored), and the last block's padding at the zero point (value 0).
onnxruntime 1.32's CPU kernel takes 2, 4 and 8 bits; a 3-bit grid is a subset of the 4-bit one, so
``b`` bits are written in the smallest of those that holds them (:func:`kernel_bits`).

Codes are packed low bits first along ``K`` inside each block: for 4 bits the byte holds
``c0 | c1 << 4``, for 2 bits ``c0 | c1 << 2 | c2 << 4 | c3 << 6`` (the op's spec). ``accuracy_level``
4 lets the kernel quantize the input ``A`` to int8 per block and compute in integers (the fast
path; not exact), 0 computes in float32 (exact up to the summation order, but onnxruntime has fast
float kernels only for 4 bits).

:func:`rewrite_nbits` re-writes the weights of an exported file at another precision without
re-exporting: the float part of the graph does not depend on the bit-width, and re-packing codes is
milliseconds where ``torch.onnx`` takes many seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write_bytes
from .onnx_graph import require_onnx

NBITS_DOMAIN = "com.microsoft"
NBITS_OP = "MatMulNBits"
#: weight bit-widths onnxruntime's CPU ``MatMulNBits`` kernel takes
KERNEL_BITS = (2, 4, 8)
#: ``accuracy_level`` values of the op: 0 unset (float32 compute), 1 fp32, 2 fp16, 3 bf16, 4 int8
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
DEFAULT_ACCURACY_LEVEL = 4
#: the longest block along K (one scale per block): 128 costs 0.25 bit per weight in float32 scales
DEFAULT_BLOCK_SIZE = 128
#: default verification tolerances of files with ``MatMulNBits`` layers at accuracy level 4: onnxruntime
#: rounds each layer's input to int8 per block (~0.5 % of a layer's output range), which on the trained
#: joint char_llama moved the logits by up to 2.1 output steps (max|y|/127) and flipped 0.5-0.9 % of
#: next-token answers, near ties (``benchmarks/results/lm_deploy_trained.md``; up to 2.9 steps on the
#: FP32 model rounded to nearest); a file at another precision than the model's is 10+ steps off.
#: Level 0 (float compute) is exact and keeps the QDQ defaults.
INT8_COMPUTE_MIN_TOP1 = 0.98
INT8_COMPUTE_MAX_STEPS = 4.0
#: ``metadata_props`` key of a ``MatMulNBits`` node naming the model layer it computes
LAYER_KEY = "bitswitch.layer"


def kernel_bits(bits: int) -> int:
    """The smallest bit-width of :data:`KERNEL_BITS` whose grid holds the ``bits``-bit grid."""
    for k in KERNEL_BITS:
        if bits <= k:
            return k
    raise ValueError(f"MatMulNBits takes at most {KERNEL_BITS[-1]}-bit weights (onnxruntime's CPU kernel: {', '.join(map(str, KERNEL_BITS))} bits); "
                     f"got {bits} bits")


def check_nbits_options(accuracy_level: int, block_size: int) -> None:
    """Refuse an ``accuracy_level`` or ``block_size`` the op does not define."""
    if accuracy_level not in ACCURACY_LEVELS:
        raise ValueError(f"accuracy_level must be one of {ACCURACY_LEVELS} (4: int8 compute, 0: float), got {accuracy_level}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16 (MatMulNBits), got {block_size}")


def block_size_for(k: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """The block length for an input dimension ``k``: ``block_size``, or the smallest power of two
    (>= 16, the op's minimum) covering ``k`` when that is shorter (one block per row, less padding)."""
    check_nbits_options(DEFAULT_ACCURACY_LEVEL, block_size)
    return min(block_size, max(16, 1 << (int(k) - 1).bit_length()))


def pack_codes(codes: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """Signed codes ``(N, K)`` on a ``<= bits``-bit grid as ``MatMulNBits`` input ``B``: uint8 of shape
    ``(N, ceil(K / block_size), block_size * bits / 8)``, shifted by the zero point ``2^(bits-1)``,
    the last block padded with the zero point, packed low bits first."""
    if bits not in KERNEL_BITS:
        raise ValueError(f"bits must be one of {KERNEL_BITS}, got {bits}")
    n, k = codes.shape
    zp = 1 << (bits - 1)
    if codes.size and (codes.min() < -zp or codes.max() >= zp):
        raise ValueError(f"codes in [{codes.min()}, {codes.max()}] do not fit a signed {bits}-bit grid")
    blocks = -(-k // block_size)
    unsigned = np.full((n, blocks * block_size), zp, np.uint8)
    unsigned[:, :k] = codes + zp
    per_byte = 8 // bits
    groups = unsigned.reshape(n, blocks, block_size // per_byte, per_byte)
    packed = np.zeros(groups.shape[:3], np.uint8)
    for i in range(per_byte):
        packed |= groups[..., i] << np.uint8(bits * i)
    return packed


@dataclass
class NBitsWeight:
    """One layer's ``MatMulNBits`` inputs and attributes."""

    packed: np.ndarray  # uint8 (N, blocks, blob)
    scales: np.ndarray  # float32 (N, blocks): each channel's step in all its blocks
    bits: int  # the kernel's bit-width (>= the layer's)
    block_size: int
    k: int
    n: int


def nbits_weight(codes: torch.Tensor, step: torch.Tensor, bits: int, block_size: int = DEFAULT_BLOCK_SIZE) -> NBitsWeight:
    """The ``MatMulNBits`` form of a linear weight ``codes * step`` (``(N, K)`` signed ``bits``-bit codes,
    ``(N,)`` steps), exact: the same step in every block of a row."""
    n, k = codes.shape
    kb = kernel_bits(bits)
    block = block_size_for(k, block_size)
    packed = pack_codes(codes.to(torch.int64).numpy(), kb, block)
    scales = np.repeat(step.detach().to(torch.float32).reshape(n, 1).numpy(), packed.shape[1], axis=1)
    return NBitsWeight(packed, np.ascontiguousarray(scales), kb, block, int(k), int(n))


def layer_nbits_weight(layer: nn.Module, block_size: int = DEFAULT_BLOCK_SIZE) -> NBitsWeight:
    """A weight-only quantized ``nn.Linear`` at its current precision as :class:`NBitsWeight`."""
    bits = getattr(layer, "w_bits", None)
    if bits is None:
        raise ValueError(f"{type(layer).__name__} has no weight precision set")
    codes, step = layer.weight_qparams(bits)  # type: ignore[operator]
    return nbits_weight(codes, step, bits, block_size)


def nbits_attrs(w: NBitsWeight, accuracy_level: int) -> dict[str, int]:
    """The node attributes of :class:`NBitsWeight` ``w``."""
    check_nbits_options(accuracy_level, w.block_size)
    return {"K": w.k, "N": w.n, "bits": w.bits, "block_size": w.block_size, "accuracy_level": accuracy_level}


def rewrite_nbits(model: nn.Module, source: str | os.PathLike, path: str | os.PathLike, accuracy_level: int | None = None) -> dict[str, int]:
    """Write ``source`` (a file exported from ``model`` with weight-only ``MatMulNBits`` layers, at any
    precision) to ``path`` with every ``MatMulNBits`` weight at ``model``'s current precision.

    Only the packed codes, scales and ``bits`` change (and ``accuracy_level`` when given); the rest
    of the graph is the source's, so the source must come from this model (verify the result, as
    ``bitswitch export`` does). Returns ``{layer name: kernel bits}``.
    """
    onnx = require_onnx()
    proto = onnx.load(str(source))
    modules = dict(model.named_modules())
    inits = {t.name: t for t in proto.graph.initializer}
    written: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type != NBITS_OP or node.domain != NBITS_DOMAIN:
            continue
        name = next((p.value for p in node.metadata_props if p.key == LAYER_KEY), None)
        layer = modules.get(name) if name is not None else None
        if layer is None:
            raise ValueError(f"{source}: MatMulNBits node {node.name!r} names no layer of the model ({name!r}): export the file from this model")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w = layer_nbits_weight(layer, attrs["block_size"])
        if (w.k, w.n) != (attrs["K"], attrs["N"]):
            raise ValueError(f"{source}: layer {name!r} is {w.k} -> {w.n} in the model but {attrs['K']} -> {attrs['N']} in the file")
        for value, old in ((w.packed, node.input[1]), (w.scales, node.input[2])):
            inits[old].CopyFrom(onnx.numpy_helper.from_array(value, old))
        level = attrs["accuracy_level"] if accuracy_level is None else accuracy_level
        del node.attribute[:]
        node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in nbits_attrs(w, level).items())
        written[name] = w.bits
    if not written:
        raise ValueError(f"{source} has no MatMulNBits layers: export a weight-only model first")
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(proto.SerializeToString()))
    return written


__all__ = ["ACCURACY_LEVELS", "DEFAULT_ACCURACY_LEVEL", "DEFAULT_BLOCK_SIZE", "INT8_COMPUTE_MAX_STEPS", "INT8_COMPUTE_MIN_TOP1", "KERNEL_BITS", "LAYER_KEY", "NBITS_DOMAIN", "NBITS_OP", "NBitsWeight",
           "block_size_for", "check_nbits_options", "kernel_bits", "layer_nbits_weight", "nbits_attrs", "nbits_weight", "pack_codes", "rewrite_nbits"]
