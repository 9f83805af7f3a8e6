"""One training iteration of each kind, and the loss every kind shares.

* FP32: one optimizer step on the cross-entropy.
* joint / fixed / hasb, ``loss_mode="per_bit"``: the bit-widths highest first, each with its own
  forward, backward and optimizer step; the shared weight scales step at the bit's ALRS rate.
* ``loss_mode="summed"``: the same forwards and backwards accumulate into one gradient (each bit's
  share of the shared scales' gradient scaled by its ALRS factor), then one optimizer step.

HASB passes a ``plan``: the per-layer configuration each bit-width trains in this iteration, in
place of the uniform bit-width. Distillation (:class:`Distillation`) is an option of the loss, the
same for every kind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.convert import set_precision
from . import ddp
from .config import TrainConfig
from .optim import alrs_factors, set_lr

Precision = int | Mapping[str, tuple[int, int]]


def bit_labels(cfg: TrainConfig) -> list[str]:
    """The names of a run's precisions in metrics, tables and checkpoints: ``fp32`` or ``w<b>a<b>``."""
    return ["fp32"] if cfg.mode == "fp32" else [label(b) for b in cfg.bits]


def label(b: int) -> str:
    return f"w{b}a{b}"


class Distillation:
    """The loss of one iteration: cross-entropy, blended with a KL term towards a teacher's soft targets.

    The teacher of a bit-width is the top bit-width (``distill="inplace"``) or the bit-width just
    above it (``"neighbour"``); with ``"none"``, or for the first bit-width, the loss is plain
    cross-entropy (with ``label_smoothing``).
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.teacher: torch.Tensor | None = None

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        ce = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if self.teacher is None:
            return ce
        t = cfg.distill_temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), self.teacher, reduction="batchmean") * (t * t)
        return (1.0 - cfg.distill_weight) * ce + cfg.distill_weight * kl

    def learn_from(self, i: int, logits: torch.Tensor) -> None:
        """Bit-width number ``i`` of the iteration produced ``logits``: the teacher of the ones after it?"""
        if self.cfg.distill == "neighbour" or (self.cfg.distill == "inplace" and i == 0):
            self.teacher = F.softmax(logits.detach() / self.cfg.distill_temperature, dim=1)


@contextmanager
def timed(timer: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds the block takes to ``timer[key]`` (the per-bit times of the metrics)."""
    t0 = time.perf_counter()
    yield
    timer[key] = timer.get(key, 0.0) + time.perf_counter() - t0


def finish_backward(model: nn.Module, cfg: TrainConfig, dist: ddp.DistInfo) -> None:
    """Gradients ready for a step: averaged across processes, then clipped."""
    ddp.average_gradients(model, dist)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)


def fp32_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
              sched: float, dist: ddp.DistInfo, timer: dict[str, float]) -> dict[str, float]:
    with timed(timer, "fp32"):
        set_lr(optimizer, cfg.lr, sched)
        optimizer.zero_grad(set_to_none=True)
        loss = Distillation(cfg).loss(model(x), y)
        loss.backward()
        finish_backward(model, cfg, dist)
        optimizer.step()
    return {"fp32": float(loss.detach())}


def per_bit_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                 sched: float, dist: ddp.DistInfo, timer: dict[str, float], precisions: Sequence[Precision]) -> dict[str, float]:
    eta = alrs_factors(cfg.bits, cfg.alrs)
    kd = Distillation(cfg)
    losses: dict[str, float] = {}
    for i, (b, precision) in enumerate(zip(cfg.bits, precisions)):
        with timed(timer, label(b)):
            set_precision(model, precision)
            # set_to_none: other bits' activation scales and BatchNorms get no gradient, so Adam
            # leaves them alone in this bit's step instead of decaying their moments.
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = kd.loss(logits, y)
            loss.backward()
            finish_backward(model, cfg, dist)
            set_lr(optimizer, cfg.lr, sched, shared_eta=eta[b])
            optimizer.step()
            kd.learn_from(i, logits)
        losses[label(b)] = float(loss.detach())
    return losses


def summed_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                sched: float, dist: ddp.DistInfo, timer: dict[str, float], precisions: Sequence[Precision]) -> dict[str, float]:
    eta = alrs_factors(cfg.bits, cfg.alrs)
    shared = [p for g in optimizer.param_groups if g["name"] == "scale_shared" for p in g["params"]]
    kd = Distillation(cfg)
    losses: dict[str, float] = {}
    optimizer.zero_grad(set_to_none=True)
    for i, (b, precision) in enumerate(zip(cfg.bits, precisions)):
        with timed(timer, label(b)):
            set_precision(model, precision)
            before = [None if p.grad is None else p.grad.clone() for p in shared]
            logits = model(x)
            loss = kd.loss(logits, y)
            loss.backward()
            scale_added_gradient(shared, before, eta[b])
            kd.learn_from(i, logits)
        losses[label(b)] = float(loss.detach())
    with timed(timer, "step"):
        finish_backward(model, cfg, dist)
        set_lr(optimizer, cfg.lr, sched)
        optimizer.step()
    return losses


@torch.no_grad()
def scale_added_gradient(params: Sequence[nn.Parameter], before: Sequence[torch.Tensor | None], factor: float) -> None:
    """ALRS for the summed loss: multiply what the last backward added to each gradient by ``factor``."""
    if factor == 1.0:
        return
    for p, g0 in zip(params, before):
        if p.grad is None:
            continue
        if g0 is None:
            p.grad.mul_(factor)
        else:
            p.grad.sub_(g0).mul_(factor).add_(g0)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
               sched: float, dist: ddp.DistInfo, timer: dict[str, float], plan: Sequence[Precision] | None = None) -> dict[str, float]:
    """One iteration of the run's kind; returns the loss per bit label. ``plan``: HASB's configurations."""
    if cfg.mode == "fp32":
        return fp32_step(model, optimizer, x, y, cfg, sched, dist, timer)
    step = summed_step if cfg.loss_mode == "summed" else per_bit_step
    return step(model, optimizer, x, y, cfg, sched, dist, timer, plan if plan is not None else list(cfg.bits))


__all__ = ["Distillation", "bit_labels", "fp32_step", "per_bit_step", "summed_step", "train_step"]
