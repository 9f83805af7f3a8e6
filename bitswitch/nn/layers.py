"""Quantized Conv2d / Linear: the torch layer plus two child quantizers.

The layers subclass the torch layers so ``in_channels``, ``stride``, ``bias`` and friends keep their
names. A layer is in one of two storage modes:

* **latent** (training): ``weight`` is the FP32 latent parameter, quantized on the fly;
* **integer** (deployment, after :meth:`QuantLayer.to_integer` or :func:`bitswitch.load`): ``weight``
  is gone and the ``weight_int`` buffer holds the storage-precision codes (int8 for h=8).

The current precision ``(w_bits, a_bits)`` is plain state of the layer, set only through
:func:`bitswitch.set_precision`, which validates it. ``None`` means full precision (latent mode
only; used for calibration and FP32 reference runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.activation import ActivationQuantizer
from ..quant.functional import weight_codes
from ..quant.grid import requantize_int, storage_dtype
from ..quant.weight import WEIGHT_QUANTIZERS


class QuantLayer:
    """Mixin with everything Conv2d and Linear share."""

    weight_quant: nn.Module
    act_quant: ActivationQuantizer
    w_bits: int | None
    a_bits: int | None

    def _init_quant(self, bits: tuple[int, ...], act_bits: tuple[int, ...], storage_bits: int | None, rounding: str, variant: str, act_asymmetric: bool = False) -> None:
        if variant not in WEIGHT_QUANTIZERS:
            raise ValueError(f"unknown weight quantizer variant {variant!r}; valid: {', '.join(WEIGHT_QUANTIZERS)}")
        out_channels = self.weight.shape[0]  # type: ignore[attr-defined]
        self.weight_quant = WEIGHT_QUANTIZERS[variant](out_channels, bits, storage_bits, rounding)
        self.act_quant = ActivationQuantizer(act_bits, asymmetric=act_asymmetric)
        self.w_bits = self.weight_quant.bits[0]
        self.a_bits = self.act_quant.bits[0]

    @property
    def is_integer(self) -> bool:
        return "weight_int" in self._buffers  # type: ignore[attr-defined]

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer computes with at its current precision."""
        if self.is_integer:
            return self.weight_quant.dequantize(self.weight_int, self.w_bits)  # type: ignore[attr-defined]
        if self.w_bits is None:
            return self.weight  # type: ignore[attr-defined]
        return self.weight_quant(self.weight, self.w_bits)  # type: ignore[attr-defined]

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.a_bits is None else self.act_quant(x, self.a_bits)

    def integer_codes(self) -> torch.Tensor:
        """Storage-precision codes of the weight, whatever the storage mode."""
        if self.is_integer:
            return self.weight_int  # type: ignore[attr-defined]
        if not getattr(self.weight_quant, "shared_scale", False):
            raise ValueError("the unshared-scale variant keeps FP32 weights and has no integer codes")
        return self.weight_quant.codes(self.weight)  # type: ignore[attr-defined]

    @torch.no_grad()
    def weight_qparams(self, bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes, step)`` at ``bits`` (default: current): ``effective_weight == codes * step``.

        ``codes`` is an integer tensor on the ``bits``-bit grid, ``step`` the per-output-channel
        float step. This is the one place export and integer kernels read weights from.
        """
        bits = self.w_bits if bits is None else bits
        if bits is None:
            raise ValueError("layer is in full precision; pass a bit-width")
        self.weight_quant.check(bits)
        wq = self.weight_quant
        if getattr(wq, "shared_scale", False):
            codes = requantize_int(self.integer_codes(), wq.storage_bits, bits, wq.rounding)
            return codes, wq.scale.detach() * 2.0 ** (wq.storage_bits - bits)
        scale = wq.scales[str(bits)].detach()
        return weight_codes(self.weight, scale, bits).to(storage_dtype(bits)), scale  # type: ignore[attr-defined]

    @torch.no_grad()
    def to_integer(self) -> None:
        """Drop the FP32 latent weight and keep only the integer codes (deployment form)."""
        if self.is_integer:
            return
        codes = self.integer_codes()
        del self.weight  # type: ignore[attr-defined]
        self.register_buffer("weight_int", codes)  # type: ignore[attr-defined]
        if self.w_bits is None:
            self.w_bits = self.weight_quant.bits[0]

    @property
    def weight_shape(self) -> torch.Size:
        return self.weight_int.shape if self.is_integer else self.weight.shape  # type: ignore[attr-defined]

    def precision_repr(self) -> str:
        fmt = lambda b: "fp" if b is None else str(b)  # noqa: E731
        return f"W{fmt(self.w_bits)}A{fmt(self.a_bits)}"


class QuantConv2d(QuantLayer, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits, act_bits, storage_bits=None, rounding="half_even", variant="shared", act_asymmetric=False) -> "QuantConv2d":
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported for quantized convolutions (only 'zeros')")
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            q.weight.copy_(conv.weight)
            if conv.bias is not None:
                q.bias.copy_(conv.bias)
        q._init_quant(bits, act_bits, storage_bits, rounding, variant, act_asymmetric)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.quantize_input(x), self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, {self.precision_repr()}"


class QuantLinear(QuantLayer, nn.Linear):
    @classmethod
    def from_float(cls, linear: nn.Linear, bits, act_bits, storage_bits=None, rounding="half_even", variant="shared", act_asymmetric=False) -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            q.weight.copy_(linear.weight)
            if linear.bias is not None:
                q.bias.copy_(linear.bias)
        q._init_quant(bits, act_bits, storage_bits, rounding, variant, act_asymmetric)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.precision_repr()}"


QUANT_TYPES: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
