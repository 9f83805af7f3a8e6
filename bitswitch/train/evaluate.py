"""The metric of a model at every bit-width of a run: accuracy (images) or loss in nats per character (text)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..data import TensorLoader
from ..lm import lm_loss
from ..nn.convert import set_precision
from .step import label


def each_precision(model: nn.Module, bits: Sequence[int] | None, measure: Callable[[], float],
                   labels: Sequence[str] | None = None) -> dict[str, float]:
    """``{label: measure()}`` with the model switched to each bit-width (``None``: the FP32 model), in
    eval mode; afterwards the model is back at its top bit-width and in its former mode."""
    was_training = model.training
    model.eval()
    precisions = list(bits) if bits is not None else [None]
    names = list(labels) if labels is not None else ["fp32" if b is None else label(b) for b in precisions]
    out: dict[str, float] = {}
    try:
        for b, name in zip(precisions, names, strict=True):
            if b is not None:
                set_precision(model, b)
            out[name] = measure()
    finally:
        if bits:
            set_precision(model, bits[0])
        model.train(was_training)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, loader: TensorLoader, bits: Sequence[int] | None, labels: Sequence[str] | None = None) -> dict[str, float]:
    """Top-1 accuracy (%) at every bit-width (``None``: the FP32 model), in eval mode."""
    def accuracy() -> float:
        correct = total = 0
        loader.set_epoch(0)
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += int(y.numel())
        return 100.0 * correct / max(total, 1)

    return each_precision(model, bits, accuracy, labels)


def evaluate_text(model: nn.Module, ids: torch.Tensor, context: int, bits: Sequence[int] | None, labels: Sequence[str] | None = None, *,
                  batch_size: int = 64, limit: int = 0) -> dict[str, float]:
    """Next-character loss (nats per character, :func:`bitswitch.lm.lm_loss`) at every bit-width."""
    return each_precision(model, bits, lambda: lm_loss(model, ids, context, batch_size=batch_size, limit=limit), labels)


__all__ = ["each_precision", "evaluate", "evaluate_text"]
