"""Optimizer parameter groups, ALRS factors and the warm-up + cosine learning-rate schedule.

Groups follow one stated rule (printed by :func:`describe_groups`):

* ``weights``: conv/linear weights (``dim >= 2``), with weight decay, rate ``lr``;
* ``no_decay``: biases and BatchNorm affine parameters, no decay, rate ``lr``;
* ``scale_shared``: the per-channel weight scales shared by every bit-width (Double Rounding). With
  a per-bit optimizer step its rate is set to ``eta_b * lr`` before the step of bit ``b``; with a
  summed loss each bit's gradient contribution is multiplied by ``eta_b`` instead;
* ``scale_<b>``: the scales that belong to bit ``b`` only (activation scales, unshared weight
  scales), rate ``eta_b * lr`` (``alrs_scope="all"``, the paper's rule as we read it) or ``lr``
  (``"shared"``: ALRS only where bit-widths compete, the shared weight scales), no decay.
  ``eta_2 * lr`` of ``{8,6,4,2}`` is ``1e-3 * lr``: at a fine-tuning rate the 2-bit activation
  scales then barely move (docs/results.md measures both scopes).

Scales never get weight decay: decaying a step size shrinks the grid, which is not regularisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..nn.layers import QuantLayer
from .config import ALRS_SCOPES, TrainConfig


def alrs_factor(high: int, bits: int) -> float:
    """ALRS: ``eta_b = 10^(-delta/2)`` for even ``delta = h - b``, ``5 * 10^(-(delta+1)/2)`` for odd."""
    delta = high - bits
    if delta < 0:
        raise ValueError(f"bit-width {bits} is above the highest bit-width {high}")
    if delta % 2 == 0:
        return 10.0 ** (-delta // 2)
    return 5.0 * 10.0 ** (-(delta + 1) // 2)


def alrs_factors(bits: Sequence[int], enabled: bool = True) -> dict[int, float]:
    """``{b: eta_b}`` for a bit list (all 1.0 when ALRS is off); ``h`` is the highest bit."""
    high = max(bits)
    return {b: (alrs_factor(high, b) if enabled else 1.0) for b in bits}


def _scale_params(model: nn.Module) -> tuple[dict[int, list[nn.Parameter]], list[nn.Parameter]]:
    """Per-bit scales and the shared weight scales of every quantized layer, each once (tied layers
    share one weight quantizer, and an optimizer must not see a parameter twice)."""
    per_bit: dict[int, list[nn.Parameter]] = {}
    shared: list[nn.Parameter] = []
    seen: set[int] = set()

    def add(into: list[nn.Parameter], p: nn.Parameter) -> None:
        if id(p) not in seen:
            seen.add(id(p))
            into.append(p)

    for m in model.modules():
        if not isinstance(m, QuantLayer):
            continue
        for b, p in m.act_quant.scales.items():
            add(per_bit.setdefault(int(b), []), p)
        wq = m.weight_quant
        if getattr(wq, "shared_scale", False):
            add(shared, wq.scale)
        else:
            for b, p in wq.scales.items():
                add(per_bit.setdefault(int(b), []), p)
    return per_bit, shared


def model_bits(model: nn.Module) -> list[int]:
    """The weight bit-widths a quantized model can switch to, highest first (every layer's, merged)."""
    bits = {int(b) for m in model.modules() if isinstance(m, QuantLayer) for b in m.weight_quant.bits}
    if not bits:
        raise ValueError("model has no quantized layers: convert it with bitswitch.quantize(model, bits=...) first")
    return sorted(bits, reverse=True)


def alrs_param_groups(model: nn.Module, lr: float, *, weight_decay: float = 0.0, alrs: bool = True,
                      scale_weight_decay: float = 0.0, scale_lr_mult: float = 1.0, alrs_scope: str = "all") -> list[dict]:
    """Optimizer parameter groups of a quantized (or FP32) model, by the rule in the module docstring.

    Pass the result to any ``torch.optim`` optimizer: each group has its ``lr`` (``lr`` times its
    ``lr_factor``) and ``weight_decay``, plus ``name`` and ``lr_factor`` (what a schedule multiplies).
    ``eta_b`` counts from the model's highest bit-width; ``alrs=False`` gives every scale ``lr``.
    The ``scale_shared`` group records that bit-width as ``alrs_top_bits``, so :func:`joint_step`
    can run it at ``eta_b * lr`` during the step of bit ``b``. Scales get ``scale_weight_decay``
    (default none: decaying a step size shrinks the grid) and ``scale_lr_mult * eta_b * lr``;
    ``alrs_scope="shared"`` keeps ``eta_b`` for the shared weight scales only (each bit's own scales
    at ``scale_lr_mult * lr``).

    Example::

        opt = torch.optim.AdamW(alrs_param_groups(qmodel, 1e-3, weight_decay=0.01))
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    for name, value in (("weight_decay", weight_decay), ("scale_weight_decay", scale_weight_decay)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not scale_lr_mult > 0:
        raise ValueError(f"scale_lr_mult must be > 0, got {scale_lr_mult}")
    if alrs_scope not in ALRS_SCOPES:
        raise ValueError(f"alrs_scope must be {' or '.join(map(repr, ALRS_SCOPES))}, got {alrs_scope!r}")
    per_bit, shared = _scale_params(model)
    scale_ids = {id(p) for ps in per_bit.values() for p in ps} | {id(p) for p in shared}
    decay, no_decay = [], []
    for p in model.parameters():
        if id(p) in scale_ids or not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"name": "weights", "params": decay, "weight_decay": weight_decay, "lr_factor": 1.0},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr_factor": 1.0},
    ]
    if per_bit or shared:
        top = model_bits(model)[0]
        if shared:
            groups.append({"name": "scale_shared", "params": shared, "weight_decay": scale_weight_decay, "lr_factor": scale_lr_mult,
                           "alrs_top_bits": top if alrs else 0})
        for b in sorted(per_bit, reverse=True):
            eta = alrs_factor(top, b) if alrs and alrs_scope == "all" else 1.0
            groups.append({"name": f"scale_{b}", "params": per_bit[b], "weight_decay": scale_weight_decay, "lr_factor": eta * scale_lr_mult, "bits": b})
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = lr * g["lr_factor"]
    return groups


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The groups of a configured run (:func:`alrs_param_groups` with the config's options)."""
    return alrs_param_groups(model, cfg.lr, weight_decay=cfg.weight_decay, alrs=cfg.alrs, scale_lr_mult=cfg.scale_lr_mult, alrs_scope=cfg.alrs_scope)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam  # AdamW: each group's weight_decay decoupled
    return adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def describe_groups(optimizer: torch.optim.Optimizer) -> str:
    return "; ".join(
        f"{g['name']}: {len(g['params'])} tensors, {sum(p.numel() for p in g['params']):,} params, "
        f"lr x{g['lr_factor']:g}, wd {g['weight_decay']:g}"
        for g in optimizer.param_groups
    )


def schedule_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    """Set every group's rate: ``base * schedule * lr_factor``."""
    for g in optimizer.param_groups:
        g["lr"] = base_lr * factor * g["lr_factor"]


__all__ = ["alrs_factor", "alrs_factors", "alrs_param_groups", "model_bits", "param_groups", "build_optimizer", "describe_groups", "schedule_factor", "set_lr"]
