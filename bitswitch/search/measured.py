"""Measured per-(layer, precision) loss increases: the sensitivity behind the ILP's ``loss`` objective.

The Hessian objectives only see *weight* rounding. With activation bits tied to weight bits, a
layer at 2 bits also quantizes its input activations to 2 bits, which the weight trace does not
see (measured: the ILP sent the whole last stage to W2A2 and lost to uniform W3A3). Here the
supernet itself answers: start from a reference configuration (every layer at one precision), set
*one* layer to a candidate ``(w, a)``, and record the mean loss increase on a few calibration
batches. The ILP then minimises the additive first-order model ``Σ_l Δ_l(w_l, a_l)``, as the
post-training mixed-precision algorithm's phase 1 does with its per-group sensitivity list.

Every measurement uses the same batches (paired differences, so batch noise mostly cancels) and,
optionally, BatchNorm statistics re-estimated for that configuration on a copy, as the evaluation
of a searched subnet does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.convert import quantized_layers, set_precision
from ..nn.recalibrate import recalibrate_bn

Pair = tuple[int, int]


@torch.no_grad()
def _mean_loss(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], loss_fn: Callable[..., torch.Tensor]) -> float:
    model.eval()
    total = n = 0.0
    for x, y in batches:
        total += float(loss_fn(model(x), y, reduction="sum"))
        n += int(y.shape[0])
    return total / n


def loss_deltas(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    candidates: Sequence[int | Pair],
    *,
    reference: int | Pair | None = None,
    recal_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    layers: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[Pair, float]]:
    """``Δ_l(p) = L(reference with layer l at p) − L(reference)`` for every quantized layer and candidate.

    Args:
        batches: labelled ``(inputs, targets)`` calibration batches (a few hundred images).
        candidates: bit-widths (activation bits tied) or ``(w, a)`` pairs to measure.
        reference: the configuration every other layer keeps (a bit-width or pair; default: the
            highest candidate). Measuring around the uniform precision nearest the budget makes the
            additive model local to where the search operates.
        recal_batches: if given, BatchNorm statistics are re-estimated on them for every measured
            configuration (on a copy; the model is left unchanged).
        loss_fn: ``loss_fn(logits, targets, reduction="sum")`` (default cross-entropy).
        layers: restrict to these quantized layers (default: all).

    Returns ``{layer: {(w, a): Δ}}``; the reference candidate itself gets ``0.0``.
    """
    pairs = sorted({(int(c), int(c)) if isinstance(c, int) else (int(c[0]), int(c[1])) for c in candidates}, key=lambda p: (-p[0], -p[1]))
    if not pairs:
        raise ValueError("no candidate precisions to measure")
    data = list(batches)
    if not data:
        raise ValueError("no calibration data: pass at least one (inputs, targets) batch")
    quant = quantized_layers(model)
    if not quant:
        raise ValueError("loss_deltas needs a quantized (multi-precision) model")
    names = list(layers) if layers is not None else list(quant)
    unknown = [n for n in names if n not in quant]
    if unknown:
        raise ValueError(f"not quantized layers of this model: {unknown[:5]}")
    ref: Pair = pairs[0] if reference is None else ((int(reference), int(reference)) if isinstance(reference, int) else (int(reference[0]), int(reference[1])))
    loss_fn = loss_fn or F.cross_entropy
    base_cfg = {n: ref for n in quant}

    work = copy.deepcopy(model)  # the caller's model keeps its precision and statistics

    def measure(config: Mapping[str, Pair]) -> float:
        m = copy.deepcopy(work) if recal_batches is not None else work
        set_precision(m, dict(config))
        if recal_batches is not None:
            recalibrate_bn(m, recal_batches)
        return _mean_loss(m, data, loss_fn)

    base = measure(base_cfg)
    out: dict[str, dict[Pair, float]] = {}
    for n in names:
        out[n] = {p: 0.0 if p == ref else measure({**base_cfg, n: p}) - base for p in pairs}
        if progress is not None:
            progress(n)
    return out


__all__ = ["loss_deltas"]
