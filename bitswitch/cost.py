"""Cost model: parameters, MACs, model bytes and BOPs of quantized layers.

MACs are counted from one forward pass on a dummy input (so any stride, padding, grouping or
input size is handled by the layer itself): a convolution does ``out_elements · in_ch/groups · kernel``
multiply-accumulates per image, a linear ``out_elements · in_features``, an embedding lookup none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .nn.dataflow import run_model
from .nn.layers import QuantLayer, quant_type
from .table import format_table


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str  # "conv" | "depthwise" | "linear" | "embedding"
    params: int  # weight elements (the quantized ones; bias excluded)
    bias: int
    macs: int  # per input sample
    quantized: bool
    w_bits: int | None
    a_bits: int | None

    def as_dict(self) -> dict:
        return asdict(self)


def _weight_numel(m: nn.Module) -> int:
    return int(m.weight_shape.numel()) if isinstance(m, QuantLayer) else int(m.weight.numel())  # type: ignore[union-attr]


def _macs_per_output(m: nn.Module) -> int:
    """Multiply-accumulates per output element (0 for an embedding lookup)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        return (m.in_channels // m.groups) * math.prod(m.kernel_size)
    if isinstance(m, nn.Linear):
        return m.in_features
    if isinstance(m, nn.Embedding):
        return 0
    return int(m.weight.shape[0])  # transformers Conv1D: weight [in, out]


@torch.no_grad()
def layer_costs(model: nn.Module, example_inputs: Sequence[int] | Any) -> list[LayerCost]:
    """Every Conv1d/Conv2d/Linear/Embedding (and transformers Conv1D) of ``model``, quantized or not,
    with its size and per-sample MACs (an embedding lookup has none).

    ``example_inputs`` is what the model runs on, of any dtype (token ids, say): a batch tensor, a
    tuple of positional arguments or a dict of keyword arguments, of which the first sample is
    counted; or the shape of one image without the batch dimension (e.g. ``(3, 32, 32)``: zeros).
    """
    example = _one_sample(model, example_inputs)
    macs: dict[str, int] = {}
    hooks = []
    targets = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer) or quant_type(m) is not None}
    if not targets:
        raise ValueError("model has no Conv1d, Conv2d, Linear or Embedding layer")

    def hook(name: str):
        def fn(m: nn.Module, args, out: torch.Tensor) -> None:
            macs[name] = macs.get(name, 0) + int(out.numel()) * _macs_per_output(m)  # a batch of one, whatever the layout

        return fn

    for name, m in targets.items():
        hooks.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    # Counting needs no quantization: run unquantized activations (works before calibration too).
    qlayers = [m for m in targets.values() if isinstance(m, QuantLayer)]
    saved = [(m.w_bits, m.a_bits) for m in qlayers]
    for m in qlayers:
        m.a_bits = None
        m.w_bits = m.w_bits if m.is_integer else None
    try:
        run_model(model, example)
    except RuntimeError as e:
        raise ValueError(f"could not run the model on its example input {_describe(example)}: {e}") from None
    finally:
        for h in hooks:
            h.remove()
        for m, (w, a) in zip(qlayers, saved):
            m.w_bits, m.a_bits = w, a
        model.train(was_training)

    out = []
    for name, m in targets.items():
        if isinstance(m, nn.modules.conv._ConvNd):
            kind = "depthwise" if m.groups > 1 and m.groups == m.in_channels else "conv"
        else:
            kind = "embedding" if isinstance(m, nn.Embedding) else "linear"
        q = isinstance(m, QuantLayer)
        out.append(
            LayerCost(
                name, kind, _weight_numel(m), int(m.bias.numel()) if getattr(m, "bias", None) is not None else 0, macs.get(name, 0), q,
                m.w_bits if q else None, m.a_bits if q else None,  # type: ignore[union-attr]
            )
        )
    return out


def _one_sample(model: nn.Module, example_inputs: Sequence[int] | Any) -> Any:
    """A batch of one: the first sample of every tensor in ``example_inputs``, or zeros of a shape."""
    if isinstance(example_inputs, (tuple, list, torch.Size)) and example_inputs and all(isinstance(s, int) for s in example_inputs):
        param = next(model.parameters(), None)
        return torch.zeros((1, *example_inputs), device=param.device if param is not None else "cpu")
    first = lambda t: t[:1] if isinstance(t, torch.Tensor) and t.dim() > 0 else t  # noqa: E731
    return torch.utils._pytree.tree_map(first, example_inputs)


def _describe(example: Any) -> str:
    shapes = [f"{t.dtype} {list(t.shape)}" for t in torch.utils._pytree.tree_leaves(example) if isinstance(t, torch.Tensor)]
    return "(" + ", ".join(shapes) + ")"


Config = Mapping[str, tuple[int, int]]


def _bits(c: LayerCost, config: Config | None) -> tuple[int, int]:
    if not c.quantized:
        return 32, 32
    if config is not None and c.name in config:
        return tuple(config[c.name])  # type: ignore[return-value]
    if c.w_bits is None:
        return 32, 32
    return c.w_bits, 32 if c.a_bits is None else c.a_bits  # a weight-only layer reads FP32 inputs


