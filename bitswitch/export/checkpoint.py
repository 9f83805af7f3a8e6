"""Integer checkpoints: safetensors with storage-precision codes, scales and JSON metadata.

Layout of a ``.safetensors`` file written by :func:`save`:

* ``<layer>.weight_int``: integer codes ``W_h`` of every quantized layer (int8 for h <= 8), never
  an FP32 copy of a quantized weight;
* ``<layer>.weight_quant.scale``, ``<layer>.act_quant.scales.<b>``, ``<layer>.act_quant.signed_flag``;
* every other state-dict entry as is (full-precision layers, per-bit BatchNorms, biases);
* entries that are one tensor in the model (a tied LM head and embedding: Parameters, or codes and
  weight scale when both ends are quantized) stored once; the optional metadata ``tied`` maps each
  alias key to the stored one, and :func:`load` checks it against the model's own ties;
* metadata (strings): ``format="bitswitch"``, ``format_version``, ``quant_config`` (JSON of
  :class:`~bitswitch.nn.convert.QuantConfig`, which names the rounding mode), ``arch`` (JSON of the
  built-in architecture and its constructor arguments, or ``null``), ``precision`` (JSON of the
  current per-layer precision), ``extra`` (JSON supplied by the caller) and ``sha256``: one digest
  over the canonical metadata and every tensor, so a changed bit anywhere is detected.

A post-training (PTQ) model also carries ``ptq`` metadata and stores codes at each layer's chosen
bit-width in place of FP32 weights (:mod:`bitswitch.export.ptq_form`).

A model without quantized layers (an FP32 run's) is saved the same way with ``storage="float"``:
its state dict as is, ``quant_config`` ``null`` and ``precision`` ``{}``; :func:`load` rebuilds it as a
float model.

Loading trusts nothing in the file (see ``docs/security.md``): the header and the metadata are
checked against a schema (:mod:`bitswitch.export.schema`), the digest is verified (memory so far is
bounded by the file's size), the architecture is built on the ``meta`` device and every declared
tensor's shape and dtype compared with it, and only then is a real model allocated and the tensor
values checked. No pickle is
involved anywhere; writes go to a temporary file that replaces the target atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nn.convert import QuantConfig, convert, get_precision, quantized_layers, set_precision, to_integer
from . import container, ptq_form
from .atomic import atomic_write_bytes, atomic_write_json
from .schema import FORMAT, CheckpointError, check_values, decode_metadata

FORMAT_VERSION = 1


def integer_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every shared-scale quantized weight replaced by its int codes.

    Entries that are one tensor in the model (a tied head and embedding, Parameters or codes) are
    one tensor object here too, so :func:`split_tied` can store them once.
    """
    state = dict(model.state_dict(keep_vars=True))
    codes: dict[int, torch.Tensor] = {}
    for name, layer in quantized_layers(model).items():
        if not getattr(layer.weight_quant, "shared_scale", False):
            continue  # unshared variant: FP32 latent weights are its storage
        state.pop(f"{name}.weight", None)
        state[f"{name}.weight_int"] = codes.setdefault(id(layer.weight_quant), layer.integer_codes())
    copies: dict[int, torch.Tensor] = {}
    return {k: copies.setdefault(id(v), v.detach().contiguous().clone()) for k, v in state.items()}


