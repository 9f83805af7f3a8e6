"""Switchable BatchNorm: one BatchNorm per bit-width.

Statistics of a layer's output differ by precision, so each bit-width gets its own affine
parameters and running statistics. The active one is chosen by :func:`bitswitch.set_precision`
(from the weight bit-width of the layer that produces the BatchNorm's input); a bit-width the
BatchNorm was not built for raises instead of silently falling back to another one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class SwitchableBatchNorm(nn.Module):
    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, bits: tuple[int, ...], source: str = ""):
        super().__init__()
        self.bits = tuple(bits)
        self.bn = nn.ModuleDict({str(b): copy.deepcopy(bn) for b in self.bits})
        self.active_bits: int = self.bits[0]
        #: name of the quantized layer whose output this BatchNorm normalises
        self.source = source

    def activate(self, bits: int | None) -> None:
        bits = self.bits[0] if bits is None else bits
        if bits not in self.bits:
            raise ValueError(f"BatchNorm has no statistics for {bits} bits; valid: {list(self.bits)}")
        self.active_bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn[str(self.active_bits)](x)

    def extra_repr(self) -> str:
        return f"bits={list(self.bits)}, active={self.active_bits}, source={self.source!r}"


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def batchnorm_sources(model: nn.Module, converted: set[str], flow=None) -> dict[str, str]:
    """BatchNorm name -> the converted layer whose output it normalises.

    With a recorded :class:`~bitswitch.nn.dataflow.DataFlow`, the nearest layer upstream of the
    BatchNorm's input in that forward pass (through activations, pooling and functional ops such
    as a residual add; a BatchNorm after an FP32 layer stays plain). Without one, the closest convertible layer registered before it (right for
    models built the torchvision way; :func:`bitswitch.calibrate` checks it on real data).
    """
    from .layers import QuantLayer, quant_type

    modules = dict(model.named_modules())
    is_layer = lambda n: quant_type(modules[n]) is not None or isinstance(modules[n], QuantLayer)  # noqa: E731
    sources: dict[str, str] = {}
    last: str | None = None
    inner = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, SwitchableBatchNorm))
    for name, m in model.named_modules():
        if quant_type(m) is not None or isinstance(m, QuantLayer):
            last = name
        elif (is_batchnorm(m) or isinstance(m, SwitchableBatchNorm)) and not name.startswith(inner):
            src = flow.source(name, is_layer) if flow is not None else last
            if src in converted:
                sources[name] = src  # type: ignore[assignment]
    return sources


def bind_batchnorms(model: nn.Module, sources: dict[str, str], bits: tuple[int, ...]) -> list[str]:
    """Make exactly the BatchNorms in ``sources`` switchable, each following its source layer.

    A plain BatchNorm becomes a :class:`SwitchableBatchNorm` (copies of it: safe at any time); a
    switchable one gets its ``source`` corrected; a switchable one that no quantized layer feeds goes
    back to one plain BatchNorm when its per-bit copies are still identical (never trained apart),
    and is otherwise kept as it is. Returns a description of each change.
    """
    changes: list[str] = []
    for name, m in list(model.named_modules()):
        if isinstance(m, SwitchableBatchNorm):
            if name in sources and m.source != sources[name]:
                changes.append(f"{name}: source {m.source!r} -> {sources[name]!r}")
                m.source = sources[name]
            elif name not in sources and _copies_identical(m):
                changes.append(f"{name}: plain BatchNorm (no quantized layer feeds it)")
                model.set_submodule(name, m.bn[str(m.bits[0])])
        elif is_batchnorm(m) and name in sources:
            changes.append(f"{name}: switchable, fed by {sources[name]!r}")
            model.set_submodule(name, SwitchableBatchNorm(m, bits, source=sources[name]))
    return changes


def _copies_identical(m: SwitchableBatchNorm) -> bool:
    states = [bn.state_dict() for bn in m.bn.values()]
    return all(torch.equal(s[k], states[0][k]) for s in states[1:] for k in s)
