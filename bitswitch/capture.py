"""Graph capture with ``torch.export``, quantized layers kept as single opaque nodes.

Post-training quantization (quantizer groups, suffix re-runs) and ONNX export both need the
model's graph. Symbolic ``torch.fx`` tracing fails on real code (shape asserts, ``x.ndim``,
optional ``forward`` arguments, Hugging Face models); ``torch.export`` runs the Python and records
ATen ops, so it handles them. Inlining the quantized layers into ATen ops would, however, bake
their current bit-width into the graph; so while capturing, every selected layer is called through
one custom op, ``bitswitch::layer(x, key)``, whose implementation calls the live module. The graph
then shows one node per layer (its input is the layer's input, its key names the layer), and
running the graph again after ``set_precision`` computes at the new precision.

The op is impure on purpose (it reads module state); it is only ever run eagerly, by
:meth:`Capture.run` / :class:`torch.fx.Interpreter`-style runners, and translated by the exporter.
"""

from __future__ import annotations

import itertools
import os
import traceback
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

_LIVE: dict[str, nn.Module] = {}  # key -> module, for the lifetime of the Capture that registered it
_COUNTER = itertools.count()
_SHAPES: dict[tuple, tuple[torch.Size, torch.dtype]] = {}  # (key, input shape, dtype) -> output shape and dtype


@torch.library.custom_op("bitswitch::layer", mutates_args=())
def _layer_op(x: torch.Tensor, key: str) -> torch.Tensor:
    module = _LIVE.get(key)
    if module is None:
        raise RuntimeError(f"captured layer {key!r} is no longer alive (its Capture was garbage-collected)")
    return type(module).forward(module, x).clone()  # custom ops may not return an alias of an input


@_layer_op.register_fake
def _layer_fake(x: torch.Tensor, key: str) -> torch.Tensor:
    # Shapes by running the real layer once on zeros: quantizers keep Python-side mirrors of their
    # scales, so a meta-device copy cannot run, and zeros are valid input for every layer type.
    # A dynamic dimension (the batch) is run at its example size and kept symbolic where the output
    # has it at the same position (layers map (N, ..., C_in) to (N, ..., C_out)); int() would fix it.
    from torch.fx.experimental.symbolic_shapes import optimization_hint

    # Cached per layer and input shape: torch.export and every later re-trace (decompositions for
    # ONNX) ask again.
    module = _LIVE[key]
    hint = [optimization_hint(s) for s in x.shape]
    known = (key, tuple(hint), x.dtype)
    if known not in _SHAPES:
        with torch._subclasses.fake_tensor.unset_fake_temporarily(), torch.no_grad():
            out = type(module).forward(module, torch.zeros(hint, dtype=x.dtype, device=x.device))
        _SHAPES[known] = (out.shape, out.dtype)
    out_shape, dtype = _SHAPES[known]
    shape = [x.shape[i] if i < x.dim() and isinstance(x.shape[i], torch.SymInt) and d == hint[i] else d for i, d in enumerate(out_shape)]
    return x.new_empty(shape, dtype=dtype)


class CaptureError(ValueError):
    """The model could not be captured; the message names the op and the line of user code."""


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch and bitswitch: where in the user's code it broke."""
    skip = (os.sep + "torch" + os.sep, os.sep + "bitswitch" + os.sep, os.sep + "contextlib.py", os.sep + "functools.py", "<string>")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not any(s in f.filename for s in skip)]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} ({(f.line or '').strip()})"


@dataclass
class Capture:
    """A captured model: the ``torch.export`` program and its runnable graph module.

    ``layers`` maps each opaque node's key to the module's qualified name in the model.
    """

    program: torch.export.ExportedProgram
    module: fx.GraphModule
    layers: dict[str, str] = field(default_factory=dict)

    def layer_nodes(self) -> Iterator[tuple[fx.Node, str]]:
        """``(node, layer name)`` of every opaque layer call, in graph order."""
        for node in self.module.graph.nodes:
            if node.op == "call_function" and node.target is torch.ops.bitswitch.layer.default:
                yield node, self.layers[node.args[1]]

    def live_module(self, key: str) -> nn.Module:
        """The module an opaque node's key stands for (what the ONNX exporter translates)."""
        return _LIVE[key]

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def _release(keys: list[str]) -> None:
    for k in keys:
        _LIVE.pop(k, None)
    gone = set(keys)
    for known in [s for s in _SHAPES if s[0] in gone]:
        del _SHAPES[known]


@contextmanager
def _opaque(model: nn.Module, select: Callable[[str, nn.Module], bool], prefix: str) -> Iterator[dict[str, str]]:
    """Within the block, every selected module is called through ``bitswitch::layer``."""
    keys: dict[str, str] = {}
    patched: list[nn.Module] = []
    try:
        for name, module in model.named_modules():
            if not name or not select(name, module):
                continue
            if any(name.startswith(p + ".") for p in keys.values()):
                continue  # inside an already opaque module
            key = f"{prefix}:{name}"
            keys[key] = name
            _LIVE[key] = module
            module.forward = (lambda x, k=key: torch.ops.bitswitch.layer(x, k))  # type: ignore[method-assign]
            patched.append(module)
        yield keys
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


@contextmanager
def _no_kv_cache(model: nn.Module) -> Iterator[None]:
    """Hugging Face models return a key/value cache object by default; a captured graph is one
    full-sequence forward pass and needs none (the object is not even a tensor tree torch.export knows)."""
    config = getattr(model, "config", None)
    before = getattr(config, "use_cache", None)
    if before:
        config.use_cache = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        if before:
            config.use_cache = before  # type: ignore[union-attr]


def capture(model: nn.Module, example_inputs: Any, *, opaque: Callable[[str, nn.Module], bool] | None = None,
            dynamic_shapes: Any = None) -> Capture:
    """Capture ``model`` (eval mode) on ``example_inputs`` (a tensor, a tuple of positional
    arguments, or a dict of keyword arguments) with ``torch.export``.

    ``opaque(name, module)`` selects the modules kept as single nodes; the default is every
    quantized layer. ``dynamic_shapes`` is passed to ``torch.export.export`` (the ONNX exporter
    keeps the batch dimension dynamic with it). Raises :class:`CaptureError` naming the failing op
    and the user's line.
    """
    from .nn.layers import QuantLayer

    select = opaque or (lambda _n, m: isinstance(m, QuantLayer))
    if isinstance(example_inputs, torch.Tensor):
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise ValueError(f"example inputs must be a tensor, a tuple of tensors or a dict of tensors, got {type(example_inputs).__name__}")
    prefix = f"c{next(_COUNTER)}"
    was_training = model.training
    model.eval()
    try:
        with _opaque(model, select, prefix) as keys, _no_kv_cache(model):
            try:
                program = torch.export.export(model, args, kwargs, strict=False, dynamic_shapes=dynamic_shapes)
            except Exception as e:  # torch.export raises many types; all mean "cannot capture"
                _release(list(keys))
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CaptureError(f"cannot capture {type(model).__name__} with torch.export{_user_frame(e)}: {type(e).__name__}: {first}") from e
    finally:
        model.train(was_training)
    result = Capture(program, program.module(), keys)
    weakref.finalize(result, _release, list(keys))
    return result


__all__ = ["Capture", "CaptureError", "capture"]
