"""Which layer of a model becomes what, and why: the conversion plan behind :func:`bitswitch.quantize`.

Layers are matched by ``isinstance`` (subclasses included), so a model's own ``Linear`` subclass is
found like ``nn.Linear``; a subclass whose ``forward`` computes something else than its torch base
(weight standardisation, dynamic "same" padding) is detected by running both on a tiny input and is
left float. Every module that holds a weight gets a row in the report: quantized, weight-only, kept
in FP32 or skipped, with the reason. A weight-bearing module bitswitch cannot convert is a warning
unless the user asked for it by name, pattern or ``filter_fn``: then it is an error.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .dataflow import DataFlow
from .layers import QuantEmbedding, QuantLayer, QuantLinear, quant_type

SUPPORTED = ("nn.Linear, nn.Conv1d, nn.Conv2d and their subclasses, transformers Conv1D, the projections of "
             "nn.MultiheadAttention, and nn.Embedding (weight-only)")
ACTIONS = ("quantized", "weight-only", "fp32", "skipped")
FULL_PRECISION_MODES = ("auto", "first_last")

FilterFn = Callable[[nn.Module, str], bool]


@dataclass
class Plan:
    """The outcome of planning: names per action, and one report row per weight-bearing module."""

    quantized: list[str] = field(default_factory=list)  # every layer to convert, weight-only ones included
    weight_only: list[str] = field(default_factory=list)
    full_precision: list[str] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)

    def skipped(self) -> list[dict[str, str]]:
        return [r for r in self.rows if r["action"] == "skipped"]


def _base_type(module: nn.Module) -> type[nn.Module] | None:
    for base in (nn.Embedding, nn.Linear, nn.Conv2d, nn.Conv1d):
        if isinstance(module, base):
            return base
    return None


@torch.no_grad()
def _differs_from_base(module: nn.Module, base: type[nn.Module]) -> bool:
    """Whether a subclass's own ``forward`` computes something else than ``base.forward`` (tiny probe)."""
    if type(module).forward is base.forward or module.weight.is_meta:  # type: ignore[union-attr]
        return False
    gen = torch.Generator().manual_seed(0)
    w = module.weight  # type: ignore[union-attr]
    if base is nn.Linear:
        x = torch.randn(2, module.in_features, generator=gen)  # type: ignore[arg-type]
    elif base is nn.Embedding:
        x = torch.randint(0, module.num_embeddings, (4,), generator=gen)  # type: ignore[arg-type]
    else:
        size = [d * (k - 1) + 2 * s + 1 for k, s, d in zip(module.kernel_size, module.stride, module.dilation)]  # type: ignore[arg-type]
        x = torch.randn(1, module.in_channels, *size, generator=gen)  # type: ignore[arg-type]
    x = x.to(w.device) if base is nn.Embedding else x.to(w.device, w.dtype)
    try:
        got, want = module(x), base.forward(module, x)
    except Exception:  # noqa: BLE001 - a forward that cannot run the base arithmetic is "different"
        return True
    return not (isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5))


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a layer of a supported type cannot be converted (None when it can)."""
    base = _base_type(module)
    weight = getattr(module, "weight", None)
    if isinstance(weight, nn.parameter.UninitializedParameter):
        return "lazy layer not initialised yet (run the model once before quantize)"
    if isinstance(module, nn.modules.conv._ConvNd) and module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r} (only 'zeros' is supported)"
    if isinstance(module, nn.Embedding) and module.max_norm is not None:
        return "max_norm rescales the weight in place"
    if base is not None and _differs_from_base(module, base):
        return f"its forward() computes something other than {base.__name__}'s (e.g. a weight transform or dynamic padding)"
    return None


def weight_bearing(module: nn.Module) -> bool:
    """A module that holds a weight matrix or kernel of its own (a 2-D+ Parameter named ``*weight*``)."""
    return any("weight" in n and p.dim() >= 2 for n, p in module.named_parameters(recurse=False))


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def _short_list(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _resolve(patterns: Sequence[str], eligible: Sequence[str], modules: dict[str, nn.Module], option: str) -> dict[str, str]:
    """name -> the pattern that chose it; a pattern matching nothing convertible is a ValueError."""
    chosen: dict[str, str] = {}
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(f"{option} entries must be layer names or fnmatch patterns, got {pattern!r}")
        hits = [n for n in eligible if _matches(n, pattern)]
        if not hits:
            others = [n for n in modules if n and _matches(n, pattern)]
            if others:
                m = modules[others[0]]
                raise ValueError(f"{option} entry {pattern!r} matches {others[0]!r}, a {type(m).__name__}, which bitswitch cannot "
                                 f"quantize ({unsupported_reason(m) or 'unsupported type'}); supported: {SUPPORTED}")
            close = difflib.get_close_matches(pattern, list(eligible) or [n for n in modules if n], n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{option} entry {pattern!r} matches no quantizable layer{hint}; layers: {_short_list(list(eligible))}")
        for n in hits:
            chosen.setdefault(n, pattern)
    return chosen


def _call_order(names: list[str], flow: DataFlow | None) -> list[str]:
    """``names`` in the order the forward pass first called them (registration order without a flow;
    modules the pass never called go last)."""
    if flow is None:
        return names
    rank = {n: i for i, n in enumerate(flow.order)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


def make_plan(model: nn.Module, full_precision: str | Sequence[str] | None, weight_only: Sequence[str],
              filter_fn: FilterFn | None, flow: DataFlow | None) -> Plan:
    """Decide, for every weight-bearing module of ``model``, what conversion does with it."""
    modules = dict(model.named_modules())
    layers: list[str] = []  # convertible, weights and activations
    embeddings: list[str] = []  # convertible, weight-only
    unsupported: dict[str, str] = {}
    for name, m in modules.items():
        if not name or isinstance(m, QuantLayer):
            continue
        qtype = quant_type(m)
        if qtype is None:
            if weight_bearing(m):
                unsupported[name] = f"{type(m).__name__} is not supported (supported: {SUPPORTED})"
            continue
        reason = unsupported_reason(m)
        if reason is not None:
            unsupported[name] = reason
        else:
            (embeddings if qtype is QuantEmbedding else layers).append(name)

    if filter_fn is not None:
        asked = [n for n in unsupported if filter_fn(modules[n], n)]
        if asked:
            n = asked[0]
            raise ValueError(f"filter_fn selects {n!r}, a {type(modules[n]).__name__}, which bitswitch cannot quantize "
                             f"({unsupported[n]}); supported: {SUPPORTED}")
    filtered = {n for n in layers if filter_fn is not None and not filter_fn(modules[n], n)}

    wo = _resolve(list(weight_only), layers + embeddings, modules, "weight_only")
    fp: dict[str, str] = {}
    ordered = _call_order(layers, flow)
    if isinstance(full_precision, str) and full_precision in FULL_PRECISION_MODES:
        has_embedding = any(isinstance(m, nn.Embedding) for m in modules.values())
        if ordered and full_precision == "auto" and has_embedding:
            fp[ordered[-1]] = "auto: LM head / classifier (the last layer)"
            tied = {id(modules[e].weight): e for e in embeddings}
            for n in layers:
                if id(modules[n].weight) in tied:
                    fp.setdefault(n, f"auto: weight tied to the embedding {tied[id(modules[n].weight)]!r}")
        elif ordered:
            fp[ordered[0]] = f"{full_precision}: first layer"
            fp.setdefault(ordered[-1], f"{full_precision}: last layer")
        fp = {n: r for n, r in fp.items() if n not in wo}  # weight_only overrides the default
    elif full_precision is not None:
        patterns = [full_precision] if isinstance(full_precision, str) else list(full_precision)
        fp = {n: f"full_precision {p!r}" for n, p in _resolve(patterns, layers + embeddings, modules, "full_precision").items()}
        both = sorted(set(fp) & set(wo))
        if both:
            raise ValueError(f"layer {both[0]!r} is asked for both in full_precision and in weight_only; choose one")

    plan = Plan()
    for name, m in modules.items():
        if name in unsupported:
            row = ("skipped", unsupported[name])
        elif name in wo:
            row = ("weight-only", f"weight_only {wo[name]!r}")
        elif name in fp:
            row = ("fp32", fp[name])
        elif name in embeddings:
            row = ("fp32", "embedding: quantized only when weight_only names it")
        elif name in filtered:
            row = ("skipped", "filter_fn returned False")
        elif name in layers:
            row = ("quantized", "")
        else:
            continue
        type_name = type(m).__name__
        if quant_type(m) is QuantLinear and not isinstance(m, nn.Linear):
            type_name += " (weight transposed to [out, in])"
        plan.rows.append({"name": name, "type": type_name, "action": row[0], "reason": row[1]})
        if row[0] in ("quantized", "weight-only"):
            plan.quantized.append(name)
        if row[0] == "weight-only":
            plan.weight_only.append(name)
        if row[0] == "fp32" and name in fp:
            plan.full_precision.append(name)
    return plan


__all__ = ["ACTIONS", "FULL_PRECISION_MODES", "Plan", "SUPPORTED", "make_plan", "unsupported_reason", "weight_bearing"]
