"""Fold every foldable BatchNorm of a model into the preceding convolution, as a deployment would before quantizing.

Quantizing a conv and then applying a BN in float is not what runs on an integer accelerator: the
BN scale is folded into the weights (changing their per-channel range) and the BN shift becomes the
bias. Only a BN whose input is a conv/linear output used by nothing else can be folded; any other
BN (e.g. the pre-activation BNs of a pre-act ResNet) is left in place and stays in float. Pairs are
read off the captured graph (:func:`bitswitch.ptq.graph.fold_captured`); the arithmetic is
:func:`bitswitch.nn.fold.fold_conv_bn`, shared with the ONNX exporter.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .graph import capture_layers, fold_captured


def fold_batchnorms(model: nn.Module, example_inputs: Any, inplace: bool = False) -> tuple[nn.Module, list[tuple[str, str]]]:
    """Fold every foldable BN of ``model`` (captured on ``example_inputs``) into its conv/linear;
    returns the model and the ``(layer, bn)`` pairs.

    Folded BNs stay in place as exact identities (:func:`bitswitch.ptq.graph.neutralize_bn`).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    return model, fold_captured(model, capture_layers(model, example_inputs))
