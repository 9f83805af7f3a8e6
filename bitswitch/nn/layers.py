"""Quantized Conv1d / Conv2d / Linear / Embedding: the torch layer plus two child quantizers.

The layers subclass the torch layers so ``in_channels``, ``stride``, ``bias`` and friends keep their
names. A layer is in one of two storage modes:

* **latent** (training): ``weight`` is the FP32 latent parameter, quantized on the fly;
* **integer** (deployment, after :meth:`QuantLayer.to_integer` or :func:`bitswitch.load`): ``weight``
  is gone and the ``weight_int`` buffer holds the storage-precision codes (int8 for h=8).

The current precision ``(w_bits, a_bits)`` is plain state of the layer, set only through
:func:`bitswitch.set_precision`, which validates it. ``None`` means full precision (latent mode
only; used for calibration and FP32 reference runs). A **weight-only** layer (every
``QuantEmbedding``, and any layer converted through ``weight_only=``) reads its input unquantized:
its ``a_bits`` is always ``None``; it keeps an (unused) ``act_quant`` so every quantized layer
exposes the same attributes.

``from_float`` reuses the float layer's ``weight`` and ``bias`` Parameters (it does not copy them),
so a weight tied to another module (a language model's head and its token embedding) stays one
tensor that training updates once.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.activation import ActivationQuantizer
from ..quant.functional import weight_codes
from ..quant.grid import requantize_int, storage_dtype
from ..quant.weight import WEIGHT_QUANTIZERS


class QuantLayer:
    """Mixin with everything the quantized layers share (per-output-channel scales on axis 0)."""

    weight_quant: nn.Module
    act_quant: ActivationQuantizer
    w_bits: int | None
    a_bits: int | None
    weight_only: bool = False

    def _init_quant(self, bits: tuple[int, ...], act_bits: tuple[int, ...], storage_bits: int | None, rounding: str, variant: str,
                    act_asymmetric: bool = False, weight_only: bool = False) -> None:
        if variant not in WEIGHT_QUANTIZERS:
            raise ValueError(f"unknown weight quantizer variant {variant!r}; valid: {', '.join(WEIGHT_QUANTIZERS)}")
        out_channels = self.weight.shape[0]  # type: ignore[attr-defined]
        device = self.weight.device  # type: ignore[attr-defined]
        self.weight_quant = WEIGHT_QUANTIZERS[variant](out_channels, bits, storage_bits, rounding)
        self.act_quant = ActivationQuantizer(act_bits, asymmetric=act_asymmetric)
        if device.type != "meta":  # a meta skeleton (checkpoint checks) builds its quantizers on meta already
            self.weight_quant.to(device)
            self.act_quant.to(device)
        self.weight_only = bool(weight_only)
        self.w_bits = self.weight_quant.bits[0]
        self.a_bits = None if self.weight_only else self.act_quant.bits[0]

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
    def to_integer(self, codes: torch.Tensor | None = None) -> None:
        """Drop the FP32 latent weight and keep only the integer codes (deployment form).

        ``codes``: the codes to keep, when another layer tied to this one already computed them
        (:func:`bitswitch.nn.convert.to_integer` passes them so tied layers share one buffer).
        """
        if self.is_integer:
            return
        codes = self.integer_codes() if codes is None else codes
        del self.weight  # type: ignore[attr-defined]
        self.register_buffer("weight_int", codes)  # type: ignore[attr-defined]
        if self.w_bits is None:
            self.w_bits = self.weight_quant.bits[0]

    @property
    def weight_shape(self) -> torch.Size:
        return self.weight_int.shape if self.is_integer else self.weight.shape  # type: ignore[attr-defined]

    def precision_repr(self) -> str:
        fmt = lambda b: "fp" if b is None else str(b)  # noqa: E731
        return f"W{fmt(self.w_bits)}A{fmt(self.a_bits)}" + (" weight-only" if self.weight_only else "")

    def _adopt(self, layer: nn.Module, quant: tuple) -> None:
        """Take over ``layer``'s own Parameters (ties survive) and build the quantizers."""
        self.weight = layer.weight  # type: ignore[attr-defined]
        if hasattr(layer, "bias"):
            self.bias = layer.bias  # type: ignore[attr-defined]
        self._init_quant(*quant)


