"""BatchNorm re-estimation for a chosen (mixed) precision configuration.

A supernet's BatchNorms hold statistics for the configurations it was trained on; a searched mixed
configuration can shift them. Re-estimating the running mean/variance of the BatchNorms that are
active for the current precision on a few hundred calibration images (no weight update, no labels)
fixes that. Only statistics change: affine parameters and every inactive per-bit BatchNorm are
left as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .batchnorm import SwitchableBatchNorm
from .convert import iter_inputs


def active_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm modules the forward pass uses at the model's current precision."""
    inactive: set[int] = set()
    for m in model.modules():
        if isinstance(m, SwitchableBatchNorm):
            inactive |= {id(bn) for key, bn in m.bn.items() if key != str(m.active_bits)}
        elif hasattr(type(m), "sync_precision") and hasattr(m, "bn"):
            inactive |= {id(bn) for key, bn in m.bn.items() if key != m.active}  # type: ignore[union-attr]
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inactive]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Any], *, num_batches: int | None = None) -> int:
    """Re-estimate the running statistics of the active BatchNorms in place; returns images seen.

    Uses an exact cumulative average (``momentum=None``) over ``batches`` (tensors or
    ``(inputs, labels)`` pairs). Call it after :func:`bitswitch.set_precision`, on a copy of the
    supernet if its stored statistics must be kept.
    """
    bns = active_batchnorms(model)
    if not bns:
        raise ValueError("model has no BatchNorm layers to recalibrate")
    was_training = model.training
    saved = [(bn, bn.momentum) for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    try:
        for x in iter_inputs(batches, num_batches):
            model(x)
            seen += int(x.shape[0])
    finally:
        for bn, mom in saved:
            bn.momentum = mom
        model.train(was_training)
    if seen == 0:
        raise ValueError("no calibration images: pass at least one batch")
    return seen


__all__ = ["active_batchnorms", "recalibrate_bn"]
