"""Scale initialisation (range setting) for weights and activations.

Weights: one scale per output channel shared by every bit-width, so the MSE search scores a
candidate by the geometric mean of its error over *all* bit-widths of the model (a scale that is
only good at 8 bits ruins 2 bits, and vice versa). Activations: one scale per bit-width, searched
independently (:func:`act_scale`), or, for post-training quantization, an asymmetric ``[lo, hi]``
per bit-width with both ends clipped independently (:func:`act_range_mse`).
"""

from __future__ import annotations

from typing import Literal

import torch

from .functional import channel_view, dequantize_codes, fake_quant, fake_quant_asymmetric, weight_codes
from .grid import int_range

WeightInit = Literal["mse", "std3", "max"]
ActInit = Literal["mse", "lsq", "max"]
WEIGHT_INITS = ("mse", "std3", "max")
ACT_INITS = ("mse", "lsq", "max")

_EPS = 1e-12


def weight_scale_max(weight: torch.Tensor, high: int) -> torch.Tensor:
    """``max|W_c| / (2^(h-1) - 1)``: no clipping at the storage precision."""
    w = weight.detach().reshape(weight.shape[0], -1)
    return (w.abs().amax(1) / (2 ** (high - 1) - 1)).clamp_min(_EPS)


def weight_scale_std3(weight: torch.Tensor, high: int) -> torch.Tensor:
    """The paper's init: ``max(|μ_c − 3σ_c|, |μ_c + 3σ_c|) / 2^(h-1)``."""
    w = weight.detach().reshape(weight.shape[0], -1).double()
    mu = w.mean(1)
    sd = w.std(1, unbiased=False) if w.shape[1] > 1 else torch.zeros_like(mu)
    s = torch.maximum((mu - 3 * sd).abs(), (mu + 3 * sd).abs()) / 2 ** (high - 1)
    return s.float().clamp_min(_EPS)


def weight_scale_mse(
    weight: torch.Tensor,
    high: int,
    bits: tuple[int, ...],
    rounding: str = "half_even",
    grid: int = 40,
) -> torch.Tensor:
    """Per-channel scale minimising the geometric mean over ``bits`` of the double-rounding MSE."""
    w = weight.detach().float()
    base = weight_scale_max(w, high)
    fractions = torch.linspace(0.2, 1.0, grid)
    best_score = torch.full_like(base, float("inf"))
    best = base.clone()
    for f in fractions:
        s = base * f
        codes = weight_codes(w, s, high)
        score = torch.zeros_like(base)
        for b in bits:
            err = (dequantize_codes(codes, s, high, b, rounding) - w).pow(2).reshape(w.shape[0], -1).mean(1)
            score += torch.log(err + _EPS)
        better = score < best_score
        best_score = torch.where(better, score, best_score)
        best = torch.where(better, s, best)
    return best


def init_weight_scale(weight: torch.Tensor, high: int, bits: tuple[int, ...], rounding: str, method: str) -> torch.Tensor:
    if method == "mse":
        return weight_scale_mse(weight, high, bits, rounding)
    if method == "std3":
        return weight_scale_std3(weight, high)
    if method == "max":
        return weight_scale_max(weight, high)
    raise ValueError(f"unknown weight init {method!r}; valid: {', '.join(WEIGHT_INITS)}")


def act_scale(samples: torch.Tensor, bits: int, signed: bool, method: str = "mse", grid: int = 80) -> torch.Tensor:
    """Scalar activation scale for ``bits`` from a 1-D sample of activation values."""
    x = samples.detach().float().flatten()
    if x.numel() == 0:
        raise ValueError("cannot initialise an activation scale from an empty sample")
    lo, hi = int_range(bits, signed)
    amax = x.abs().max().clamp_min(_EPS)
    if method == "max":
        return (amax / hi).reshape(())
    if method == "lsq":
        return (2 * x.abs().mean() / hi**0.5).clamp_min(_EPS).reshape(())
    if method != "mse":
        raise ValueError(f"unknown activation init {method!r}; valid: {', '.join(ACT_INITS)}")
    candidates = amax * torch.linspace(0.05, 1.0, grid) / hi
    errors = torch.stack([((fake_quant(x, s, lo, hi) - x) ** 2).mean() for s in candidates])
    return candidates[int(errors.argmin())].reshape(())


@torch.no_grad()
def act_range_mse(sample: torch.Tensor, bits: int, grid: int = 24, exact_above: int = 12, max_values: int = 16384) -> tuple[float, float]:
    """``(lo, hi)`` minimising ``E[(x - Q(x))²]`` over candidate clipping ranges.

    Candidates shrink the observed maximum by ``grid`` factors in ``[0.15, 1]`` and a negative
    minimum independently by ``grid // 2`` factors; the error is measured on at most ``max_values``
    evenly strided values of the sample (the observed min/max come from all of it). At
    ``bits >= exact_above`` the rounding error is negligible and min/max is returned (no clipping).
    """
    x = sample.detach().float().flatten()
    if x.numel() == 0:
        raise ValueError("cannot set an activation range from an empty sample")
    xmin, xmax = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if bits >= exact_above or xmax - xmin < _EPS:
        return xmin, xmax
    if x.numel() > max_values:
        x = x[:: x.numel() // max_values][:max_values]
    fr = torch.linspace(0.15, 1.0, grid)
    his = (fr * xmax).reshape(-1, 1)
    los = [0.0] if xmin >= 0 else (torch.linspace(0.15, 1.0, max(2, grid // 2)) * xmin).tolist()
    best, best_lo, best_hi = float("inf"), xmin, xmax
    for lo in los:
        lo_t = torch.full_like(his, lo)
        err = (fake_quant_asymmetric(x.unsqueeze(0), lo_t, his, bits) - x).pow_(2).mean(1)
        i = int(err.argmin())
        if float(err[i]) < best:
            best, best_lo, best_hi = float(err[i]), lo, float(his[i])
    return best_lo, best_hi


__all__ = [
    "WEIGHT_INITS",
    "ACT_INITS",
    "act_range_mse",
    "act_scale",
    "init_weight_scale",
    "weight_scale_max",
    "weight_scale_mse",
    "weight_scale_std3",
    "channel_view",
]
