"""Evaluate subnets of a supernet without retraining (optionally with BN re-estimation)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..nn.convert import set_precision
from ..nn.recalibrate import recalibrate_bn

BN_MODES = ("native", "recal")


def at_config(
    model: nn.Module,
    config: Mapping[str, int | tuple[int, int]] | int | tuple[int, int],
    recal_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    *,
    inplace: bool = False,
) -> nn.Module:
    """``model`` switched to ``config``, BN statistics re-estimated on ``recal_batches`` if given.

    Works on a deep copy unless ``inplace``, so a supernet keeps its own precision and BN
    statistics: the one place evaluation, measured sensitivities and re-ranking build a subnet.
    """
    m = model if inplace else copy.deepcopy(model)
    set_precision(m, dict(config) if isinstance(config, Mapping) else config)
    if recal_batches is not None:
        recalibrate_bn(m, recal_batches)
    return m


@torch.no_grad()
def accuracy(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy (%) in eval mode."""
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += int(y.numel())
    model.train(was)
    if total == 0:
        raise ValueError("no evaluation data")
    return 100.0 * correct / total


def evaluate_config(
    model: nn.Module,
    config: Mapping[str, tuple[int, int]] | int,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    bn: str = "recal",
    recal_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> float:
    """Accuracy of ``model`` at ``config``; ``bn="recal"`` re-estimates BN statistics on
    ``recal_batches`` first (on a copy: the supernet itself is left untouched)."""
    if bn not in BN_MODES:
        raise ValueError(f"unknown BN mode {bn!r}; valid: {', '.join(BN_MODES)}")
    if bn == "native":
        return accuracy(at_config(model, config, inplace=True), batches)
    if not recal_batches:
        raise ValueError("bn='recal' needs calibration batches (a few hundred training images)")
    return accuracy(at_config(model, config, recal_batches), batches)


@torch.no_grad()
def correct_per_image(
    model: nn.Module,
    config: Mapping[str, tuple[int, int]] | int,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    recal_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Per-image top-1 correctness (bool) at ``config`` with BN re-estimated on a copy: the input
    of :func:`paired_difference`, which compares two configurations on the same images."""
    m = at_config(model, config, recal_batches).eval()
    return torch.cat([m(x).argmax(1) == y for x, y in batches])


def paired_difference(correct: torch.Tensor, baseline: torch.Tensor) -> tuple[float, float]:
    """Accuracy difference (points) of ``correct`` over ``baseline`` on the same images, and its
    standard error from the discordant pairs (McNemar), far tighter than two independent SEs."""
    n = int(baseline.numel())
    if n == 0 or correct.shape != baseline.shape:
        raise ValueError(f"need two equal, non-empty per-image results, got {tuple(correct.shape)} and {tuple(baseline.shape)}")
    gained, lost = int((correct & ~baseline).sum()), int((~correct & baseline).sum())
    diff = gained - lost
    return 100.0 * diff / n, 100.0 * ((gained + lost) - diff**2 / n) ** 0.5 / n


def paired_loss_difference(losses: torch.Tensor, baseline: torch.Tensor, counts: torch.Tensor | None = None) -> tuple[float, float]:
    """Mean loss difference of ``losses`` over ``baseline`` on the same units, and its standard error
    from the spread of the per-unit differences (paired: what both share cancels).

    Units are e.g. a language model's evaluation windows (:func:`bitswitch.lm.window_losses`).
    Without ``counts`` each entry is one unit's loss and the difference is their plain mean; with
    ``counts`` each entry is a unit's summed loss over ``counts`` targets and the difference is per
    target (``Σ d_i / Σ n_i``, e.g. nats per character, exactly the difference of two pooled means),
    its error that of a sum of independent unit differences: ``sqrt(k · var(d_i)) / Σ n_i``.
    """
    a, b = losses.double().flatten(), baseline.double().flatten()
    n = torch.ones_like(b) if counts is None else counts.double().flatten()
    if b.numel() < 2 or a.shape != b.shape or n.shape != b.shape:
        raise ValueError(f"need two equal per-unit results of at least 2 units (and counts of the same length), "
                         f"got {tuple(losses.shape)}, {tuple(baseline.shape)}" + ("" if counts is None else f" and {tuple(counts.shape)}"))
    d = a - b
    total = float(n.sum())
    return float(d.sum()) / total, float((d.numel() * d.var()) ** 0.5) / total


def dataset_batches(
    name: str, root: str | Path | None, split: str, samples: int | None, batch_size: int, *, seed: int = 0,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None, skip: int = 0,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[int, ...]]:
    """A seeded random subset of ``samples`` images (all if None), normalised with ``mean``/``std``
    (default: the dataset's, as the trainer does); returns (batches, one image's shape).

    ``skip`` drops the first ``skip`` images of the same seeded permutation, so
    ``(samples=a, seed=s)`` and ``(samples=b, seed=s, skip=a)`` are disjoint."""
    from ..data import ArrayDataset, TensorLoader, dataset_stats, load_dataset

    ds = load_dataset(name, root, split)
    stats = dataset_stats(name)
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    if samples is not None and samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if skip >= len(ds):
        raise ValueError(f"skip={skip} leaves no images of the {len(ds)} in {name} {split}")
    if skip or (samples is not None and samples < len(ds)):
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[skip:]
        idx = idx[:samples] if samples is not None else idx
        ds = ArrayDataset(ds.images[idx], ds.labels[idx], ds.classes)
    loader = TensorLoader(ds, batch_size, shuffle=False, mean=mean or stats.get("mean"), std=std or stats.get("std"))
    return list(loader), tuple(ds.images.shape[1:])


__all__ = ["BN_MODES", "accuracy", "dataset_batches", "evaluate_config", "paired_loss_difference"]
