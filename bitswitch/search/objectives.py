"""Objectives of the subnet search: what one (layer, candidate precision) is worth.

Every objective is additive over layers and maximised by :class:`bitswitch.search.ilp.SearchProblem`
(and scored the same way for its baselines):

* ``"bits"`` (DESIGN §5, the paper): ``O = Σ_l (t_l/n_l)·b_l``: sensitive layers get more bits.
* ``"noise"`` (HAWQ-v2 style): ``O = −Σ_l (t_l/n_l)·‖Ŵ_l(b_l) − W_l‖²``: the second-order
  estimate of the loss increase, with the layer's actual rounding error at each bit-width
  (:func:`weight_noise`) instead of assuming it is linear in ``b``.
* ``"loss"`` (measured, activation-aware): ``O = −Σ_l Δ_l(w_l, a_l)``, the loss increase measured
  on calibration batches with only layer ``l`` at ``(w, a)`` (:func:`bitswitch.search.measured.loss_deltas`);
  sees activation quantization, which the weight-Hessian objectives do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..nn.convert import quantized_layers
from ..nn.layers import QuantLayer

OBJECTIVES = ("bits", "noise", "loss")
Pair = tuple[int, int]


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")


@torch.no_grad()
def weight_noise(model: nn.Module, bits: Sequence[int] | None = None) -> dict[str, dict[int, float]]:
    """``‖Ŵ_l(b) − W_l‖²`` per quantized layer and bit-width ``b``: the rounding error the objective weighs.

    ``W_l`` is the latent FP32 weight when the model holds one (training-time supernet). An integer
    model only knows its top-precision weight ``Ŵ_l(h)``; the error is then ``‖Ŵ_l(b) − Ŵ_l(h)‖²``
    plus the expected error of ``Ŵ_l(h)`` itself, ``Σ step_h²/12`` (uniform rounding noise), so the
    top precision is not treated as free.
    """
    out: dict[str, dict[int, float]] = {}
    for name, layer in quantized_layers(model).items():
        wq = layer.weight_quant
        top = wq.bits[0]

        def eff(b: int, layer: QuantLayer = layer, wq: nn.Module = wq) -> torch.Tensor:
            if layer.is_integer:
                return wq.dequantize(layer.weight_int, b)
            return wq(layer.weight, b)

        if layer.is_integer:
            ref = eff(top)
            _, step = layer.weight_qparams(top)
            per_channel = layer.weight_int[0].numel()
            base = float((step.double() ** 2).sum() * per_channel / 12)
        else:
            ref, base = layer.weight.detach(), 0.0
        out[name] = {int(b): base + float((eff(b) - ref).double().pow(2).sum()) for b in (bits or wq.bits) if b in wq.bits}
    return out


def objective_scores(
    objective: str,
    names: Sequence[str],
    candidates: Sequence[Sequence[Pair]],
    sens: np.ndarray,
    *,
    noise: Mapping[str, Mapping[int, float]] | None = None,
    loss_delta: Mapping[str, Mapping[Pair, float]] | None = None,
) -> np.ndarray:
    """The objective of every ``(layer, candidate)``, layer by layer in ``candidates`` order.

    ``sens[l]`` is layer ``l``'s sensitivity ``t_l/n_l``; ``noise`` (objective ``"noise"``) and
    ``loss_delta`` (objective ``"loss"``) must cover every candidate, else ``ValueError``.
    """
    check_objective(objective)
    if objective == "bits":
        return np.array([float(sens[l] * p[0]) for l, cands in enumerate(candidates) for p in cands])
    if objective == "noise":
        if noise is None:
            raise ValueError("objective 'noise' needs per-layer weight noise: pass noise=weight_noise(model)")
        for n, cands in zip(names, candidates):
            for w, _ in cands:
                if n not in noise or w not in noise[n]:
                    raise ValueError(f"no weight noise for layer {n!r} at {w} bits")
        return np.array([float(-sens[l] * noise[names[l]][p[0]]) for l, cands in enumerate(candidates) for p in cands])
    if loss_delta is None:
        raise ValueError("objective 'loss' needs measured loss increases: pass loss_delta=loss_deltas(model, batches, bits)")
    deltas = {n: {(int(k[0]), int(k[1])): float(v) for k, v in d.items()} for n, d in loss_delta.items()}
    for n, cands in zip(names, candidates):
        for p in cands:
            if n not in deltas or tuple(p) not in deltas[n]:
                raise ValueError(f"no measured loss increase for layer {n!r} at (w, a) = {p}; measure every candidate with loss_deltas")
    return np.array([-deltas[names[l]][tuple(p)] for l, cands in enumerate(candidates) for p in cands])


__all__ = ["OBJECTIVES", "check_objective", "objective_scores", "weight_noise"]
