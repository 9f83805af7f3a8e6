"""Activation quantizer: one learnable LSQ scale per bit-width.

Activations are never stored, so each precision gets its own scale at no storage cost. The sign
of the grid is decided from calibration data (a non-negative input, as after ReLU/ReLU6, gets the
unsigned grid ``[0, 2^b-1]``; anything else the signed one) unless it is given explicitly.
"""

from __future__ import annotations

import torch
from torch import nn

from .functional import LsqActivationFn, fake_quant
from .grid import check_bit_list, check_bits, int_range
from .ranges import act_scale


class ActivationQuantizer(nn.Module):
    def __init__(self, bits: tuple[int, ...], signed: bool | None = None, asymmetric: bool = False):
        super().__init__()
        self.bits = check_bit_list(bits, what="act_bits")
        self.scales = nn.ParameterDict({str(b): nn.Parameter(torch.ones(())) for b in self.bits})
        #: asymmetric grids (post-training quantization): unsigned codes ``[0, 2^b-1]`` and an integer
        #: zero point per bit-width; the symmetric (training) path never reads ``zero_points``.
        self.asymmetric = bool(asymmetric)
        if self.asymmetric:
            self.register_buffer("zero_points", torch.zeros(len(self.bits)))
        # -1: not calibrated yet; 0: unsigned; 1: signed. A buffer so it travels with checkpoints.
        self.register_buffer("signed_flag", torch.tensor(-1 if signed is None else int(signed), dtype=torch.int8))
        # Python mirror of the buffer: reading a tensor in forward() would sync and break torch.compile graphs.
        self._sign = -1 if signed is None else int(signed)
        self._zp: list[int] = [0] * len(self.bits) if self.asymmetric else []

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._sync_mirrors()

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda() replace buffers; keep the mirror honest
        out = super()._apply(fn, *args, **kwargs)
        self._sync_mirrors()
        return out

    @property
    def calibrated(self) -> bool:
        return self._sign >= 0

    @property
    def signed(self) -> bool:
        if not self.calibrated:
            raise RuntimeError(
                "activation quantizer is not calibrated: call bitswitch.calibrate(model, batches) "
                "before running the model at a quantized precision"
            )
        return bool(self._sign)

    def check(self, bits: int) -> None:
        if bits not in self.bits:
            raise ValueError(f"activation bit-width {bits} is not one this model was built for; valid: {list(self.bits)}")

    @torch.no_grad()
    def add_bits(self, bits: int) -> None:
        """A scale for an untrained ``bits``: the nearest trained bit-width's clipping range (the one above
        if any), split into the ``bits``-bit grid's steps. An approximation: nothing trained it."""
        if check_bits(bits, what="activation bit-width") in self.bits:
            return
        if self.asymmetric:
            raise ValueError("asymmetric (post-training) activation grids have a zero point per bit-width and take no new bit-width")
        above = [b for b in self.bits if b > bits]
        ref = min(above) if above else max(self.bits)
        ratio = int_range(ref, self.signed)[1] / int_range(bits, self.signed)[1]
        self.scales[str(bits)] = nn.Parameter(self.scales[str(ref)].detach() * ratio)
        self.bits = check_bit_list(tuple({*self.bits, bits}), what="act_bits")

    @torch.no_grad()
    def init_scales(self, samples: torch.Tensor, method: str = "mse", signed: bool | None = None) -> None:
        """Set the grid sign (from the sample unless given) and every per-bit scale."""
        if signed is None:
            signed = bool((samples < 0).any())
        self.signed_flag.fill_(int(signed))
        self._sign = int(signed)
        for b in self.bits:
            self.scales[str(b)].copy_(act_scale(samples, b, signed, method))

    def zero_point(self, bits: int) -> int:
        """Integer zero point of the ``bits``-bit grid (always 0 for symmetric quantizers)."""
        if not self.asymmetric:
            return 0
        return self._zp[self.bits.index(bits)]

    def _sync_mirrors(self) -> None:
        self._sign = int(self.signed_flag)
        self._zp = [int(z) for z in self.zero_points] if self.asymmetric else []

    @torch.no_grad()
    def set_range(self, bits: int, lo_value: float, hi_value: float) -> None:
        """Asymmetric grid covering ``[lo_value, hi_value]`` (widened to contain 0, zero point rounded)."""
        if not self.asymmetric:
            raise ValueError("set_range is for asymmetric activation quantizers (asymmetric=True)")
        self.check(bits)
        lo_value, hi_value = min(float(lo_value), 0.0), max(float(hi_value), 0.0)
        n = 2**bits - 1
        scale = max(hi_value - lo_value, 1e-8) / n
        zp = min(max(round(-lo_value / scale), 0), n)
        self.scales[str(bits)].fill_(scale)
        self.zero_points[self.bits.index(bits)] = float(zp)
        self.signed_flag.fill_(0)
        self._sync_mirrors()

    def qparams(self, bits: int) -> tuple[torch.Tensor, int, int, int]:
        """``(scale, zero_point, lo, hi)`` of the ``bits``-bit grid: what export and kernels read.

        ``x ≈ (q - zero_point) · scale`` with ``lo <= q <= hi``.
        """
        self.check(bits)
        lo, hi = int_range(bits, self.signed)
        return self.scales[str(bits)].detach(), self.zero_point(bits), lo, hi

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        lo, hi = int_range(bits, self.signed)
        if self.asymmetric:
            # Same arithmetic on a shifted grid: clip(round(x/s), lo-z, hi-z)·s == (q - z)·s.
            zp = self.zero_point(bits)
            lo, hi = lo - zp, hi - zp
        scale = self.scales[str(bits)]
        if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
            return LsqActivationFn.apply(x, scale, lo, hi)
        return fake_quant(x, scale, lo, hi)

    def extra_repr(self) -> str:
        sign = "uncalibrated" if not self.calibrated else ("signed" if self.signed else "unsigned")
        return f"bits={list(self.bits)}, {sign}" + (", asymmetric" if self.asymmetric else "")
