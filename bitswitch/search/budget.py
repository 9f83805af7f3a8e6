"""Budgets for subnet search: parse ``"avg-bits=3"``, ``"bytes=1.2e5"``, ``"bops=0.5"`` and friends.

A budget is one upper bound on one cost of the quantized layers (full-precision layers are outside
every budget):

* ``avg-bits=B``: plain mean of weight bits over quantized layers ``Σ_l b_l / L <= B``;
* ``wavg-bits=B``: parameter-weighted mean ``Σ_l n_l·b_l / Σ_l n_l <= B``;
* ``bytes=X``: ``Σ_l n_l·b_l / 8 <= X`` (quantized weights only); relative forms are fractions of
  the all-8-bit size;
* ``bops=X``: ``Σ_l MAC_l·b_w,l·b_a,l <= X``; relative forms are fractions of all-W8A8 (default) or
  all-W8A16 (``bops=0.5@w8a16``).

A value is relative when it ends in ``x`` or ``%`` (``bops=0.5x``, ``bops=50%``) or, for bytes and
BOPs, when it is at most 1 (no real model fits in one byte or one BOP, so ``bops=0.5`` cannot mean
anything else).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..cost import REFERENCES

KINDS = ("avg-bits", "wavg-bits", "bytes", "bops")
_ALIASES = {"avg_bits": "avg-bits", "avgbits": "avg-bits", "bits": "avg-bits", "wavg_bits": "wavg-bits", "size": "bytes", "bop": "bops"}
_PATTERN = re.compile(r"^\s*([A-Za-z_-]+)\s*=\s*([0-9.eE+-]+)\s*(x|%)?\s*(?:@\s*([A-Za-z0-9]+))?\s*$")


@dataclass(frozen=True)
class Budget:
    """An upper bound on one cost; ``relative`` values are fractions of ``reference``'s cost."""

    kind: str
    value: float
    relative: bool = False
    reference: str = "w8a8"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown budget kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if not math.isfinite(self.value) or self.value <= 0:
            raise ValueError(f"budget {self.kind} must be a positive number, got {self.value}")
        if self.relative and self.kind not in ("bytes", "bops"):
            raise ValueError(f"only bytes and bops budgets can be relative, not {self.kind}")
        if self.reference not in REFERENCES:
            raise ValueError(f"unknown budget reference {self.reference!r}; valid: {', '.join(REFERENCES)}")
        if self.reference != "w8a8" and self.kind != "bops":
            raise ValueError(f"a reference precision ({self.reference}) only applies to bops budgets")

    def describe(self, value: float | None = None) -> str:
        """The budget as a string :func:`parse_budget` reads back (optionally with another value)."""
        v = self.value if value is None else value
        text = f"{self.kind}={v:.6g}"
        if self.relative:
            text += "x"
            if self.kind == "bops" and self.reference != "w8a8":
                text += f"@{self.reference}"
        return text

    def __str__(self) -> str:
        return self.describe()


def parse_budget(text: str) -> Budget:
    """Parse ``KIND=VALUE[x|%][@REFERENCE]``; raise ``ValueError`` with the accepted forms otherwise."""
    if isinstance(text, Budget):
        return text
    m = _PATTERN.match(str(text))
    if not m:
        raise ValueError(
            f"malformed budget {text!r}; expected KIND=VALUE with KIND one of {', '.join(KINDS)} "
            f"(e.g. avg-bits=3, bytes=1.2e5, bops=0.5, bops=50%, bops=0.5@w8a16)"
        )
    kind, raw, suffix, ref = m.groups()
    kind = kind.lower()
    kind = _ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"unknown budget kind {kind!r} in {text!r}; valid: {', '.join(KINDS)}")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"malformed budget value {raw!r} in {text!r}: not a number") from None
    if suffix == "%":
        value /= 100.0
    relative = suffix is not None or (kind in ("bytes", "bops") and value <= 1.0)
    if suffix is not None and kind not in ("bytes", "bops"):
        raise ValueError(f"{kind} budgets are absolute; drop the {suffix!r} in {text!r}")
    reference = (ref or "w8a8").lower()
    if ref is not None and kind != "bops":
        raise ValueError(f"a reference precision (@{ref}) only applies to bops budgets, not in {text!r}")
    if ref is not None and not relative:
        raise ValueError(f"@{ref} only makes sense for a relative bops budget (e.g. bops=0.5@{ref}), got {text!r}")
    return Budget(kind, value, relative, reference)


__all__ = ["KINDS", "Budget", "parse_budget"]
