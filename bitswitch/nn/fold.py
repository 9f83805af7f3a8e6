"""BatchNorm folding arithmetic, shared by post-training quantization and the ONNX exporter.

A BN after a conv/linear computes ``y·γ/σ + (β − μ·γ/σ)`` per output channel (``σ = √(var + ε)``,
running statistics). Folding multiplies the layer's weights (or, for integer weights, their
per-channel steps) by ``γ/σ`` and replaces its bias by ``(b − μ)·γ/σ + β``. Subtracting ``μ`` from
the bias before scaling keeps the cancellation exact when the bias tracks the mean.

``torch.nn.utils.fusion.fuse_conv_bn_weights`` computes ``γ·rsqrt(var + ε)``, which rounds
differently in float32; this module keeps ``γ/σ`` so folded models stay bit-identical to earlier
releases.
"""

from __future__ import annotations

import torch
from torch import nn


def check_running_stats(bn: nn.modules.batchnorm._BatchNorm) -> None:
    """``ValueError`` unless ``bn`` normalises with running statistics (only those can be folded)."""
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm without running statistics (track_running_stats=False) normalises with "
                         "batch statistics and cannot be folded")


def fold_bn(bn: nn.modules.batchnorm._BatchNorm, bias: torch.Tensor | None,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(factor, folded_bias)`` in ``dtype``: ``bn(W·x + bias) == (factor·W)·x + folded_bias`` per channel."""
    check_running_stats(bn)
    var, mean = bn.running_var.to(dtype), bn.running_mean.to(dtype)  # type: ignore[union-attr]
    gamma = bn.weight.detach().to(dtype) if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().to(dtype) if bn.bias is not None else torch.zeros_like(var)
    factor = gamma / torch.sqrt(var + bn.eps)
    bias = bias.detach().to(dtype) if bias is not None else torch.zeros_like(var)
    return factor, (bias - mean) * factor + beta


@torch.no_grad()
def fold_conv_bn(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` into ``layer`` (a conv or linear with float weights) in place."""
    w = layer.weight
    if w.shape[0] != bn.num_features:
        raise ValueError(f"BatchNorm of {bn.num_features} channels does not match a layer of {w.shape[0]} outputs")
    factor, bias = fold_bn(bn, layer.bias, w.dtype)
    w.mul_(factor.reshape((-1,) + (1,) * (w.dim() - 1)))
    if layer.bias is None:
        layer.bias = nn.Parameter(bias)
    else:
        layer.bias.copy_(bias)
