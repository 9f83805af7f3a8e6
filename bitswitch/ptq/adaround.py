"""AdaRound (Nagel et al., 2020): learn each weight's rounding direction to reconstruct the layer output.

Per layer and weight bit-width: ``W̃ = s·clip(floor(W/s) + h(V), lo, hi)`` with the rectified sigmoid
``h(V) = clip(σ(V)(ζ-γ)+γ, 0, 1)`` (ζ=1.1, γ=-0.1), loss ``‖W̃x - Wx‖² + λ Σ(1 - |2h-1|^β)`` with β
annealed 20→2 after a 20 % warm start (regulariser off during the warm start). The layer inputs
are the FP32 inputs on (a subset of) the calibration set, with no activation quantization, so one
rounding per (layer, weight bit-width) serves every candidate with that weight bit-width in both
phases. Returns ``{(layer, bits): rounded effective weight}``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.functional import channel_view
from ..quant.grid import int_range

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1


def _h(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def adaround_weight(layer: nn.Module, weight: torch.Tensor, scale: torch.Tensor, bits: int, inputs: torch.Tensor,
                    iters: int = 300, lam: float = 0.01, lr: float = 1e-2, batch: int = 8, seed: int = 0) -> torch.Tensor:
    """AdaRound one layer's weight at ``bits``; ``inputs`` are FP32 layer inputs (N, ...)."""
    gen = torch.Generator().manual_seed(seed)
    s = channel_view(scale, weight.dim())
    lo, hi = int_range(bits, signed=True)
    floor = torch.floor(weight / s)
    rest = weight / s - floor
    # init V so that h(V) equals the fractional part (starts at nearest-ish rounding)
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    v = torch.log(p / (1 - p)).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    conv = isinstance(layer, nn.Conv2d)

    def fwd(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if conv:
            return F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        return F.linear(x, w, layer.bias)

    warm = int(0.2 * iters)
    for it in range(iters):
        idx = torch.randint(0, inputs.shape[0], (min(batch, inputs.shape[0]),), generator=gen)
        x = inputs[idx]
        with torch.no_grad():
            target = fwd(x, weight)
        wq = (floor + _h(v)).clamp(lo, hi) * s
        loss = (fwd(x, wq) - target).pow(2).flatten(1).sum(1).mean()
        if it >= warm:
            beta = 2 + (20 - 2) * (1 - (it - warm) / max(1, iters - warm))
            hv = _h(v)
            loss = loss + lam * (1 - (2 * hv - 1).abs().pow(beta)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((floor + (_h(v) >= 0.5).float()).clamp(lo, hi) * s).detach()


@torch.no_grad()
def _collect_inputs(session: Any, name: str, max_samples: int) -> torch.Tensor:
    layer = session.layers[name]
    got: list[torch.Tensor] = []
    h = layer.register_forward_pre_hook(lambda _m, a: got.append(a[0].detach().clone()))
    try:
        n = 0
        for x in session.chunks:
            session.model(x)
            n += x.shape[0]
            if n >= max_samples:
                break
    finally:
        h.remove()
    return torch.cat(got)[:max_samples]


def adaround_model(session: Any, bits: tuple[int, ...], iters: int = 300, max_samples: int = 64, seed: int = 0) -> dict[tuple[str, int], torch.Tensor]:
    """AdaRound every quantized layer of a :class:`~bitswitch.ptq.api.PTQSession` at each of ``bits``."""
    out: dict[tuple[str, int], torch.Tensor] = {}
    if not bits:
        return out
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    session.apply(None)
    for name in tqdm(list(session.layers), desc="AdaRound", disable=not session.progress):
        layer = session.layers[name]
        inputs = _collect_inputs(session, name, max_samples)
        w = layer.weight.detach().clone()
        for b in bits:
            if b not in layer.weight_quant.bits:
                continue
            scale = layer.weight_quant.scales[str(b)].detach()
            with torch.enable_grad():
                out[(name, b)] = adaround_weight(layer, w, scale, b, inputs, iters=iters, seed=seed)
    log.info("AdaRound: %d (layer, bits) weights at %s bits", len(out), list(bits))
    return out
