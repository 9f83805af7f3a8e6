"""Transitional BatchNorm: one BatchNorm per (previous layer's bits, source layer's bits) pair.

In a mixed-precision supernet the statistics a BatchNorm sees depend not only on the precision of
the layer that produces its input (``source``, what :class:`SwitchableBatchNorm` keys on) but also on
the precision of the layer before it, whose quantization noise flows through. The reference
supernet therefore keeps a BatchNorm per (previous, current) pair. ``previous`` is the quantized
layer registered just before ``source`` (``"fp"`` when ``source`` is the first quantized layer).

Selected by :func:`bitswitch.set_precision` through :meth:`sync_precision`. Checkpoints written by
:func:`bitswitch.save` do not describe this module (``bitswitch.load`` rebuilds switchable BNs), so it
is an in-memory training/evaluation option; :func:`bitswitch.nn.recalibrate_bn` is the alternative
that needs no extra parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from .batchnorm import SwitchableBatchNorm

FP = "fp"


class TransitionalBatchNorm(nn.Module):
    def __init__(self, switchable: SwitchableBatchNorm, previous: str | None, previous_bits: tuple[int, ...]):
        super().__init__()
        self.bits = tuple(switchable.bits)
        self.source = switchable.source
        self.previous = previous
        self.previous_bits: tuple[str, ...] = tuple(str(b) for b in previous_bits) if previous is not None else (FP,)
        # every pair starts from the switchable BN of its current bit-width
        self.bn = nn.ModuleDict(
            {f"{p}_{c}": copy.deepcopy(switchable.bn[str(c)]) for p in self.previous_bits for c in self.bits}
        )
        self.active = f"{self.previous_bits[0]}_{self.bits[0]}"

    def activate(self, previous_bits: int | None, bits: int | None) -> None:
        p = FP if self.previous is None else str(previous_bits if previous_bits is not None else self.previous_bits[0])
        c = bits if bits is not None else self.bits[0]
        key = f"{p}_{c}"
        if key not in self.bn:
            raise ValueError(f"transitional BatchNorm has no statistics for (previous, current) = ({p}, {c}); valid: {list(self.bn)}")
        self.active = key

    def sync_precision(self, layers: Mapping[str, nn.Module]) -> None:
        """Called by ``set_precision``: pick the pair from the current bits of both layers."""
        src = layers.get(self.source)
        prev = layers.get(self.previous) if self.previous is not None else None
        self.activate(getattr(prev, "w_bits", None), getattr(src, "w_bits", None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn[self.active](x)

    def extra_repr(self) -> str:
        return f"pairs={len(self.bn)}, active={self.active}, source={self.source!r}, previous={self.previous!r}"


def to_transitional(model: nn.Module) -> nn.Module:
    """Replace every :class:`SwitchableBatchNorm` of ``model`` (in place) by a transitional one."""
    from .convert import quantized_layers, set_precision

    layers = quantized_layers(model)
    order = list(layers)
    replaced = 0
    for name, m in list(model.named_modules()):
        if isinstance(m, SwitchableBatchNorm):
            i = order.index(m.source) if m.source in order else -1
            previous = order[i - 1] if i > 0 else None
            prev_bits = tuple(layers[previous].weight_quant.bits) if previous is not None else ()
            model.set_submodule(name, TransitionalBatchNorm(m, previous, prev_bits))
            replaced += 1
    if not replaced:
        raise ValueError("model has no switchable BatchNorm to make transitional (quantize it with switchable_bn=True)")
    set_precision(model, {n: (l.w_bits, l.a_bits) if l.w_bits is not None else None for n, l in layers.items()})
    return model


__all__ = ["TransitionalBatchNorm", "to_transitional"]
