"""AdaRound (Nagel et al., 2020): learn each weight's rounding direction to reconstruct the layer output.

Per layer and weight bit-width: ``W̃ = s·clip(floor(W/s) + h(V), lo, hi)`` with the rectified sigmoid
``h(V) = clip(σ(V)(ζ-γ)+γ, 0, 1)`` (ζ=1.1, γ=-0.1), loss ``E‖(W̃ - W)x‖² + λ Σ(1 - |2h-1|^β)`` with β
annealed 20→2 after a 20 % warm start (regulariser off during the warm start).

Why it is cheap here: the layer inputs ``x`` are FP32 inputs on the calibration set (no activation
quantization), so one rounding per (layer, weight bit-width) serves every candidate with that
weight bit-width in both phases. During the one FP32 calibration pass that also sets the ranges,
:class:`InputStats` samples input *rows* (the im2col patches a conv multiplies with its weight) at
a bounded number of output positions per image and keeps only their second moment
``G = E[x xᵀ]`` per conv group (plus the rows themselves while there are fewer rows than inputs,
e.g. a classifier that sees one row per image). The reconstruction error is then exactly
``tr(ΔW G ΔWᵀ)`` over all sampled rows, so every AdaRound iteration is one small batched matmul
(full batch, deterministic) instead of a pass over cached feature maps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..quant.functional import channel_view, fake_quant
from ..quant.grid import int_range

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1


def _h(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def conv_geometry(layer: nn.Module) -> tuple[int, int]:
    """``(groups, K)``: the weight seen as ``(groups, out/groups, K)`` row multipliers."""
    if isinstance(layer, nn.Conv2d):
        return layer.groups, layer.weight.shape[1] * layer.weight.shape[2] * layer.weight.shape[3]
    if isinstance(layer, nn.Linear):
        return 1, layer.weight.shape[1]
    raise ValueError(f"AdaRound supports Conv2d and Linear layers, got {type(layer).__name__}")


def grouped_weight(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` reshaped to ``(groups, out/groups, K)`` (K = in/groups · kh · kw)."""
    g, k = conv_geometry(layer)
    return weight.reshape(g, weight.shape[0] // g, k)


def sample_rows(layer: nn.Module, x: torch.Tensor, per_sample: int, gen: torch.Generator) -> torch.Tensor:
    """Input rows ``(M, groups, K)`` of ``layer`` at up to ``per_sample`` random output positions per sample.

    For a conv, a row is the receptive-field patch (im2col column) of one output position, so
    ``output[m, g·o] = grouped_weight[g, o] · row[m, g]`` (+ bias). A linear layer's rows are its
    inputs (all leading dims flattened).
    """
    groups, k = conv_geometry(layer)
    if isinstance(layer, nn.Linear):
        return x.detach().reshape(-1, 1, k).float()
    if isinstance(layer.padding, str):
        raise ValueError(f"AdaRound needs explicit integer conv padding, got padding={layer.padding!r}")
    x = x.detach().float()
    ph, pw = layer.padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    n, c, hgt, wid = x.shape
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    ho, wo = (hgt - dh * (kh - 1) - 1) // sh + 1, (wid - dw * (kw - 1) - 1) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"input {tuple(x.shape)} is smaller than the kernel of {layer}")
    if ho * wo <= per_sample:
        pos = torch.arange(ho * wo).repeat(n)
        img = torch.arange(n).repeat_interleave(ho * wo)
    else:
        pos = torch.randint(0, ho * wo, (n * per_sample,), generator=gen)
        img = torch.arange(n).repeat_interleave(per_sample)
    oh, ow = pos // wo, pos % wo
    xh = x.permute(0, 2, 3, 1)  # NHWC: a free view of a channels-last tensor, so each tap is a row gather
    taps = [xh[img, oh * sh + i * dh, ow * sw + j * dw] for i in range(kh) for j in range(kw)]  # each (M, C)
    rows = torch.stack(taps, dim=2)  # (M, C, kh*kw): matches the weight layout (out, C/g, kh, kw)
    return rows.reshape(rows.shape[0], groups, k)


@dataclass
class InputStats:
    """Second moment (and mean) of a layer's input rows, accumulated over calibration batches."""

    groups: int
    k: int
    count: int = 0
    gram: torch.Tensor | None = None
    total: torch.Tensor | None = None
    rows: list[torch.Tensor] | None = field(default_factory=list)

    def add(self, rows: torch.Tensor) -> None:
        r = rows.float().transpose(0, 1)  # (g, M, K); float32 products per batch, float64 running sums
        g = torch.bmm(r.transpose(1, 2), r).double()
        self.gram = g if self.gram is None else self.gram + g
        s = r.sum(1).double()
        self.total = s if self.total is None else self.total + s
        self.count += rows.shape[0]
        if self.rows is not None:
            self.rows.append(rows.float())
            if self.count > self.k:  # the Gram form is now the cheaper exact loss
                self.rows = None

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(gram (g,K,K), mean (g,K), rows (M,g,K) or None)``, normalised per row."""
        if self.count == 0 or self.gram is None or self.total is None:
            raise ValueError("no input rows were collected for this layer")
        rows = torch.cat(self.rows) if self.rows else None
        return (self.gram / self.count).float(), (self.total / self.count).float(), rows


@torch.no_grad()
def weight_scale_output_mse(weight: torch.Tensor, gram: torch.Tensor, groups: int, bits: int, grid: int = 40) -> torch.Tensor:
    """Per-output-channel symmetric scale minimising the layer's *output* error ``Δw G Δwᵀ``.

    Plain weight MSE treats every weight alike; with the input second moment ``G`` the clipping
    candidate is judged by what the layer computes, which matters most for the 9 or 25 weights of a
    4-bit depthwise channel. Candidates shrink the max-abs scale by ``grid`` factors in [0.2, 1].
    """
    w = weight.detach().float()
    lo, hi = int_range(bits, signed=True)
    base = w.abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12) / hi
    best, best_err = base.clone(), torch.full_like(base, float("inf"))
    for f in torch.linspace(0.2, 1.0, grid):
        s = base * f
        sv = channel_view(s, w.dim())
        dw = (fake_quant(w, sv, lo, hi) - w).reshape(groups, w.shape[0] // groups, -1)
        err = (dw * torch.bmm(dw, gram)).sum(-1).reshape(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def adaround_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int, gram: torch.Tensor, groups: int,
                    rows: torch.Tensor | None = None, iters: int = 300, lam: float = 100.0, lr: float = 3e-2,
                    warm_start: float = 0.2) -> torch.Tensor:
    """AdaRound one weight at ``bits`` given the second moment ``gram`` (g, K, K) of its input rows.

    ``rows`` (M, g, K), when given, are used instead of the Gram matrix (cheaper when M < K); the
    loss is the same. Returns the rounded effective weight (on the ``bits`` grid of ``scale``).
    """
    if iters < 1:
        raise ValueError(f"AdaRound needs at least one iteration, got {iters}")
    w = weight.detach().float()
    s = channel_view(scale.detach().float(), w.dim())
    lo, hi = int_range(bits, signed=True)
    shape = (groups, w.shape[0] // groups, -1)
    # the loss is measured relative to nearest rounding's error and the regulariser is a mean, so one
    # λ suits every layer whatever its activation scale and size
    nearest = fake_quant(w, s, lo, hi)
    if rows is None:
        norm = reconstruction_error(w, nearest, gram, groups)
    else:
        norm = float(torch.einsum("mgk,gok->mgo", rows, _grouped_delta(w, nearest, groups)).pow(2).sum() / rows.shape[0])
    if norm <= 0:
        return nearest.to(weight.dtype)
    floor = torch.floor(w / s)
    rest = w / s - floor
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)  # h(V) starts at the fractional part
    v = torch.log(p / (1 - p)).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    warm = int(warm_start * iters)
    for it in range(iters):
        hv = _h(v)
        dw = ((floor + hv).clamp(lo, hi) * s - w).reshape(shape)  # (g, o, K)
        if rows is None:
            # tr(ΔW G ΔWᵀ): its gradient is 2·ΔW G, so one matmul with the product detached suffices
            prod = torch.bmm(dw.detach(), gram)
            rec = 2 * (dw * prod).sum() - (dw.detach() * prod).sum()
        else:
            rec = torch.einsum("mgk,gok->mgo", rows, dw).pow(2).sum() / rows.shape[0]
        loss = rec / norm
        if it >= warm:
            beta = 2 + (20 - 2) * (1 - (it - warm) / max(1, iters - warm))
            loss = loss + lam * (1 - (2 * hv - 1).abs().pow(beta)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((floor + (_h(v) >= 0.5).float()).clamp(lo, hi) * s).to(weight.dtype)


def _grouped_delta(weight: torch.Tensor, approx: torch.Tensor, groups: int) -> torch.Tensor:
    """``approx - weight`` as ``(groups, out/groups, K)``, the layout of the input rows."""
    return (approx.detach().float() - weight.detach().float()).reshape(groups, weight.shape[0] // groups, -1)


def reconstruction_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor, groups: int) -> float:
    """``E‖(approx - weight)x‖²`` per input row, from the rows' second moment."""
    dw = _grouped_delta(weight, approx, groups)
    return float((dw * torch.bmm(dw, gram)).sum())


def bias_correction(weight: torch.Tensor, approx: torch.Tensor, mean: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-output-channel bias change ``-(W̃ - W)·E[x]`` that removes the mean output shift."""
    dw = _grouped_delta(weight, approx, groups)
    return -torch.einsum("gok,gk->go", dw, mean).reshape(-1)


def adaround_layers(layers: dict[str, nn.Module], stats: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
                    bits: Iterable[int], iters: int = 300, lam: float = 100.0, lr: float = 3e-2,
                    cache: dict[tuple[str, int], torch.Tensor] | None = None, weights: dict[str, torch.Tensor] | None = None,
                    progress: bool = False) -> dict[tuple[str, int], torch.Tensor]:
    """AdaRound every layer at each of ``bits`` (those its weight quantizer supports).

    ``stats[name] = (gram, mean, rows)`` from :class:`InputStats`; ``layers[name]`` holds the per-bit
    scales and, unless ``weights[name]`` is given, the FP32 weight. Entries already in ``cache`` are
    reused, new ones added to it.
    """
    out = cache if cache is not None else {}
    bits = tuple(bits)
    for name in tqdm(list(layers), desc="AdaRound", disable=not progress):
        layer = layers[name]
        if name not in stats:
            raise ValueError(f"no input statistics for layer {name!r}")
        gram, _, rows = stats[name]
        groups, _ = conv_geometry(layer)
        for b in bits:
            if (name, b) in out or b not in layer.weight_quant.bits:
                continue
            scale = layer.weight_quant.scales[str(b)].detach()
            with torch.enable_grad():
                w = weights[name] if weights is not None else layer.weight
                out[(name, b)] = adaround_weight(w, scale, b, gram, groups, rows, iters=iters, lam=lam, lr=lr)
    log.info("AdaRound: %d (layer, bits) weights at %s bits, %d iterations each", len(out), list(bits), iters)
    return out
