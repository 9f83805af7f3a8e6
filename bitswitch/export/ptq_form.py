"""Post-training results in a checkpoint: integer codes at each layer's chosen bit-width, and what
:func:`~bitswitch.export.checkpoint.load` must redo to rebuild the model they came from.

A post-training session (:mod:`bitswitch.ptq`) gives every layer one scale per bit-width (the
``unshared`` variant, FP32 latent weights) and then fixes each layer at one ``(w, a)`` pair. Its
file stores, instead of the FP32 weight, ``<layer>.weight_int``: the codes at the layer's weight
bit-width (AdaRound-ed ones included), next to the per-bit scales. On load the latent weight
becomes ``codes · scale_w``, which the layer's quantizer maps back onto exactly those codes.

The session also changed the architecture: BatchNorms folded into their layers (they stay, as
exact identities: :func:`bitswitch.ptq.graph.neutralize_bn`) and biases added to bias-less layers
(by folding, or to take a bias correction). The metadata key ``ptq`` lists both,
``{"folded_bn": [[layer, bn], ...], "added_bias": [layer, ...]}``; load redoes them on the freshly
built model before comparing it with the file, so a name that does not fit is refused like any
other mismatch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..nn.convert import quantized_layers
from ..nn.layers import quant_type
from ..quant.functional import channel_view
from ..quant.grid import int_range, storage_dtype
from .schema import CheckpointError, _fail

KEYS = ("folded_bn", "added_bias")


def check_ptq(value: Any, path: Any) -> None:
    """The ``ptq`` metadata: two lists of module names, nothing else."""
    if not isinstance(value, dict) or set(value) != set(KEYS):
        raise _fail(path, "ptq", f"must be {{\"folded_bn\": [[layer, bn], ...], \"added_bias\": [layer, ...]}}, got {value!r}")
    pairs = value["folded_bn"]
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p) for p in pairs):
        raise _fail(path, "ptq.folded_bn", f"must be a list of [layer, bn] name pairs, got {pairs!r}")
    added = value["added_bias"]
    if not isinstance(added, list) or not all(isinstance(n, str) for n in added):
        raise _fail(path, "ptq.added_bias", f"must be a list of layer names, got {added!r}")


def _module(model: nn.Module, name: str, kind: type | tuple[type, ...], path: Any, key: str) -> nn.Module:
    try:
        m = model.get_submodule(name)
    except AttributeError:
        raise _fail(path, key, f"the model has no module {name!r}") from None
    if not isinstance(m, kind):
        raise _fail(path, key, f"{name!r} is a {type(m).__name__}, not what PTQ changes here")
    return m


def redo(model: nn.Module, ptq: Mapping[str, Any], path: Any, layers: Iterable[str]) -> None:
    """Redo the session's architecture changes on a model built from scratch (float, not yet
    quantized); ``layers`` are the quantized ones (their tied weights are untied, as in the session)."""
    from ..ptq.graph import LAYER_TYPES, neutralize_bn

    for name in ptq["added_bias"]:
        layer = _module(model, name, LAYER_TYPES, path, "ptq.added_bias")
        if layer.bias is not None:
            raise _fail(path, "ptq.added_bias", f"layer {name!r} already has a bias")
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype, device=layer.weight.device))
    for layer_name, bn_name in ptq["folded_bn"]:
        _module(model, layer_name, LAYER_TYPES, path, "ptq.folded_bn")
        neutralize_bn(_module(model, bn_name, nn.modules.batchnorm._BatchNorm, path, "ptq.folded_bn"))
    layers = list(layers)
    for name in layers:
        if quant_type(_module(model, name, nn.Module, path, "precision")) is None:
            raise _fail(path, "precision", f"{name!r} is a {type(model.get_submodule(name)).__name__}, not a layer bitswitch quantizes")
    untie(model, layers)


def untie(model: nn.Module, names: Iterable[str]) -> None:
    """Give each named layer a weight of its own where it shares one with another module (an LM head
    tied to its embedding): post-training quantization rounds the layer's weight and stores it as
    codes, while the other module keeps computing with the float weight."""
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    for name in names:
        layer = model.get_submodule(name)
        if owners.get(id(layer.weight), 0) > 1:
            layer.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=layer.weight.requires_grad)


def _weight_bits(precision: Mapping[str, Any], name: str, path: Any) -> int:
    pair = precision.get(name)
    if not pair or pair[0] is None:
        raise _fail(path, f"precision.{name}", "a PTQ checkpoint stores every quantized layer at a fixed weight bit-width")
    return int(pair[0])


def codes_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every quantized layer's FP32 weight replaced by its codes at its current bits."""
    for name, layer in quantized_layers(model).items():
        if layer.w_bits is None:
            raise ValueError(f"layer {name!r} is in full precision; a PTQ checkpoint stores every quantized layer at its chosen bits")
        codes, _ = layer.weight_qparams()
        state.pop(f"{name}.weight")
        state[f"{name}.weight_int"] = codes.to(storage_dtype(layer.w_bits))
    return state


def entries(model: nn.Module, expected: dict[str, tuple[str, tuple[int, ...]]], precision: Mapping[str, Any],
            path: Any) -> dict[str, tuple[str, tuple[int, ...]]]:
    """What the file must declare: codes in place of each quantized layer's FP32 weight."""
    from .container import DTYPE_NAMES

    out = dict(expected)
    for name in quantized_layers(model):
        _, shape = out.pop(f"{name}.weight")
        out[f"{name}.weight_int"] = (DTYPE_NAMES[storage_dtype(_weight_bits(precision, name, path))], shape)
    return out


def expand_codes(model: nn.Module, tensors: dict[str, torch.Tensor], precision: Mapping[str, Any], path: Any) -> dict[str, torch.Tensor]:
    """Latent weights ``codes · scale_w`` from the stored codes (each checked to lie on its grid)."""
    out = dict(tensors)
    for name in quantized_layers(model):
        bits = _weight_bits(precision, name, path)
        codes = out.pop(f"{name}.weight_int")
        lo, hi = int_range(bits, signed=True)
        if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
            raise CheckpointError(f"{path}: tensor {name}.weight_int: codes outside the {bits}-bit range [{lo}, {hi}]")
        scale = out[f"{name}.weight_quant.scales.{bits}"]
        out[f"{name}.weight"] = codes.to(scale.dtype) * channel_view(scale, codes.dim())
    return out


__all__ = ["KEYS", "check_ptq", "codes_state", "entries", "expand_codes", "redo"]
