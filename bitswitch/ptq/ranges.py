"""Range setting for post-training quantization.

Weights: per-channel symmetric scales per bit-width by the core MSE search
(:func:`bitswitch.quant.ranges.weight_scale_mse`, via ``UnsharedWeight.init_scale``). Activations:
asymmetric ``[lo, hi]`` chosen by minimising the quantization MSE over a grid of candidate
clipping ranges (both ends shrunk independently) on a sample of calibration values; the choice is
written into the core :class:`~bitswitch.quant.activation.ActivationQuantizer`.
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def _fake_quant_asym(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    n = 2**bits - 1
    scale = ((hi - lo) / n).clamp_min(1e-8)
    zp = torch.round(-lo / scale).clamp(0, n)
    return (torch.round(x / scale).clamp(-zp, n - zp)) * scale


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
        err = (_fake_quant_asym(x.unsqueeze(0), lo_t, his, bits) - x).pow_(2).mean(1)
        i = int(err.argmin())
        if float(err[i]) < best:
            best, best_lo, best_hi = float(err[i]), lo, float(his[i])
    return best_lo, best_hi
