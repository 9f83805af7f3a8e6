"""Fused fake-quantization ops with straight-through and LSQ gradients.

Both ops are ``torch.autograd.Function`` s so that the forward pass is a handful of element-wise
kernels and the backward pass recomputes what it needs from the saved input, instead of autograd
keeping every intermediate of ``round``/``clamp``/``mul``. The forward arithmetic is shared with the
integer (deployment) path in :mod:`bitswitch.quant.weight`, which is what makes a model rebuilt from
an integer checkpoint bit-identical to the training-time model.
"""

from __future__ import annotations

import math

import torch

from .grid import int_range, requantize


def channel_view(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-output-channel scale (C,) to broadcast against a weight of ``ndim`` dims."""
    return scale.reshape((-1,) + (1,) * (ndim - 1))


def weight_codes(weight: torch.Tensor, scale: torch.Tensor, high: int) -> torch.Tensor:
    """First rounding: ``W_h = clip(round(W / s), -2^(h-1), 2^(h-1)-1)`` (float tensor of integers)."""
    lo, hi = int_range(high, signed=True)
    return torch.round(weight / channel_view(scale, weight.dim())).clamp_(lo, hi)


def dequantize_codes(codes_high: torch.Tensor, scale: torch.Tensor, high: int, low: int, rounding: str) -> torch.Tensor:
    """``Ŵ_b = clip(round(W_h / 2^Δ)) · s · 2^Δ``: the effective weight at ``low`` bits."""
    step = channel_view(scale, codes_high.dim()) * (2.0 ** (high - low))
    return requantize(codes_high, high, low, rounding) * step


class DoubleRoundingFn(torch.autograd.Function):
    """Fake-quantize a weight at ``low`` bits through its ``high``-bit codes.

    Backward: straight-through for the weight inside the ``low``-bit clip range, and a per-channel
    LSQ gradient for the shared scale, i.e. the LSQ gradient of the effective step ``s·2^Δ``
    chained to ``s``. With ``high == low`` this is plain per-channel LSQ.
    """

    @staticmethod
    def forward(ctx, weight, scale, high: int, low: int, rounding: str):  # type: ignore[override]
        codes = weight_codes(weight, scale, high)
        ctx.save_for_backward(weight, scale)
        ctx.high, ctx.low = high, low
        return dequantize_codes(codes, scale, high, low, rounding)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        weight, scale = ctx.saved_tensors
        high, low = ctx.high, ctx.low
        factor = 2.0 ** (high - low)
        step = channel_view(scale, weight.dim()) * factor
        x = weight / step
        lo, hi = int_range(low, signed=True)
        inside = (x >= lo) & (x <= hi)
        grad_w = grad * inside
        # d(Ŵ)/d(step) = round(x) - x inside the range, the clip bound outside (LSQ).
        q = torch.round(x).clamp_(lo, hi)
        per_elem = grad * torch.where(inside, q - x, q)
        n_per_channel = weight[0].numel()
        grad_scale = factor / math.sqrt(n_per_channel * hi)
        grad_s = per_elem.reshape(weight.shape[0], -1).sum(1) * grad_scale
        return grad_w, grad_s.reshape(scale.shape), None, None, None


class LsqActivationFn(torch.autograd.Function):
    """Fake-quantize an activation with one learnable scalar scale (LSQ).

    ``q = clip(round(x / s), lo, hi) · s``; gradient straight-through inside ``[lo, hi]`` and the LSQ
    scale gradient with scale ``1 / sqrt(numel · p)``.
    """

    @staticmethod
    def forward(ctx, x, scale, lo: int, hi: int):  # type: ignore[override]
        ctx.save_for_backward(x, scale)
        ctx.lo, ctx.hi = lo, hi
        return _KERNELS.act_forward(x, scale, lo, hi)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, scale = ctx.saved_tensors
        grad_x, grad_s = _KERNELS.act_backward(grad, x, scale, ctx.lo, ctx.hi)
        return grad_x, (grad_s / math.sqrt(x.numel() * ctx.hi)).reshape(scale.shape), None, None


def fake_quant(x: torch.Tensor, scale: torch.Tensor, lo: int | torch.Tensor, hi: int | torch.Tensor) -> torch.Tensor:
    """``clip(round(x / s), lo, hi) · s`` (no autograd bookkeeping): the activation quantizer's forward
    arithmetic, and nearest rounding for range searches (``scale``, ``lo``, ``hi`` broadcast)."""
    return torch.round(x / scale).clamp_(lo, hi) * scale


def fake_quant_asymmetric(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` on the ``bits``-bit asymmetric grid spanning ``[lo, hi]`` (zero point rounded into the grid)."""
    n = 2**bits - 1
    scale = ((hi - lo) / n).clamp_min(1e-8)
    zp = torch.round(-lo / scale).clamp(0, n)
    return fake_quant(x, scale, -zp, n - zp)


def _act_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through input gradient and the (unscaled) LSQ scale gradient."""
    xs = x / scale
    clipped = xs.clamp(lo, hi)
    inside = clipped == xs
    q = torch.round(clipped)
    # torch.where instead of multiplying by the bool mask: no float copy of the mask per pass
    grad_x = torch.where(inside, grad, 0.0)
    grad_s = (grad * torch.where(inside, q - xs, q)).sum()
    return grad_x, grad_s


class _Kernels:
    """The element-wise kernels of the activation quantizer's training path.

    Eager by default. :func:`use_compiled_kernels` swaps in ``torch.compile`` d versions, which fuse
    each pass into one loop (about 8x less time in the quantizers on CPU) at the price of a one-off
    compilation (~20 s, cached on disk by inductor). Evaluation without autograd always runs the eager
    :func:`fake_quant`, so compiled training never changes what a saved model computes.
    """

    def __init__(self) -> None:
        self.compiled = False
        self.act_forward = fake_quant
        self.act_backward = _act_backward


_KERNELS = _Kernels()


def use_compiled_kernels(enabled: bool = True) -> bool:
    """Turn the fused (``torch.compile``) activation kernels on or off; returns the new state."""
    if enabled and not _KERNELS.compiled:
        _KERNELS.act_forward = torch.compile(fake_quant, dynamic=True)
        _KERNELS.act_backward = torch.compile(_act_backward, dynamic=True)
        _KERNELS.compiled = True
    elif not enabled:
        _KERNELS.act_forward, _KERNELS.act_backward, _KERNELS.compiled = fake_quant, _act_backward, False
    return _KERNELS.compiled