def split_tied(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(unique tensors, {alias: primary})``: keys holding the very same tensor object are stored
    once, under the first key; the others become aliases (the ``tied`` metadata)."""
    first: dict[int, str] = {}
    unique: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for k, v in tensors.items():
        if id(v) in first:
            tied[k] = first[id(v)]
        else:
            first[id(v)] = k
            unique[k] = v
    return unique, tied


def tied_keys(model: nn.Module) -> dict[str, str]:
    """``{alias: primary}`` of the model's state-dict entries that are one Parameter or buffer."""
    return split_tied(dict(model.state_dict(keep_vars=True)))[1]


def read_tagged_json(path: str | os.PathLike, fmt: str, *, missing: str, wrong: str) -> dict[str, Any]:
    """Read a JSON document whose ``format`` is ``fmt`` and that has a ``layers`` mapping.

    ``missing`` is the full message of the FileNotFoundError for an absent file, ``wrong`` that of the
    ValueError for a readable JSON file of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt or not isinstance(doc.get("layers"), dict):
        raise ValueError(wrong)
    return doc


def save(model: nn.Module, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a checkpoint (see the module docstring for the layout): integer codes for a
    quantized model, the float state dict (``storage="float"``) for a model :func:`quantize` never saw."""
    config: QuantConfig | None = getattr(model, "bitswitch_config", None)
    if config is not None:
        untrained = sorted({w for w, _ in get_precision(model).values() if w is not None and w not in config.bits}, reverse=True)
        if untrained:  # added by add_bit_width: the file lists the trained bit-widths only, and loads at its recorded precision
            raise ValueError(f"the model is at untrained weight bit-width(s) {untrained} (add_bit_width); switch to one of {list(config.bits)} "
                             "before saving: the stored codes are the same, and add_bit_width after loading restores the others")
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "quant_config": json.dumps(None if config is None else config.to_dict()),
        "arch": json.dumps(getattr(model, "bitswitch_arch", None)),
        "precision": json.dumps({} if config is None else {k: list(v) for k, v in get_precision(model).items()}),
        "extra": json.dumps(extra or {}),
    }
    if config is None:
        metadata["storage"] = "float"
    state = integer_state_dict(model)
    ptq = getattr(model, "bitswitch_ptq", None)
    if ptq is not None:
        metadata["ptq"] = json.dumps(ptq)
        state = ptq_form.codes_state(model, state)
    tensors, tied = split_tied(state)
    if tied:
        metadata["tied"] = json.dumps(tied)
    return container.write(path, tensors, metadata)


