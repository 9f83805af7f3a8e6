"""``bitswitch info CKPT``: what a checkpoint (integer, PTQ, or an FP32 run's) holds, layer by layer.

It needs only the file: a custom architecture is described from the file's tensors and metadata
(with ``--model``/``--trust-factory`` it is rebuilt, and MACs are counted too).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..cost import layer_costs, layer_table, model_bytes
from ..export.checkpoint import read_checkpoint
from ..export.schema import input_shape
from ..table import format_table
from ._model import add_model_args, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a checkpoint", description="Print the quantization config, file size and per-layer table of a checkpoint.")
    p.add_argument("checkpoint", help="a .safetensors file written by bitswitch")
    p.add_argument("--input-shape", default=None, help="one sample's shape for MAC counts, e.g. 3,32,32 (default: from the checkpoint's metadata)")
    add_model_args(p)
    p.set_defaults(func=run)


SHOWN = 8  # list entries of a setting shown before "(+N more)"; the layer table below names every layer


def settings_table(config: dict[str, Any]) -> str:
    """One row per quantization setting; lists and mappings as short comma-separated text."""
    def text(v: Any) -> str:
        items = [f"{k} -> {w}" for k, w in v.items()] if isinstance(v, dict) else v if isinstance(v, list) else None
        if items is None:
            return json.dumps(v) if v is None or isinstance(v, bool) else str(v)
        more = f", ... (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
        return (", ".join(map(str, items[:SHOWN])) + more) or "-"

    return format_table(["setting", "value"], [(k, text(v)) for k, v in config.items()])


def stored_layers(tensors: dict, meta: dict) -> str:
    """One row per quantized layer, from the file alone: stored weight, its dtype and precision."""
    rows = []
    for name in (meta["quant_config"] or {}).get("quantized", []):
        w = tensors.get(f"{name}.weight_int", tensors.get(f"{name}.weight"))
        w_bits, a_bits = meta["precision"].get(name, [None, None])
        rows.append((name, "x".join(map(str, w.shape)) if w is not None else "-", str(w.dtype).removeprefix("torch.") if w is not None else "-",
                     "fp" if w_bits is None else w_bits, "fp" if a_bits is None else a_bits))
    return format_table(["layer", "weight shape", "stored as", "w bits", "a bits"], rows)


def run(args: argparse.Namespace) -> int:
    tensors, meta = read_checkpoint(args.checkpoint)
    print(f"file: {args.checkpoint} ({os.path.getsize(args.checkpoint):,} bytes, {len(tensors)} tensors)")
    print(f"architecture: {json.dumps(meta['arch'])}")
    if meta["quant_config"] is None:
        print("quantization: none (FP32 checkpoint)")
    else:
        print("quantization:")
        print(settings_table(meta["quant_config"]))
    if "ptq" in meta:
        print(f"post-training: {len(meta['ptq']['folded_bn'])} BatchNorms folded, biases added to {len(meta['ptq']['added_bias'])} layers")
    buildable = (meta["arch"] or {}).get("name") is not None or args.model or (args.trust_factory and (meta["arch"] or {}).get("factory"))
    if not buildable:
        print("custom architecture (described from the file; pass --model package.module:factory for MACs)")
        if meta["quant_config"] is not None:
            print(stored_layers(tensors, meta))
        return 0
    model, _ = load_model(args, args.checkpoint)
    raw = args.input_shape or meta["extra"].get("input_shape")
    shape = input_shape(raw, "--input-shape" if args.input_shape else "the checkpoint's extra.input_shape") if raw else None
    if shape:
        costs = layer_costs(model, shape)
        print(layer_table(costs))
        print(f"model bytes at current precision: {model_bytes(costs):,.0f}")
    return 0
