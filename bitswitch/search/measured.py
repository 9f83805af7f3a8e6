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
from typing import Any

import torch
from torch import nn

from ..nn.convert import quantized_layers
from .evaluate import at_config
from .hessian import default_loss

Pair = tuple[int, int]


def _as_pair(v: int | Pair) -> Pair:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


@torch.no_grad()
def _mean_loss(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], loss_fn: Callable[..., torch.Tensor]) -> float:
    model.eval()
    total = n = 0.0
    for x, y in batches:
        total += float(loss_fn(model(x), y, reduction="sum"))
        n += int(y.numel())  # one per image; one per token of a sequence model
    return total / n


def loss_deltas(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    candidates: Sequence[int | Pair],
    *,
    reference: int | Pair | Mapping[str, int | Pair] | None = None,
    recal_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    layers: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    monotone: bool = True,
) -> dict[str, dict[Pair, float]]:
    """``Δ_l(p) = L(reference with layer l at p) − L(reference)`` for every quantized layer and candidate.

    Args:
        batches: labelled ``(inputs, targets)`` calibration batches (a few hundred images).
        candidates: bit-widths (activation bits tied) or ``(w, a)`` pairs to measure.
        reference: the configuration every other layer keeps: a bit-width or pair for a uniform
            one (default: the highest candidate), or a per-layer mapping (e.g. a previous search
            result, to re-linearise around it). Measuring around the uniform precision nearest the
            budget makes the additive model local to where the search operates.
        recal_batches: if given, BatchNorm statistics are re-estimated on them for every measured
            configuration (on a copy; the model is left unchanged).
        loss_fn: ``loss_fn(output, targets, reduction="sum")``, averaged per target element (default:
            :func:`~bitswitch.search.hessian.default_loss`, cross-entropy of the logits, per token
            for a language model).
        layers: restrict to these quantized layers (default: all).
        monotone: project each layer's deltas onto "more bits never hurt" (:func:`monotone_deltas`):
            one-layer differences are small and noisy, and an ILP maximising their sum picks
            exactly the layers whose noise says a cheaper precision *helps* (winner's curse).

    Returns ``{layer: {(w, a): Δ}}``; each layer's reference candidate gets ``0.0``.
    """
    pairs = sorted({_as_pair(c) for c in candidates}, key=lambda p: (-p[0], -p[1]))
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
    if isinstance(reference, Mapping):
        lacking = [n for n in quant if n not in reference]
        if lacking:
            raise ValueError(f"reference configuration lacks quantized layer(s) {lacking[:5]}")
        base_cfg = {n: _as_pair(reference[n]) for n in quant}
    else:
        base_cfg = {n: pairs[0] if reference is None else _as_pair(reference) for n in quant}
    loss_fn = loss_fn or default_loss

    work = copy.deepcopy(model)  # the caller's model keeps its precision and statistics

    def measure(config: Mapping[str, Pair]) -> float:  # re-estimated BN must not leak into the next measurement
        return _mean_loss(at_config(work, config, recal_batches, inplace=recal_batches is None), data, loss_fn)

    base = measure(base_cfg)
    out: dict[str, dict[Pair, float]] = {}
    for n in names:
        out[n] = {p: 0.0 if p == base_cfg[n] else measure({**base_cfg, n: p}) - base for p in pairs}
        if monotone:
            out[n] = monotone_deltas(out[n], base_cfg[n])
        if progress is not None:
            progress(n)
    return out


def _dominates(p: Pair, q: Pair) -> bool:
    return p[0] >= q[0] and p[1] >= q[1]


def monotone_deltas(deltas: Mapping[Pair, float], reference: Pair) -> dict[Pair, float]:
    """Make one layer's deltas non-increasing in precision, keeping the reference at 0.

    A candidate at least as precise as the reference (in both weight and activation bits) is
    clipped to ``<= 0``, a less precise one to ``>= 0``; then every candidate is raised to at least
    the delta of any candidate that dominates it (visited from most to least expensive). The
    reference's 0 never moves: candidates dominating it are already ``<= 0``.
    """
    out: dict[Pair, float] = {}
    for p, v in deltas.items():
        if p != reference and _dominates(p, reference):
            v = min(v, 0.0)
        elif p != reference and _dominates(reference, p):
            v = max(v, 0.0)
        out[p] = float(v)
    for q in sorted(out, key=lambda p: (-(p[0] + p[1]), -p[0])):
        above = [out[p] for p in out if p != q and _dominates(p, q)]
        if above and q != reference:
            out[q] = max(out[q], max(above))
    return out


def config_losses(
    model: nn.Module,
    configs: Sequence[Mapping[str, int | Pair]],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    recal_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> list[float]:
    """Mean loss of each whole configuration on ``batches``, BN re-estimated on ``recal_batches``
    for each one (on a copy, as :func:`bitswitch.search.evaluate.evaluate_config` does)."""
    data = list(batches)
    if not data:
        raise ValueError("no calibration data: pass at least one (inputs, targets) batch")
    loss_fn = loss_fn or default_loss
    out = []
    for cfg in configs:
        out.append(_mean_loss(at_config(model, {n: _as_pair(v) for n, v in cfg.items()}, recal_batches), data, loss_fn))
    return out


def rerank(
    model: nn.Module,
    results: Sequence[Any],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    recal_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> tuple[Any, list[float]]:
    """Pick, among proposals, the configuration with the lowest *measured* loss of the whole configuration.

    ``results`` are :class:`~bitswitch.search.ilp.SearchResult` (e.g. from
    :meth:`~bitswitch.search.ilp.SearchProblem.solve_k_best`) or plain ``{layer: (w, a)}`` mappings.
    Why: the ``loss`` objective adds one-layer effects, which do not add up exactly; measuring
    each proposal as a whole corrects the ranking among near-optimal ones. Use labelled training
    (calibration) images that were *not* used for the one-layer deltas, never test images.

    Returns ``(best, losses)``: the chosen proposal (the first on ties) and every proposal's
    loss, in the order given.
    """
    if not results:
        raise ValueError("no proposals to re-rank")
    configs = [getattr(r, "config", r) for r in results]
    losses = config_losses(model, configs, batches, recal_batches=recal_batches, loss_fn=loss_fn)
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    return results[best], losses


__all__ = ["config_losses", "loss_deltas", "monotone_deltas", "rerank"]