def _checked_header(path: Path) -> tuple[container.Header, dict[str, Any]]:
    header = container.read_header(path, CheckpointError)
    return header, decode_metadata(header.metadata, path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded, validated metadata of a checkpoint from its header alone (no tensor is read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return _checked_header(path)[1]


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint: (tensors, decoded metadata). Raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    header, meta = _checked_header(path)
    tensors, _ = container.read(path, CheckpointError, header)
    return tensors, meta


def _build_arch(arch: dict[str, Any], path: Path, limit: int | None = None) -> nn.Module:
    """Build the named architecture; with ``limit``, refuse to register more than ``limit`` modules."""
    from ..models import build

    count = 0

    def guard(module: nn.Module, name: str, sub: nn.Module | None) -> None:
        nonlocal count
        count += 1
        if count > limit:  # type: ignore[operator]
            raise CheckpointError(f"{path}: metadata arch: the architecture has more modules than the file has tensors for ({limit})")

    handle = torch.nn.modules.module.register_module_module_registration_hook(guard) if limit is not None else None
    try:
        return build(arch["name"], **arch.get("kwargs", {}))
    except CheckpointError:
        raise
    except Exception as e:  # the constructor rejected its arguments
        raise CheckpointError(f"{path}: metadata arch: cannot build {arch['name']!r} with {arch.get('kwargs', {})} ({type(e).__name__}: {e})") from None
    finally:
        if handle is not None:
            handle.remove()


def _convert(model: nn.Module, config: QuantConfig | None, path: Path) -> nn.Module:
    """Quantize ``model`` as the checkpoint's config says (by name), in integer form."""
    if config is None:
        return model
    try:
        convert(model, config)
    except ValueError as e:
        raise CheckpointError(f"{path}: metadata quant_config: the model's layers do not match the checkpoint ({e})") from None
    if config.variant == "shared":
        to_integer(model)
    return model


def _redo_ptq(model: nn.Module, meta: dict[str, Any], path: Path) -> nn.Module:
    if "ptq" in meta:
        ptq_form.redo(model, meta["ptq"], path, meta["precision"])
    return model


def _compare(model: nn.Module, header: container.Header, meta: dict[str, Any], path: Path) -> None:
    """Every tensor the header declares must be one the model has, with the same dtype and shape."""
    tied = tied_keys(model)
    if meta["tied"] != tied:
        odd = sorted(set(meta["tied"].items()) ^ set(tied.items()))
        raise CheckpointError(f"{path}: metadata tied: does not match the model's tied tensors (first difference: {odd[0]})")
    expected = {k: (container.DTYPE_NAMES.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in model.state_dict().items() if k not in tied}
    if meta["storage"] == "packed":
        from .compact import packed_entries

        expected = packed_entries(expected, meta, path)
    if "ptq" in meta:
        expected = ptq_form.entries(model, expected, meta["precision"], path)
    declared = {k: (e.dtype, e.shape) for k, e in header.entries.items()}
    missing = sorted(set(expected) - set(declared))
    unexpected = sorted(set(declared) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: checkpoint does not fit the model: missing tensors {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    for k in sorted(expected):
        if expected[k] != declared[k]:
            raise CheckpointError(f"{path}: tensor {k}: the file declares {declared[k][0]} {list(declared[k][1])}, the model needs {expected[k][0]} {list(expected[k][1])}")


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model from a checkpoint, quantized layers in integer (deployment) form.

    Built-in architectures are rebuilt from the file alone. For a custom architecture pass the
    un-quantized ``model`` it was converted from (its weights are replaced). The result gives
    bit-identical outputs to the saved model at every bit-width, and is in eval mode. Any defect
    of the file raises :class:`CheckpointError` before a real model is allocated.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    header, meta = _checked_header(path)
    tensors, _ = container.read(path, CheckpointError, header)  # the digest, before anything is built
    config = QuantConfig.from_dict(meta["quant_config"]) if meta["quant_config"] is not None else None
    if model is None:
        if not meta["arch"]:
            raise CheckpointError(f"{path}: the checkpoint holds a custom architecture; pass the FP32 model: bitswitch.load(path, model=...)")
        if "factory" in meta["arch"]:  # importing it would run the user's code: only on their request
            spec, kwargs = meta["arch"]["factory"], meta["arch"].get("kwargs", {})
            raise CheckpointError(f"{path}: the checkpoint was trained from the model factory {spec!r}; build the FP32 model and pass it: "
                                  f"bitswitch.load(path, model=bitswitch.models.build({spec!r}, **{kwargs!r})) (this imports and runs {spec.partition(':')[0]!r})")
        # a bound on the modules a file of this many tensors can describe (a BatchNorm has 5, a ReLU 0)
        with torch.device("meta"):
            skeleton = _convert(_redo_ptq(_build_arch(meta["arch"], path, limit=8 * len(header.entries) + 256), meta, path), config, path)
        _compare(skeleton, header, meta, path)
        model = _convert(_redo_ptq(_build_arch(meta["arch"], path), meta, path), config, path)  # as the skeleton: already compared
    else:
        model = _convert(_redo_ptq(model, meta, path), config, path)
        _compare(model, header, meta, path)  # the only shape check for a caller's own model
    if meta["storage"] == "packed":
        from .compact import expand_packed

        tensors = expand_packed(tensors, meta, path)
    tensors.update({alias: tensors[primary] for alias, primary in meta["tied"].items()})
    if "ptq" in meta:
        tensors = ptq_form.expand_codes(model, tensors, meta["precision"], path)
        model.bitswitch_ptq = meta["ptq"]
    check_values(model, tensors, path)
    model.load_state_dict(tensors, strict=True)
    precision = meta["precision"]
    layers = sorted(quantized_layers(model))
    if sorted(precision) != layers:
        odd = sorted(set(precision) ^ set(layers))
        raise CheckpointError(f"{path}: metadata precision: must list every quantized layer exactly once; differs at {odd[:5]}")
    qlayers = quantized_layers(model)
    for name, (w, a) in precision.items():
        if w is not None and (a is None) != qlayers[name].weight_only:
            raise CheckpointError(f"{path}: metadata precision.{name}: {[w, a]} does not fit a {'weight-only' if qlayers[name].weight_only else 'weight+activation'} "
                                  f"layer ([w_bits, null] for weight-only layers, [w_bits, a_bits] otherwise)")
    if config is not None:
        try:
            set_precision(model, {k: tuple(v) if v[0] is not None else None for k, v in precision.items()})
        except ValueError as e:
            raise CheckpointError(f"{path}: metadata precision: {e}") from None
    model.bitswitch_extra = meta["extra"]
    return model.eval()


__all__ = ["save", "load", "read_checkpoint", "read_metadata", "CheckpointError", "integer_state_dict", "split_tied", "tied_keys", "atomic_write_bytes", "atomic_write_json", "read_tagged_json"]
