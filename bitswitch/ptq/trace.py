"""``torch.fx`` tracing shared by BN folding, group discovery and suffix re-execution."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nn.layers import QuantLayer

#: modules that only move data (or pool it): an activation quantizer "sees through" them
PASSTHROUGH_MODULES: tuple[type[nn.Module], ...] = (
    nn.Flatten, nn.Unflatten, nn.Dropout, nn.Identity, nn.ZeroPad2d, nn.ConstantPad2d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
)
PASSTHROUGH_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze,
    F.pad, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    operator.getitem, torch.mean,
}
PASSTHROUGH_METHODS = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "mean", "expand",
}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, QuantLayer) or getattr(m, "bitswitch_passthrough", False):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` with quantized layers and marked pass-through modules as leaves."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # fx raises many exception types for untraceable code
        raise ValueError(
            f"post-training quantization needs a torch.fx-traceable model; tracing {type(model).__name__} failed: {e}"
        ) from None
    return fx.GraphModule(model, graph)


def is_passthrough(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, PASSTHROUGH_MODULES) or bool(getattr(m, "bitswitch_passthrough", False))
    if node.op == "call_function":
        return node.target in PASSTHROUGH_FUNCTIONS
    if node.op == "call_method":
        return node.target in PASSTHROUGH_METHODS
    return False