class _QuantConv(QuantLayer):
    @classmethod
    def from_float(cls, conv: nn.modules.conv._ConvNd, bits, act_bits, storage_bits=None, rounding="half_even", variant="shared",
                   act_asymmetric=False, weight_only=False):
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported for quantized convolutions (only 'zeros')")
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                conv.bias is not None, device="meta", dtype=conv.weight.dtype)
        q._adopt(conv, (bits, act_bits, storage_bits, rounding, variant, act_asymmetric, weight_only))
        return q

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, {self.precision_repr()}"  # type: ignore[attr-defined]


class QuantConv1d(_QuantConv, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(self.quantize_input(x), self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class QuantConv2d(_QuantConv, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.quantize_input(x), self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class QuantLinear(QuantLayer, nn.Linear):
    @classmethod
    def from_float(cls, linear: nn.Linear, bits, act_bits, storage_bits=None, rounding="half_even", variant="shared",
                   act_asymmetric=False, weight_only=False) -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta", dtype=linear.weight.dtype)
        q._adopt(linear, (bits, act_bits, storage_bits, rounding, variant, act_asymmetric, weight_only))
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.precision_repr()}"


class QuantEmbedding(QuantLayer, nn.Embedding):
    """Weight-only embedding table: one scale per row (token), the lookup reads unquantized ids."""

    @classmethod
    def from_float(cls, emb: nn.Embedding, bits, act_bits, storage_bits=None, rounding="half_even", variant="shared",
                   act_asymmetric=False, weight_only=True) -> "QuantEmbedding":
        if emb.max_norm is not None:
            raise ValueError("nn.Embedding with max_norm rescales its weight in place and cannot be quantized")
        q = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, None, emb.norm_type, emb.scale_grad_by_freq, emb.sparse,
                device="meta", dtype=emb.weight.dtype)
        q._adopt(emb, (bits, act_bits, storage_bits, rounding, variant, act_asymmetric, True))
        return q

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.effective_weight(), self.padding_idx, None, self.norm_type, self.scale_grad_by_freq, self.sparse)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.precision_repr()}"


def hf_conv1d_type() -> type[nn.Module] | None:
    """``transformers.pytorch_utils.Conv1D`` if transformers is already imported (never imports it)."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


def linear_from_hf_conv1d(conv: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` computing what a Hugging Face ``Conv1D`` computes (its weight is ``[in, out]``:
    output channels on axis 1), with the weight transposed to ``[out, in]`` so scales are per output."""
    n_in, n_out = conv.weight.shape  # type: ignore[union-attr]
    linear = nn.Linear(n_in, n_out, conv.bias is not None, device="meta", dtype=conv.weight.dtype)  # type: ignore[union-attr]
    linear.weight = nn.Parameter(conv.weight.detach().t().contiguous(), requires_grad=conv.weight.requires_grad)  # type: ignore[union-attr]
    linear.bias = conv.bias  # type: ignore[assignment]
    return linear


def quant_type(module: nn.Module) -> type[QuantLayer] | None:
    """The quantized layer class ``module`` converts to (by ``isinstance``), or None."""
    if isinstance(module, QuantLayer):
        return None
    if isinstance(module, nn.Embedding):
        return QuantEmbedding
    if isinstance(module, nn.Linear):
        return QuantLinear
    if isinstance(module, nn.Conv2d):
        return QuantConv2d
    if isinstance(module, nn.Conv1d):
        return QuantConv1d
    conv1d = hf_conv1d_type()
    if conv1d is not None and isinstance(module, conv1d):
        return QuantLinear
    return None


def to_quantized(module: nn.Module, bits, act_bits, storage_bits, rounding, variant, act_asymmetric, weight_only) -> QuantLayer:
    """Convert one float layer (:func:`quant_type` says to what)."""
    qtype = quant_type(module)
    if qtype is None:
        raise ValueError(f"{type(module).__name__} cannot be quantized")
    if qtype is QuantLinear and not isinstance(module, nn.Linear):
        module = linear_from_hf_conv1d(module)
    q = qtype.from_float(module, bits, act_bits, storage_bits, rounding, variant, act_asymmetric, weight_only)  # type: ignore[attr-defined]
    return q.train(module.training)


__all__ = ["QuantConv1d", "QuantConv2d", "QuantEmbedding", "QuantLayer", "QuantLinear", "hf_conv1d_type", "quant_type", "to_quantized"]
