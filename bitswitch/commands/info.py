"""``bitswitch info CKPT``: what a checkpoint (integer, or an FP32 run's) holds, layer by layer."""

from __future__ import annotations

import argparse
import json
import os

from ..cost import layer_costs, layer_table, model_bytes
from ..export.checkpoint import load, read_checkpoint
from ..export.schema import input_shape


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a checkpoint", description="Print the quantization config, file size and per-layer table of a checkpoint.")
    p.add_argument("checkpoint", help="a .safetensors file written by bitswitch")
    p.add_argument("--input-shape", default=None, help="one sample's shape for MAC counts, e.g. 3,32,32 (default: from the checkpoint's metadata)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _, meta = read_checkpoint(args.checkpoint)
    model = load(args.checkpoint)
    raw = args.input_shape or meta["extra"].get("input_shape")
    shape = input_shape(raw, "--input-shape" if args.input_shape else "the checkpoint's extra.input_shape") if raw else None
    print(f"file: {args.checkpoint} ({os.path.getsize(args.checkpoint):,} bytes)")
    print(f"architecture: {json.dumps(meta['arch'])}")
    print(f"quantization: {'none (FP32 checkpoint)' if meta['quant_config'] is None else json.dumps(meta['quant_config'])}")
    if shape:
        costs = layer_costs(model, shape)
        print(layer_table(costs))
        print(f"model bytes at current precision: {model_bytes(costs):,.0f}")
    return 0
