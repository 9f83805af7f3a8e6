"""Joint multi-precision training inside Hugging Face ``transformers.Trainer``.

:class:`BitSwitchTrainer` changes two things of ``Trainer`` and keeps the rest (data collation,
gradient accumulation and clipping, the learning-rate schedule, logging, accelerate/DDP):

* ``create_optimizer`` builds the optimizer ``TrainingArguments`` names (``optim``) on
  :func:`bitswitch.train.alrs_param_groups`: the quantization scales of bit-width ``b`` at
  ``eta_b * learning_rate`` and without weight decay;
* ``training_step`` is one :func:`bitswitch.train.joint_step` with ``summed=True``: the forward and
  backward of every bit-width (highest first, optionally distilled from the top one) accumulate
  into the gradient that ``Trainer`` then clips and steps once. The per-bit losses are logged as
  ``loss_w<b>``.

Example::

    qmodel = bitswitch.quantize(model, bits=(8, 6, 4))
    bitswitch.calibrate(qmodel, [batch["input_ids"] for batch in calibration_batches])
    trainer = BitSwitchTrainer(model=qmodel, args=TrainingArguments("out", learning_rate=1e-4),
                               train_dataset=ds, distill=True)
    trainer.train()

The loss is the one the model computes from ``labels`` (``output.loss``) unless ``loss_fn(output,
batch)`` is given. After each step the model is back at its top bit-width, so ``evaluate``,
``generate`` and ``save_model`` see that precision; switch with :func:`bitswitch.set_precision`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from ..nn.convert import set_precision
from ..train.optim import alrs_param_groups, model_bits
from ..train.step import joint_step, unwrap


class BitSwitchTrainer(Trainer):
    """A ``transformers.Trainer`` that trains every bit-width of a :func:`bitswitch.quantize` model jointly.

    Keyword arguments beyond ``Trainer``'s: ``bits`` (default: all of the model's, highest first),
    ``distill`` / ``distill_temperature`` / ``distill_weight`` (as :func:`bitswitch.train.joint_step`),
    ``alrs`` (``False``: the scales at the plain learning rate), ``alrs_scope`` (as
    :func:`bitswitch.train.alrs_param_groups`) and ``loss_fn(output, batch)``.
    """

    def __init__(self, *args: Any, bits: Sequence[int] | None = None, distill: bool | str = False, distill_temperature: float = 1.0,
                 distill_weight: float = 0.5, alrs: bool = True, alrs_scope: str = "all", loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.bits = list(model_bits(unwrap(self.model)) if bits is None else bits)
        self.distill, self.distill_temperature, self.distill_weight = distill, distill_temperature, distill_weight
        self.alrs, self.alrs_scope, self.loss_fn = alrs, alrs_scope, loss_fn
        self.bit_loss_sums: dict[int, float] = {}
        self.bit_loss_count = 0

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = alrs_param_groups(unwrap(opt_model), self.args.learning_rate, weight_decay=self.args.weight_decay, alrs=self.alrs,
                                        alrs_scope=self.alrs_scope)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            unsupported = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
            if unsupported or not issubclass(optimizer_cls, torch.optim.Optimizer):
                raise ValueError(f"BitSwitchTrainer builds parameter groups for a torch.optim optimizer; optim={self.args.optim!r} "
                                 "manages its own parameters: choose adamw_torch, sgd, adafactor or pass optimizers=(...)")
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        model.train()
        inputs = self._prepare_inputs(inputs)  # Trainer's own hook for subclasses: inputs onto the device
        steps = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
        losses = joint_step(model, inputs, self.loss_fn, self.optimizer, bits=self.bits, distill=self.distill,
                            distill_temperature=self.distill_temperature, distill_weight=self.distill_weight,
                            summed=True, step=False, backward=lambda loss: self.accelerator.backward(loss / steps))
        set_precision(unwrap(model), self.bits[0])
        for b, v in losses.items():
            self.bit_loss_sums[b] = self.bit_loss_sums.get(b, 0.0) + v
        self.bit_loss_count += 1
        return torch.tensor(sum(losses.values()) / steps, device=self.args.device)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean loss of each bit-width since the last log (``loss_w<b>``) to a training log."""
        if "loss" in logs and self.bit_loss_count:
            logs.update({f"loss_w{b}": s / self.bit_loss_count for b, s in self.bit_loss_sums.items()})
            self.bit_loss_sums, self.bit_loss_count = {}, 0
        super().log(logs, *args, **kwargs)


__all__ = ["BitSwitchTrainer"]