def model_bytes(costs: Sequence[LayerCost], config: Config | None = None, *, include_fp: bool = True) -> float:
    """``Σ n·b_w/8`` over quantized layers (+ FP32 weights of full-precision layers and all biases)."""
    total = 0.0
    for c in costs:
        wb, _ = _bits(c, config)
        if c.quantized or include_fp:
            total += c.params * wb / 8
        if include_fp:
            total += c.bias * 4
    return total


def pair_bops(macs: int, pair: tuple[int, int]) -> int:
    """``MAC·b_w·b_a``: the BOPs of one layer (or group of layers) at one precision, an exact integer."""
    return macs * pair[0] * pair[1]


def total_bops(macs: Mapping[str, int], config: Config) -> float:
    """``Σ MAC·b_w·b_a`` over the entries of ``config`` (layer or group names), summed exactly."""
    return float(sum(pair_bops(macs[n], tuple(p)) for n, p in config.items()))  # type: ignore[arg-type]


def bops(costs: Sequence[LayerCost], config: Config | None = None, *, include_fp: bool = False) -> float:
    """``Σ MAC·b_w·b_a`` per sample; full-precision layers are outside the budget unless asked."""
    return float(sum(pair_bops(c.macs, _bits(c, config)) for c in costs if c.quantized or include_fp))


def layer_table(costs: Sequence[LayerCost]) -> str:
    """A plain-text table of :func:`layer_costs` output (name, kind, params, MACs, precision) with totals."""
    rows = [(c.name, c.kind, f"{c.params:,}", f"{c.macs:,}", "FP32" if not c.quantized else f"W{c.w_bits or 'fp'}A{c.a_bits or 'fp'}") for c in costs]
    total = ("total", "", f"{sum(c.params for c in costs):,}", f"{sum(c.macs for c in costs):,}", f"{sum(c.quantized for c in costs)} quantized")
    return format_table(["layer", "kind", "params", "MACs", "precision"], rows, footer=total)


# --- references and summaries (search budgets) ---------------------------------------------------

#: Reference precisions for relative costs: (weight bits, activation bits) of every quantized layer.
REFERENCES: dict[str, tuple[int, int]] = {"w8a8": (8, 8), "w8a16": (8, 16)}


def reference_pair(reference: str) -> tuple[int, int]:
    """The ``(weight bits, activation bits)`` of a named cost reference (``"w8a8"``, ``"w8a16"``)."""
    key = reference.lower()
    if key not in REFERENCES:
        raise ValueError(f"unknown cost reference {reference!r}; valid: {', '.join(REFERENCES)}")
    return REFERENCES[key]


def reference_bops(costs: Sequence[LayerCost], reference: str = "w8a8") -> float:
    """BOPs of the quantized layers when every one of them runs at ``reference`` (FP layers excluded)."""
    pair = reference_pair(reference)
    return float(sum(pair_bops(c.macs, pair) for c in costs if c.quantized))


def relative_bops(costs: Sequence[LayerCost], config: Config | None = None, reference: str = "w8a8") -> float:
    """``bops(config) / bops(all layers at reference)``; full-precision layers are outside both."""
    return _relative(bops(costs, config), reference_bops(costs, reference))


def relative_total_bops(macs: Mapping[str, int], config: Config, reference: str = "w8a16") -> float:
    """:func:`total_bops` of ``config`` over that of every entry of ``macs`` at ``reference``."""
    pair = reference_pair(reference)
    return _relative(total_bops(macs, config), total_bops(macs, {n: pair for n in macs}))


def _relative(value: float, ref: float) -> float:
    if ref <= 0:
        raise ValueError("the quantized layers have no MACs; relative BOPs is undefined")
    return value / ref


def quantized_bytes(costs: Sequence[LayerCost], config: Config | None = None) -> float:
    """``Σ n·b_w/8`` over quantized layers only: the part of the model size a bit-width choice controls."""
    return model_bytes(costs, config, include_fp=False)


def config_summary(costs: Sequence[LayerCost], config: Config | None = None) -> dict[str, float]:
    """Every budget quantity of one configuration, absolute and relative (for tables and JSON).

    ``avg_bits`` is the plain mean of weight bits over quantized layers, ``wavg_bits`` the
    parameter-weighted mean (= quantized bytes · 8 / parameters); full-precision layers count in
    neither, nor in ``bops``/``quantized_bytes``; ``model_bytes`` is the whole file-size estimate.
    """
    q = [c for c in costs if c.quantized]
    if not q:
        raise ValueError("the model has no quantized layers")
    wbits = [_bits(c, config)[0] for c in q]
    n = sum(c.params for c in q)
    qb = quantized_bytes(costs, config)
    return {
        "avg_bits": sum(wbits) / len(q),
        "wavg_bits": qb * 8 / n if n else 0.0,
        "quantized_bytes": qb,
        "model_bytes": model_bytes(costs, config),
        "bops": bops(costs, config),
        "rel_bops_w8a8": relative_bops(costs, config, "w8a8"),
        "rel_bops_w8a16": relative_bops(costs, config, "w8a16"),
        "rel_bytes_w8": qb / quantized_bytes(costs, {c.name: (8, 8) for c in q}),
    }
