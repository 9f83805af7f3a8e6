"""One training iteration of each kind, and the joint step every kind (and every user loop) shares.

:func:`joint_step` is the public core: the bit-widths highest first on the user's batch, loss
function and optimizer, with optional in-place distillation.

* ``summed=False`` (the built-in ``loss_mode="per_bit"``): each bit-width has its own forward,
  backward and optimizer step; the shared weight scales step at the bit's ALRS rate.
* ``summed=True`` (``loss_mode="summed"``, and Hugging Face ``Trainer``): the forwards and
  backwards accumulate into one gradient (each bit's share of the shared scales' gradient scaled by
  its ALRS factor), then one optimizer step.

HASB passes ``precisions``: the per-layer configuration each bit-width trains in this iteration, in
place of the uniform bit-width. Distillation (:class:`Distillation`) is an option of the loss, the
same for every kind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.convert import set_precision
from ..nn.dataflow import output_logits
from . import ddp
from .config import DISTILL, TrainConfig
from .optim import alrs_factor, model_bits, set_lr

Precision = int | Mapping[str, tuple[int, int]]
LossFn = Callable[[Any, Any], torch.Tensor]
Forward = Callable[[nn.Module, Any], Any]


def bit_labels(cfg: TrainConfig) -> list[str]:
    """The names of a run's precisions in metrics, tables and checkpoints: ``fp32``, ``w<b>a<b>``, or
    ``w<b>`` when only the weights are quantized (``weight_only``)."""
    return ["fp32"] if cfg.mode == "fp32" else [label(b, weight_only=cfg.weight_only) for b in cfg.bits]


def label(b: int, *, weight_only: bool = False) -> str:
    return f"w{b}" if weight_only else f"w{b}a{b}"


def call_model(model: nn.Module, batch: Any) -> Any:
    """The model's output on a batch: ``model(**batch)`` for a mapping (Hugging Face inputs),
    ``model(batch[0])`` for a tuple/list (``(x, y)``), ``model(batch)`` for a tensor."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def output_loss(output: Any) -> torch.Tensor:
    """The loss a model computed itself (``output.loss`` or ``output["loss"]``: Hugging Face models given labels)."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise ValueError(f"loss_fn=None needs a model output with a .loss (a Hugging Face model given labels); got {type(output).__name__}: "
                         "pass loss_fn(output, batch), e.g. lambda out, batch: F.cross_entropy(out, batch[1])")
    return loss


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    """``loss_fn`` of ``(x, y)`` batches of class labels: cross-entropy of the output against ``batch[1]``."""
    # .float(): bfloat16 autocast logits get an FP32 loss (a no-op for FP32 logits)
    return lambda output, batch: F.cross_entropy(output.float(), batch[1], label_smoothing=label_smoothing)


def next_token_loss(label_smoothing: float = 0.0) -> LossFn:
    """``loss_fn`` of ``(ids, next ids)`` batches of a causal language model: cross-entropy of the
    logits ``(B, T, V)`` (a tensor or ``.logits``) against every next token ``batch[1]`` ``(B, T)``."""
    def loss(output: Any, batch: Any) -> torch.Tensor:
        logits = output_logits(output).float()
        return F.cross_entropy(logits.flatten(0, -2), batch[1].flatten(), label_smoothing=label_smoothing)

    return loss


def run_loss(cfg: TrainConfig) -> LossFn:
    """The training loss of a configured run: next-character cross-entropy for text, class cross-entropy for images."""
    return (next_token_loss if cfg.is_language_model else cross_entropy_loss)(cfg.label_smoothing)


class Distillation:
    """The loss of one bit-width, blended with a KL term towards a teacher's soft targets.

    The teacher of a bit-width is the top bit-width (``mode="inplace"``) or the bit-width just
    above it (``"neighbour"``); with ``"none"``, or for the first bit-width, the loss is the task
    loss alone. Logits of any shape are compared over their last dimension (classes, or the
    vocabulary at every token position), averaged over the other positions.
    """

    def __init__(self, mode: str = "none", temperature: float = 1.0, weight: float = 0.5):
        if mode not in DISTILL:
            raise ValueError(f"distill must be one of {', '.join(DISTILL)} (or True/False); got {mode!r}")
        if not temperature > 0 or not 0.0 <= weight <= 1.0:
            raise ValueError(f"distillation needs temperature > 0 and weight in [0, 1]; got {temperature}, {weight}")
        self.mode, self.temperature, self.weight = mode, temperature, weight
        self.teacher: torch.Tensor | None = None

    def loss(self, task_loss: torch.Tensor, output: Any) -> torch.Tensor:
        if self.teacher is None:
            return task_loss
        t = self.temperature
        logits = output_logits(output)
        logits = logits.reshape(-1, logits.shape[-1])
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), self.teacher, reduction="batchmean") * (t * t)
        return (1.0 - self.weight) * task_loss + self.weight * kl

    def learn_from(self, i: int, output: Any) -> None:
        """Bit-width number ``i`` of the iteration produced ``output``: the teacher of the ones after it?"""
        if self.mode == "neighbour" or (self.mode == "inplace" and i == 0):
            logits = output_logits(output).detach()
            self.teacher = F.softmax(logits.reshape(-1, logits.shape[-1]) / self.temperature, dim=1)


@contextmanager
def timed(timer: dict[str, float] | None, key: str) -> Iterator[None]:
    """Add the seconds the block takes to ``timer[key]`` (the per-bit times of the metrics)."""
    t0 = time.perf_counter()
    yield
    if timer is not None:
        timer[key] = timer.get(key, 0.0) + time.perf_counter() - t0


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel``/``DataParallel``/``torch.compile`` wrappers, whose
    layer names are the ones :func:`bitswitch.set_precision` pairs BatchNorms by."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def shared_scale_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """The groups of :func:`~.optim.alrs_param_groups` that hold scales shared by every bit-width (ALRS on)."""
    return [g for g in optimizer.param_groups if g.get("alrs_top_bits")]


def bit_pass(model: nn.Module, batch: Any, loss_fn: LossFn | None, precision: Precision, kd: Distillation,
             forward: Forward) -> tuple[torch.Tensor, Any]:
    """Forward at one precision: (its loss, distilled if there is a teacher; the output)."""
    set_precision(unwrap(model), precision)
    output = forward(model, batch)
    task = output_loss(output) if loss_fn is None else loss_fn(output, batch)
    return kd.loss(task, output), output


def joint_step(model: nn.Module, batch: Any, loss_fn: LossFn | None, optimizer: torch.optim.Optimizer, *,
               bits: Sequence[int] | None = None, distill: bool | str = False, distill_temperature: float = 1.0,
               distill_weight: float = 0.5, summed: bool = False, precisions: Sequence[Precision] | None = None,
               forward: Forward = call_model, before_step: Callable[[], None] | None = None,
               backward: Callable[[torch.Tensor], None] | None = None, step: bool = True,
               lr_mults: Sequence[float] | None = None, per_bit_state: bool = False,
               timer: dict[str, float] | None = None) -> dict[int, float]:
    """One joint iteration on ``batch``: every bit-width, highest first; returns ``{bits: loss}``.

    * ``model``: quantized with :func:`bitswitch.quantize` (may be wrapped in DDP or ``torch.compile``).
    * ``batch``: whatever the loader yields; the model is called by ``forward(model, batch)``,
      by default :func:`call_model` (``model(**batch)`` for a dict, ``model(batch[0])`` for a tuple).
    * ``loss_fn(output, batch) -> loss``: e.g. ``lambda out, b: F.cross_entropy(out, b[1])``; ``None``
      takes the loss the model computed itself (``output.loss``: Hugging Face models given ``labels``).
    * ``optimizer``: any optimizer; built on :func:`~.optim.alrs_param_groups` it gets ALRS, including
      the shared weight scales' rate ``eta_b * lr`` during the step of bit ``b`` (restored after).
    * ``summed``: one optimizer step on the sum of the bit-widths' losses instead of one per bit-width;
      with ``step=False`` too, only the backward passes run and the caller zeroes the gradients and
      steps (gradient accumulation, Hugging Face ``Trainer``); the optimizer is then only read for its groups.
    * ``lr_mults``: one multiplier per bit-width (order of ``bits``) on every rate of that bit-width's
      step (per-bit steps only), e.g. ``(0.25, 0.25, 0.5, 1)`` so the easy high precisions move the
      shared weights less than the 2-bit step does.
    * ``per_bit_state``: each bit-width's step uses its own optimizer state (Adam's moments, SGD's
      momentum) for the shared weights, instead of one state that every bit-width's gradients
      update in turn (per-bit steps only; the state takes one copy per bit-width, see
      :func:`bit_state`).
    * ``bits``: the bit-widths to train, highest first (default: all of the model's); ``precisions``
      replaces what each one switches to (a per-layer mapping, as HASB draws).
    * ``distill``: ``True``/``"inplace"`` (the top bit-width's softened output teaches the others),
      ``"neighbour"`` (each learns from the one above) or ``False``; the loss of a taught bit-width is
      ``(1 - distill_weight) * loss + distill_weight * T^2 * KL`` at temperature ``distill_temperature``.
    * ``before_step()``: runs after the backward pass(es), before ``optimizer.step()`` (gradient
      averaging, clipping); ``backward(loss)`` replaces ``loss.backward()`` (e.g. ``accelerator.backward``).
    * Under ``DistributedDataParallel`` (pass the wrapper) the activation scales' gradients are divided
      by ``sqrt(world size)``: their LSQ gradient scale counts the local batch, and so N processes
      compute what one process on the whole batch would.

    Example (a plain loop)::

        qmodel = bitswitch.quantize(model, bits=(8, 6, 4, 2))
        bitswitch.calibrate(qmodel, train_loader)
        opt = torch.optim.Adam(bitswitch.train.alrs_param_groups(qmodel, 1e-3))
        loss_fn = lambda out, batch: F.cross_entropy(out, batch[1])
        for batch in train_loader:
            losses = bitswitch.train.joint_step(qmodel, batch, loss_fn, opt, distill=True)  # {8: ..., 2: ...}
    """
    bits = list(model_bits(unwrap(model)) if bits is None else bits)
    if bits != sorted(set(bits), reverse=True):
        raise ValueError(f"bits must be distinct bit-widths, highest first, got {bits}")
    precisions = list(bits) if precisions is None else list(precisions)
    if len(precisions) != len(bits):
        raise ValueError(f"precisions gives {len(precisions)} configurations for {len(bits)} bit-widths")
    if not step and not summed:
        raise ValueError("step=False (the caller steps) needs summed=True: per-bit steps happen inside joint_step")
    mults = [1.0] * len(bits) if lr_mults is None else [float(m) for m in lr_mults]
    if len(mults) != len(bits) or not all(m > 0 for m in mults):
        raise ValueError(f"lr_mults needs one multiplier > 0 per bit-width of {bits}, got {list(lr_mults or [])}")
    if summed and any(m != 1.0 for m in mults):
        raise ValueError("lr_mults scale each bit-width's own optimizer step: summed=True takes one step for all")
    if summed and per_bit_state:
        raise ValueError("per_bit_state keeps each bit-width's own optimizer state: summed=True takes one step for all")
    kd = Distillation("inplace" if distill is True else "none" if distill is False else distill, distill_temperature, distill_weight)
    shared = shared_scale_groups(optimizer)
    world = ddp.world_size(model)
    lsq_params = ddp.batch_scaled_params(unwrap(model)) if world > 1 else []

    def run_backward(loss: torch.Tensor) -> None:
        """The backward pass; under DistributedDataParallel the activation scales' share divided by sqrt(W)."""
        before = [None if p.grad is None else p.grad.clone() for p in lsq_params]
        (backward or torch.Tensor.backward)(loss)
        scale_added_gradient(lsq_params, before, world**-0.5)

    losses: dict[int, float] = {}
    if summed:
        if step:
            optimizer.zero_grad(set_to_none=True)
        for i, (b, precision) in enumerate(zip(bits, precisions)):
            with timed(timer, label(b)):
                before = {id(p): None if p.grad is None else p.grad.clone() for g in shared for p in g["params"]}
                loss, output = bit_pass(model, batch, loss_fn, precision, kd, forward)
                run_backward(loss)
                for g in shared:
                    scale_added_gradient(g["params"], [before[id(p)] for p in g["params"]], alrs_factor(g["alrs_top_bits"], b))
                kd.learn_from(i, output)
            losses[b] = float(loss.detach())
        if step:
            with timed(timer, "step"):
                if before_step is not None:
                    before_step()
                optimizer.step()
        return losses
    for i, (b, precision, mult) in enumerate(zip(bits, precisions, mults)):
        with timed(timer, label(b)):
            # set_to_none: other bits' activation scales and BatchNorms get no gradient, so Adam
            # leaves them alone in this bit's step instead of decaying their moments.
            optimizer.zero_grad(set_to_none=True)
            loss, output = bit_pass(model, batch, loss_fn, precision, kd, forward)
            run_backward(loss)
            if before_step is not None:
                before_step()
            with bit_rates(optimizer, shared, b, mult), bit_state(optimizer, b if per_bit_state else None):
                optimizer.step()
            kd.learn_from(i, output)
        losses[b] = float(loss.detach())
    return losses


@contextmanager
def bit_rates(optimizer: torch.optim.Optimizer, shared: Sequence[dict], b: int, mult: float) -> Iterator[None]:
    """The rates of bit ``b``'s step: every group's times ``mult``, the shared weight scales' times
    their ALRS factor too; restored afterwards (the schedule owns the base rates)."""
    shared_ids = {id(g) for g in shared}
    rates = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = g["lr"] * mult * (alrs_factor(g["alrs_top_bits"], b) if id(g) in shared_ids else 1.0)
    try:
        yield
    finally:
        for g, lr in zip(optimizer.param_groups, rates):
            g["lr"] = lr


#: the optimizer-state entry that names the bit-width whose entries sit under the plain keys (``optimizer_state: per_bit``)
ACTIVE_BITS = "bitswitch_bits"


@contextmanager
def bit_state(optimizer: torch.optim.Optimizer, b: int | None) -> Iterator[None]:
    """Bit ``b``'s own optimizer state during its step (``None``: the one shared state, unchanged).

    Each parameter's ``optimizer.state[p]`` holds one bit-width's entries under the plain keys the
    optimizer reads (``exp_avg``; that bit-width named by ``ACTIVE_BITS``) and the others' as
    ``<key>@<b>`` (``exp_avg@2``). During the step of ``b`` only ``b``'s entries are there (none:
    the optimizer starts them, as for a new parameter); only the parameters the step updates (those
    with a gradient) are touched. So ``state_dict()``, ``load_state_dict()``, checkpoints and
    resuming carry every bit-width's state, for any torch optimizer. Why: with one shared state,
    Adam's momentum blends the bit-widths' gradients (the 2-bit one nearly at right angles to the
    others) into every step.
    """
    if b is None:
        yield
        return
    tag = f"@{b}"
    stepping = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    others: dict[int, dict[str, Any]] = {}  # the other bit-widths' entries, out of sight (an empty state is how torch optimizers start one)
    for p in stepping:
        st = optimizer.state[p]
        held = st.pop(ACTIVE_BITS, b)
        if held != b:  # the plain keys are another bit-width's: tag them
            for key in [k for k in st if "@" not in k]:
                st[f"{key}@{held}"] = st.pop(key)
        others[id(p)] = {k: st.pop(k) for k in [k for k in st if "@" in k and not k.endswith(tag)]}
        for key in [k for k in st if k.endswith(tag)]:
            st[key[:-len(tag)]] = st.pop(key)
    try:
        yield
    finally:
        for p in stepping:
            st = optimizer.state[p]
            st.update(others[id(p)])
            st[ACTIVE_BITS] = b


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
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
            output = model(x)
        loss = run_loss(cfg)(output, (x, y))
        loss.backward()
        finish_backward(model, cfg, dist)
        optimizer.step()
    return {"fp32": float(loss.detach())}


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
    set_lr(optimizer, cfg.lr, sched)
    times: dict[str, float] = {}
    losses = joint_step(model, (x, y), run_loss(cfg), optimizer, bits=cfg.bits, precisions=plan,
                        distill=cfg.distill, distill_temperature=cfg.distill_temperature, distill_weight=cfg.distill_weight,
                        summed=cfg.loss_mode == "summed", before_step=lambda: finish_backward(model, cfg, dist),
                        lr_mults=cfg.bit_lr_mult or None, per_bit_state=cfg.optimizer_state == "per_bit", timer=times)
    names = dict(zip((label(b) for b in cfg.bits), bit_labels(cfg)))  # joint_step times w<b>a<b>; a weight-only run says w<b>
    for k, v in times.items():
        timer[names.get(k, k)] = timer.get(names.get(k, k), 0.0) + v
    return dict(zip(bit_labels(cfg), losses.values()))


__all__ = ["Distillation", "bit_labels", "call_model", "cross_entropy_loss", "fp32_step", "joint_step", "next_token_loss", "output_logits",
           "output_loss", "run_loss", "train_step", "unwrap"]
