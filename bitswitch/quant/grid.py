"""Integer grids and the second rounding of Double Rounding.

Everything here is exact integer arithmetic carried in float tensors (or integer tensors): codes are
whole numbers, and dividing by a power of two is exact in binary floating point, so the same codes
come out whether they were computed during training or read back from an int8 checkpoint.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

Rounding = Literal["half_even", "half_up", "floor"]
ROUNDING_MODES: tuple[str, ...] = get_args(Rounding)

MIN_BITS = 2
MAX_BITS = 16


def check_bits(bits: int, *, what: str = "bit-width") -> int:
    """Return ``bits`` as an int or raise ``ValueError`` for anything outside 2..16."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(f"{what} must be an integer, got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be between {MIN_BITS} and {MAX_BITS}, got {bits}")
    return bits


def check_bit_list(bits: tuple[int, ...] | list[int], *, what: str = "bits") -> tuple[int, ...]:
    """Validate a bit list and return it sorted from highest to lowest.

    Empty, repeated or out-of-range lists raise ``ValueError``; order is normalised, since training
    always visits the highest precision first.
    """
    if isinstance(bits, int):
        bits = (bits,)
    bits = tuple(bits)
    if not bits:
        raise ValueError(f"{what} must not be empty")
    for b in bits:
        check_bits(b, what=f"each entry of {what}")
    if len(set(bits)) != len(bits):
        raise ValueError(f"{what} contains repeated bit-widths: {list(bits)}")
    return tuple(sorted(bits, reverse=True))


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode {rounding!r}; valid modes: {', '.join(ROUNDING_MODES)}")
    return rounding


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest code of a ``bits``-bit grid (two's complement when signed)."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def storage_dtype(bits: int) -> torch.dtype:
    """The narrowest torch integer dtype that holds signed ``bits``-bit codes."""
    return torch.int8 if bits <= 8 else torch.int16


def round_with(x: torch.Tensor, rounding: str) -> torch.Tensor:
    """Round a tensor of multiples of 2^-k with the named mode."""
    if rounding == "half_even":
        return torch.round(x)
    if rounding == "half_up":
        return torch.floor(x + 0.5)
    if rounding == "floor":
        return torch.floor(x)
    raise ValueError(f"unknown rounding mode {rounding!r}; valid modes: {', '.join(ROUNDING_MODES)}")


def requantize(codes: torch.Tensor, high: int, low: int, rounding: str = "half_even") -> torch.Tensor:
    """The second rounding: ``clip(round(W_h / 2^(h-b)))`` from integer codes only.

    ``codes`` may be an integer or a float tensor holding whole numbers; the result is float32 (or the
    input's float dtype) holding the ``low``-bit codes. ``half_up`` equals the hardware right shift
    ``(W_h + 2^(Δ-1)) >> Δ``; ``floor`` is the plain shift ``W_h >> Δ`` used by AdaBits-style switching.
    """
    if low > high:
        raise ValueError(f"cannot requantize {high}-bit codes to a higher precision ({low} bits)")
    x = codes if codes.is_floating_point() else codes.to(torch.float32)
    lo, hi = int_range(low, signed=True)
    if low == high:
        return x.clamp(lo, hi)
    return round_with(x * (2.0 ** (low - high)), rounding).clamp_(lo, hi)


def requantize_int(codes: torch.Tensor, high: int, low: int, rounding: str = "half_even") -> torch.Tensor:
    """Integer-in, integer-out version of :func:`requantize` (for storage and export)."""
    return requantize(codes, high, low, rounding).to(storage_dtype(low))
