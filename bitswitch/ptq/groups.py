"""Quantizer groups: an activation together with the weights of every layer it feeds.

On hardware, an activation tensor is quantized once, and every layer that consumes it reads that
one integer tensor; so the activation's bit-width and the consuming layers' weight bit-widths are
chosen together. Groups are found on the captured graph (:mod:`bitswitch.capture`): from each
quantized layer's input we walk back through data-movement ops (view, permute, flatten, padding,
pooling, dropout) to the op that produced the value; layers reaching the same producer (e.g. ``q``/``k``/``v`` after one LayerNorm,
or a residual block's conv and its projection shortcut) form one group. A residual addition is
just another producer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from ..capture import Capture
from ..nn.layers import QuantLayer
from .graph import capture_layers, source

Pair = tuple[int, int]


@dataclass
class QuantizerGroup:
    """Layers switched together; ``name`` is the first member (a readable, stable id)."""

    name: str
    layers: list[str]
    producer: str
    kinds: list[str]
    candidates: list[Pair] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"name": self.name, "layers": self.layers, "producer": self.producer, "kinds": self.kinds,
                "candidates": [list(c) for c in self.candidates]}


def layer_kind(m: nn.Module) -> str:
    """``conv``, ``depthwise`` or ``linear``: the op types a hardware candidate table may key on."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return "depthwise" if m.groups > 1 and m.groups == m.in_channels else "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    raise ValueError(f"unsupported layer type {type(m).__name__}")


def find_groups(model: nn.Module, example_inputs: Any) -> list[QuantizerGroup]:
    """Quantizer groups of a quantized model (captured on ``example_inputs``), in graph order."""
    return groups_of(capture_layers(model, example_inputs), model)


def groups_of(cap: Capture, model: nn.Module) -> list[QuantizerGroup]:
    """Quantizer groups of the quantized layers in a capture of ``model``, in graph order."""
    by_producer: dict[str, QuantizerGroup] = {}
    seen: set[str] = set()
    for node, name in cap.layer_nodes():
        module = model.get_submodule(name)
        if not isinstance(module, QuantLayer) or name in seen:  # a layer called twice joins its first group
            continue
        seen.add(name)
        src = source(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        key = src.name if src is not None else f"const:{node.name}"
        if key in by_producer:
            by_producer[key].layers.append(name)
            by_producer[key].kinds.append(layer_kind(module))
        else:
            by_producer[key] = QuantizerGroup(name, [name], key, [layer_kind(module)])
    if not by_producer:
        raise ValueError("model has no quantized layers reachable in its captured graph")
    return list(by_producer.values())


def parse_candidates(spec: Sequence[Sequence[int]] | Mapping[str, Sequence[Sequence[int]]]) -> dict[str, list[Pair]]:
    """Normalise a hardware table to ``{kind or "*": [(w, a), ...]}`` sorted by cost, highest first.

    Accepts a list of ``(w_bits, a_bits)`` pairs (every op type) or a mapping from op kind
    (``conv``, ``depthwise``, ``linear``, ``*``) to such a list.
    """
    table = dict(spec) if isinstance(spec, Mapping) else {"*": spec}
    out: dict[str, list[Pair]] = {}
    for kind, pairs in table.items():
        if kind not in ("*", "conv", "depthwise", "linear"):
            raise ValueError(f"unknown op kind {kind!r} in the candidate table; valid: *, conv, depthwise, linear")
        clean: list[Pair] = []
        for p in pairs:
            if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(b, int) and 2 <= b <= 16 for b in p)):
                raise ValueError(f"candidate {p!r} is not a (weight_bits, act_bits) pair of integers in 2..16")
            if tuple(p) not in clean:
                clean.append((int(p[0]), int(p[1])))
        if not clean:
            raise ValueError(f"candidate table entry {kind!r} is empty")
        out[kind] = sorted(clean, key=lambda c: (c[0] * c[1], c[1], c[0]), reverse=True)
    return out


def assign_candidates(groups: list[QuantizerGroup], table: dict[str, list[Pair]]) -> None:
    """Give every group the pairs all its members' op kinds support; raise on a group with none
    and on a candidate no group can use (almost always a typo in the table)."""
    used: set[Pair] = set()
    all_pairs = {p for pairs in table.values() for p in pairs}
    for g in groups:
        allowed: set[Pair] | None = None
        for kind in g.kinds:
            pairs = set(table.get(kind, table.get("*", [])))
            allowed = pairs if allowed is None else allowed & pairs
        if not allowed:
            raise ValueError(f"quantizer group {g.name!r} ({', '.join(sorted(set(g.kinds)))}) supports none of the candidates {sorted(all_pairs)}")
        g.candidates = sorted(allowed, key=lambda c: (c[0] * c[1], c[1], c[0]), reverse=True)
        used |= allowed
    unused = sorted(all_pairs - used)
    if unused:
        raise ValueError(f"candidate pair(s) {[f'W{w}A{a}' for w, a in unused]} are supported by no quantizer group")
