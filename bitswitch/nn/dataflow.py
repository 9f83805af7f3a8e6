"""Who feeds whom: module-level data flow, recorded by running the model once.

Registration order says nothing about data flow (a BatchNorm may be registered before the conv
that feeds it, a module may be called twice), and symbolic tracing fails on real code (shape
asserts, optional arguments, Hugging Face models). Running the model once on example inputs with
hooks records exactly which module produced each module's input, whatever plain Python the model
runs in between. Used by conversion (BatchNorm pairs), post-training quantization (BatchNorm
folding pairs, quantizer groups) and cost counting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


def run_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` on example inputs: a tensor, a tuple/list of positional arguments, or a
    mapping of keyword arguments (a tokenizer's output, for instance)."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    raise ValueError(f"example inputs must be a tensor, a tuple of tensors or a dict of tensors, got {type(inputs).__name__}")


def output_tensor(out: Any) -> torch.Tensor:
    """The tensor PTQ measures: the output itself, ``.logits`` of a Hugging Face output, or the first
    tensor of a tuple / mapping (the graph's flat outputs put it first as well)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise ValueError(f"model output must be a tensor, a tuple or mapping holding one, or have .logits; got {type(out).__name__}")


def output_logits(output: Any) -> torch.Tensor:
    """The logits of an output: a tensor, ``output.logits`` (Hugging Face) or ``output["logits"]``
    (distillation, the next-token loss, language-model evaluation and generation)."""
    logits = output if isinstance(output, torch.Tensor) else output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"the model must return logits: a tensor, or an output with .logits; got {type(output).__name__}")
    return logits


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, Mapping):
        for v in value.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


@dataclass
class DataFlow:
    """What one forward pass showed.

    ``order``: modules in the order they were first called (containers before their children).
    ``producer``: module -> the innermost module whose output is its first tensor input, or
    ``None`` when that tensor came from a model input or a functional op.
    ``input_id``: module -> identity of its first tensor input (first call); modules with equal
    ids read the very same tensor.
    ``calls``: how often each module ran.
    """

    order: list[str] = field(default_factory=list)
    producer: dict[str, str | None] = field(default_factory=dict)
    input_id: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    #: module -> the nearest module upstream of its first tensor input, following functional ops
    #: (``x + y``, ``F.relu``, ``.view``: an op's output comes from its first input that has an origin)
    upstream: dict[str, str | None] = field(default_factory=dict)
    #: container -> the module inside it that a functional op making its output came from (a residual
    #: block's ``out + identity``: its conv2), so a walk upstream goes through the block, not around it
    inner: dict[str, str] = field(default_factory=dict)

    def consumers(self, name: str) -> list[str]:
        """Modules whose input is ``name``'s output, in call order."""
        return [m for m in self.order if self.producer.get(m) == name]

    def source(self, name: str, stop: Callable[[str], bool]) -> str | None:
        """The first module upstream of ``name`` (through functional ops and other modules such as
        activations or pooling) for which ``stop`` is true; None when the input traces back to a
        model input first. A pre-activation BatchNorm after a residual add finds the conv before it."""
        seen: set[str] = set()
        cur = self.upstream.get(name)
        while cur is not None and cur not in seen:
            if stop(cur):
                return cur
            seen.add(cur)
            cur = self.inner.get(cur) or self.upstream.get(cur)
        return None


class _FollowOps(TorchFunctionMode):
    """Gives the output of every torch function the origin of its first input that has one."""

    def __init__(self, made_by: dict[int, str], derived: dict[int, str], alive: list[torch.Tensor]):
        super().__init__()
        self.made_by, self.derived, self.alive = made_by, derived, alive

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        src = next((o for t in _tensors((args, kwargs)) if (o := self.made_by.get(id(t)) or self.derived.get(id(t)))), None)
        if src is not None:
            for t in _tensors(out):
                if id(t) not in self.made_by and id(t) not in self.derived:
                    self.alive.append(t)
                    self.derived[id(t)] = src
        return out


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    return []


@torch.no_grad()
def record_dataflow(model: nn.Module, inputs: Any) -> DataFlow:
    """Run ``model`` once on ``inputs`` (eval mode, no grad) and record its module data flow."""
    flow = DataFlow()
    made_by: dict[int, str] = {}  # tensor id -> the (innermost) module that returned it
    derived: dict[int, str] = {}  # tensor id -> the module a functional op's input came from
    alive: list[torch.Tensor] = []  # keeps every seen tensor alive so ids stay unique during the pass

    def pre_hook(name: str, args: tuple, kwargs: dict) -> None:
        flow.calls[name] = flow.calls.get(name, 0) + 1
        if flow.calls[name] > 1:
            return
        flow.order.append(name)
        x = _first_tensor(args) if args else _first_tensor(kwargs)
        if x is None:
            flow.producer[name] = flow.upstream[name] = None
            return
        alive.append(x)
        flow.input_id[name] = id(x)
        flow.producer[name] = made_by.get(id(x))
        flow.upstream[name] = made_by.get(id(x)) or derived.get(id(x))

    def post_hook(name: str, output: Any) -> None:
        y = _first_tensor(output)
        if y is not None and id(y) not in made_by:  # children finish first: the innermost module wins
            alive.append(y)
            made_by[id(y)] = name
            if derived.get(id(y), "").startswith(f"{name}."):
                flow.inner[name] = derived[id(y)]

    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        handles.append(module.register_forward_pre_hook(lambda m, a, k, n=name: pre_hook(n, a, k), with_kwargs=True))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: post_hook(n, o)))
    was_training = model.training
    model.eval()
    try:
        with _FollowOps(made_by, derived, alive):
            run_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return flow


__all__ = ["DataFlow", "output_tensor", "record_dataflow", "run_model"]
