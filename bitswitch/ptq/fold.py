"""Fold BatchNorm into the preceding convolution, as a deployment would before quantizing.

Quantizing a conv and then applying a BN in float is not what runs on an integer accelerator: the
BN scale is folded into the weights (changing their per-channel range) and the BN shift becomes the
bias. Only a BN whose input is a conv/linear output used by nothing else can be folded; any other
BN (e.g. the pre-activation BNs of a pre-act ResNet) is left in place and stays in float.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import fx, nn

from .trace import trace

log = logging.getLogger(__name__)


@torch.no_grad()
def fold_conv_bn(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """``W' = W·γ/σ`` per output channel, ``b' = (b - μ)·γ/σ + β`` (in place on ``layer``)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    w = layer.weight
    if w.shape[0] != factor.numel():
        raise ValueError(f"BatchNorm of {factor.numel()} channels does not match a layer of {w.shape[0]} outputs")
    w.mul_(factor.reshape((-1,) + (1,) * (w.dim() - 1)))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(std)
    new_bias = (bias - bn.running_mean) * factor + beta
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.to(w.dtype))
    else:
        layer.bias.copy_(new_bias)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def fold_batchnorms(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, list[tuple[str, str]]]:
    """Fold every foldable BN of ``model`` into its conv/linear; returns the model and ``(layer, bn)`` pairs.

    Folded BNs are replaced by ``nn.Identity`` so module names elsewhere stay unchanged.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    gm = trace(model)
    modules = dict(model.named_modules())
    pairs: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        layer = modules.get(src.target)
        if type(layer) not in (nn.Conv2d, nn.Linear, nn.Conv1d):
            continue
        fold_conv_bn(layer, modules[node.target])
        _set_submodule(model, node.target, nn.Identity())
        pairs.append((src.target, node.target))
    log.info("folded %d BatchNorm layers into their convolutions", len(pairs))
    return model, pairs
