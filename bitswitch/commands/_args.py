"""Argument types that refuse out-of-range values at parse time, naming the valid range.

``argparse`` prints ``argument --tol: must be a finite number > 0, got 'nan'`` and exits with code 2,
before any work starts.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

from ..quant.grid import MAX_BITS, MIN_BITS


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer in ``[lo, hi]`` (``hi=None``: no upper bound)."""
    valid = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {valid}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {valid}, got {value}")
        return value

    return parse


def float_in(lo: float, hi: float = math.inf, *, lo_open: bool = False) -> Callable[[str], float]:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    valid = f"a finite number {'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi != math.inf else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {valid}, got {text!r}") from None
        if not math.isfinite(value) or value < lo or (lo_open and value == lo) or value > hi:
            raise argparse.ArgumentTypeError(f"must be {valid}, got {text!r}")
        return value

    return parse


def bit_list(text: str, option: str = "--bits") -> list[int]:
    """A comma-separated list of bit-widths, e.g. ``8,4,2`` (range checks are the model's)."""
    try:
        bits = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, e.g. 8,4,2; got {text!r}") from None
    if not bits:
        raise ValueError(f"{option} must name at least one bit-width")
    return bits


BITS = int_in(MIN_BITS, MAX_BITS)
COUNT = int_in(1)
NON_NEGATIVE = int_in(0)
#: torch threads: 0 (torch's default) up to the machine's cores
THREADS = int_in(0, os.cpu_count() or 1)
