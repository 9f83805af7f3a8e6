"""Switchable BatchNorm: one BatchNorm per bit-width.

Statistics of a layer's output differ by precision, so each bit-width gets its own affine
parameters and running statistics. The active one is chosen by :func:`bitswitch.set_precision`
(from the weight bit-width of the layer that produces the BatchNorm's input); a bit-width the
BatchNorm was not built for raises instead of silently falling back to another one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class SwitchableBatchNorm(nn.Module):
    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, bits: tuple[int, ...], source: str = ""):
        super().__init__()
        self.bits = tuple(bits)
        self.bn = nn.ModuleDict({str(b): copy.deepcopy(bn) for b in self.bits})
        self.active_bits: int = self.bits[0]
        #: name of the quantized layer whose output this BatchNorm normalises
        self.source = source

    def activate(self, bits: int | None) -> None:
        bits = self.bits[0] if bits is None else bits
        if bits not in self.bits:
            raise ValueError(f"BatchNorm has no statistics for {bits} bits; valid: {list(self.bits)}")
        self.active_bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn[str(self.active_bits)](x)

    def extra_repr(self) -> str:
        return f"bits={list(self.bits)}, active={self.active_bits}, source={self.source!r}"
