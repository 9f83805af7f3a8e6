"""HASB (Hessian-aware stochastic bit-switching) for mixed-precision supernet training.

Pieces the trainer calls, with no state of their own beyond what a checkpoint can rebuild:

* :class:`RouletteSampler`: a layer whose ``t_l/n_l`` is below the mean over quantized layers draws
  its bit-width uniformly; a layer at or above the mean draws bit ``b`` with probability
  ``b / Σ bits`` (sensitive layers get high precision more often).
* :class:`SwitchSchedule`: the probability that a layer switches away from the iteration's uniform
  bit-width to a roulette draw: 0 during a warm-up, then a linear ramp to ``p_max``.
* :func:`supernet_plan`: the per-bit configurations of one iteration. Draws come from a generator
  seeded by ``(seed, step)`` only, so every DDP process draws the same configurations and a resumed
  run repeats them exactly.
* :func:`supernet_step`: one iteration in the multi-precision style (each bit-width of the list,
  highest first: set its configuration, forward, loss, backward, optimizer step).

Activation bits follow weight bits (``(b, b)``) unless ``act_bits`` fixes them.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.convert import quantized_layers, set_precision


class RouletteSampler:
    """Per-layer bit-width distributions from Hessian traces per parameter."""

    def __init__(self, sensitivity: Mapping[str, float], bits: Sequence[int], layers: Sequence[str] | None = None):
        self.bits = tuple(sorted({int(b) for b in bits}, reverse=True))
        if not self.bits:
            raise ValueError("RouletteSampler needs at least one bit-width")
        names = list(layers) if layers is not None else list(sensitivity)
        missing = [n for n in names if n not in sensitivity]
        if missing:
            raise ValueError(f"no Hessian trace for layer(s) {missing[:5]}; compute traces for this model with `bitswitch hessian`")
        if not names:
            raise ValueError("RouletteSampler needs at least one layer")
        self.mean = sum(float(sensitivity[n]) for n in names) / len(names)
        total = sum(self.bits)
        self.probs: dict[str, tuple[float, ...]] = {}
        for n in names:
            if float(sensitivity[n]) < self.mean:
                self.probs[n] = tuple(1.0 / len(self.bits) for _ in self.bits)
            else:
                self.probs[n] = tuple(b / total for b in self.bits)

    def draw(self, name: str, rng: random.Random) -> int:
        return rng.choices(self.bits, weights=self.probs[name])[0]

    def sample(self, rng: random.Random) -> dict[str, int]:
        return {n: self.draw(n, rng) for n in self.probs}


@dataclass(frozen=True)
class SwitchSchedule:
    """Probability of a roulette switch per layer at training step ``step``."""

    warmup_steps: int = 0
    ramp_steps: int = 1
    p_max: float = 1.0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.ramp_steps < 1:
            raise ValueError(f"need warmup_steps >= 0 and ramp_steps >= 1, got {self.warmup_steps}, {self.ramp_steps}")
        if not 0.0 <= self.p_max <= 1.0:
            raise ValueError(f"p_max must be in [0, 1], got {self.p_max}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return 0.0
        return self.p_max * min(1.0, (step - self.warmup_steps + 1) / self.ramp_steps)


def step_rng(seed: int, step: int) -> random.Random:
    """A generator that depends only on ``(seed, step)`` (same on every DDP rank, same on resume)."""
    digest = hashlib.blake2b(f"hasb:{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def supernet_plan(
    sampler: RouletteSampler,
    schedule: SwitchSchedule,
    step: int,
    bits: Sequence[int],
    *,
    seed: int = 0,
    act_bits: int | None = None,
) -> list[dict[str, tuple[int, int]]]:
    """One configuration per bit-width of ``bits`` (highest first) for iteration ``step``."""
    rng = step_rng(seed, step)
    p = schedule(step)
    plan = []
    for b in sorted(bits, reverse=True):
        config = {}
        for n in sampler.probs:
            w = sampler.draw(n, rng) if rng.random() < p else int(b)
            config[n] = (w, act_bits if act_bits is not None else w)
        plan.append(config)
    return plan


def latent_from_checkpoint(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load a multi-precision integer checkpoint as a trainable model (HASB continues from one).

    Each quantized layer gets back a latent FP32 weight ``W_h·s`` (its top-precision dequantized
    weight), so the codes, every lower precision and the model's outputs are unchanged; scales,
    activation scales and per-bit BatchNorms come from the file. ``model``: the FP32 architecture,
    for a checkpoint of a custom or factory-built one (as :func:`bitswitch.load` takes it).
    """
    from ..export.checkpoint import load

    model = load(path, model=model)
    for layer in quantized_layers(model).values():
        if layer.is_integer:
            with torch.no_grad():
                w = layer.weight_quant.dequantize(layer.weight_int, layer.weight_quant.storage_bits).detach().clone()
            del layer._buffers["weight_int"]  # type: ignore[attr-defined]
            layer.weight = nn.Parameter(w)  # type: ignore[attr-defined]
    return model.train()


def supernet_step(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    plan: Sequence[Mapping[str, tuple[int, int]]],
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    grad_clip: float = 0.0,
) -> list[float]:
    """Train on every configuration of ``plan`` in turn (one optimizer step each); returns losses.

    ``model`` may be DDP-wrapped: precision is set on the wrapped module, and every rank must pass
    the same ``plan`` (which :func:`supernet_plan` guarantees).
    """
    loss_fn = loss_fn or F.cross_entropy
    inner = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    if not quantized_layers(inner):
        raise ValueError("supernet training needs a quantized model (bitswitch.quantize) with a multi-precision bit list")
    model.train()
    losses = []
    for config in plan:
        set_precision(inner, dict(config))
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


__all__ = ["RouletteSampler", "SwitchSchedule", "latent_from_checkpoint", "step_rng", "supernet_plan", "supernet_step"]
