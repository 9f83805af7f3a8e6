"""Fold every foldable BatchNorm of a model into the preceding convolution, as a deployment would before quantizing.

Quantizing a conv and then applying a BN in float is not what runs on an integer accelerator: the
BN scale is folded into the weights (changing their per-channel range) and the BN shift becomes the
bias. Only a BN whose input is a conv/linear output used by nothing else can be folded; any other
BN (e.g. the pre-activation BNs of a pre-act ResNet) is left in place and stays in float. The
arithmetic is :func:`bitswitch.nn.fold.fold_conv_bn`, shared with the ONNX exporter.
"""

from __future__ import annotations

import copy
import logging

from torch import fx, nn

from ..nn.fold import fold_conv_bn
from .trace import trace

log = logging.getLogger(__name__)


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
        model.set_submodule(node.target, nn.Identity())
        pairs.append((src.target, node.target))
    log.info("folded %d BatchNorm layers into their convolutions", len(pairs))
    return model, pairs
