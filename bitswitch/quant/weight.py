"""Weight quantizers: Double Rounding (shared scale, integer storage) and the unshared baseline.

A weight quantizer owns the scale(s) and turns either the latent FP32 weight (training) or the
stored integer codes (deployment) into the effective weight for a bit-width. Layers never do
quantization arithmetic themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from .functional import DoubleRoundingFn, dequantize_codes, weight_codes
from .grid import check_bit_list, check_bits, check_rounding, storage_dtype
from .ranges import init_weight_scale


def _allowed(bits: int, valid: tuple[int, ...], high: int | None = None) -> None:
    if high is not None and bits > high:
        raise ValueError(f"weight bit-width {bits} is above the storage precision h={high}; valid: {list(valid)}")
    if bits not in valid:
        raise ValueError(f"weight bit-width {bits} is not one this model was built for; valid: {list(valid)}")


class DoubleRoundingWeight(nn.Module):
    """Double Rounding: one learnable per-output-channel scale shared by every bit-width.

    ``W_h = clip(round(W/s))`` at the storage precision ``h``; lower precisions come only from
    ``W_h`` through :func:`bitswitch.quant.grid.requantize`, so a deployed model keeps the ``h``-bit
    codes and the scales and nothing else.
    """

    shared_scale = True

    def __init__(self, out_channels: int, bits: tuple[int, ...], storage_bits: int | None = None, rounding: str = "half_even"):
        super().__init__()
        self.bits = check_bit_list(bits)
        self.storage_bits = check_bits(storage_bits if storage_bits is not None else self.bits[0], what="storage_bits")
        if self.bits[0] > self.storage_bits:
            raise ValueError(f"bits {list(self.bits)} contain a bit-width above the storage precision h={self.storage_bits}")
        self.rounding = check_rounding(rounding)
        self.scale = nn.Parameter(torch.ones(out_channels))

    def check(self, bits: int) -> None:
        _allowed(bits, self.bits, self.storage_bits)

    def add_bits(self, bits: int) -> None:
        """Allow switching to an untrained ``bits`` <= ``h``: its codes derive from ``W_h`` like every other precision's."""
        if check_bits(bits) > self.storage_bits:
            raise ValueError(f"weight bit-width {bits} is above the storage precision h={self.storage_bits}: the file holds no such codes")
        self.bits = check_bit_list(tuple({*self.bits, bits}))

    @torch.no_grad()
    def init_scale(self, weight: torch.Tensor, method: str = "mse") -> None:
        self.scale.copy_(init_weight_scale(weight, self.storage_bits, self.bits, self.rounding, method))

    def forward(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        """Effective weight at ``bits`` from the latent FP32 weight (differentiable)."""
        return DoubleRoundingFn.apply(weight, self.scale, self.storage_bits, bits, self.rounding)

    @torch.no_grad()
    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The stored integer codes ``W_h`` (int8 for h <= 8)."""
        return weight_codes(weight, self.scale, self.storage_bits).to(storage_dtype(self.storage_bits))

    def dequantize(self, codes: torch.Tensor, bits: int) -> torch.Tensor:
        """Effective weight at ``bits`` from stored codes: same arithmetic as :meth:`forward`."""
        return dequantize_codes(codes.to(self.scale.dtype), self.scale, self.storage_bits, bits, self.rounding)

    def extra_repr(self) -> str:
        return f"bits={list(self.bits)}, h={self.storage_bits}, rounding={self.rounding}"


class UnsharedWeight(nn.Module):
    """Baseline: a separate per-channel LSQ scale per bit-width on FP32 latent weights.

    Lower precisions do not derive from stored integers, so this variant must keep FP32 weights in
    its checkpoints; it exists to measure what sharing the scale costs or saves.
    """

    shared_scale = False

    def __init__(self, out_channels: int, bits: tuple[int, ...], storage_bits: int | None = None, rounding: str = "half_even"):
        super().__init__()
        self.bits = check_bit_list(bits)
        self.storage_bits = self.bits[0]
        self.rounding = check_rounding(rounding)
        self.scales = nn.ParameterDict({str(b): nn.Parameter(torch.ones(out_channels)) for b in self.bits})

    def check(self, bits: int) -> None:
        _allowed(bits, self.bits)

    @torch.no_grad()
    def init_scale(self, weight: torch.Tensor, method: str = "mse") -> None:
        for b in self.bits:
            self.scales[str(b)].copy_(init_weight_scale(weight, b, (b,), self.rounding, method))

    def forward(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        return DoubleRoundingFn.apply(weight, self.scales[str(bits)], bits, bits, self.rounding)

    def extra_repr(self) -> str:
        return f"bits={list(self.bits)}, unshared scales"


WEIGHT_QUANTIZERS: dict[str, type[nn.Module]] = {"shared": DoubleRoundingWeight, "unshared": UnsharedWeight}
