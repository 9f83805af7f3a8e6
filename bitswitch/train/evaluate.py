"""Accuracy of a model or of a saved checkpoint at every bit-width of a run."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data import TensorLoader
from ..export.checkpoint import load
from ..models.factory import is_factory
from ..nn.convert import set_precision
from .config import TrainConfig
from .data import Data, make_loader
from .model import build_float_model
from .step import label


@torch.no_grad()
def evaluate(model: nn.Module, loader: TensorLoader, bits: list[int] | None) -> dict[str, float]:
    """Top-1 accuracy (%) at every bit-width (``None``: the FP32 model), in eval mode."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for b in bits if bits is not None else [None]:
            if b is not None:
                set_precision(model, b)
            correct = total = 0
            loader.set_epoch(0)
            for x, y in loader:
                correct += int((model(x).argmax(1) == y).sum())
                total += int(y.numel())
            out["fp32" if b is None else label(b)] = 100.0 * correct / max(total, 1)
    finally:
        if bits:
            set_precision(model, bits[0])
        model.train(was_training)
    return out


def select_metric(acc: dict[str, float], how: str) -> float:
    """The number that picks the best epoch: the lowest (``min``) or mean accuracy over bit-widths."""
    vals = list(acc.values())
    return min(vals) if how == "min" else sum(vals) / len(vals)


def evaluate_checkpoint(path: Path, data: Data, cfg: TrainConfig, device: str, split: str = "test") -> dict[str, float]:
    """Accuracy of a saved checkpoint, reloaded from its file (integer codes for QAT runs).

    A run of a ``package.module:factory`` model rebuilds it with the run's factory (already imported).
    """
    model = load(path, model=build_float_model(cfg, data) if is_factory(cfg.model) else None).to(device)
    return evaluate(model, make_loader(data, split, cfg, device), None if cfg.mode == "fp32" else list(cfg.bits))


__all__ = ["evaluate", "evaluate_checkpoint", "select_metric"]
