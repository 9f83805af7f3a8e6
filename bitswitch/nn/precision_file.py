"""Per-layer precision configurations as JSON files (searched subnets, PTQ results).

Format::

    {"format": "bitswitch-precision", "version": 1,
     "layers": {"layer1.0.conv1": [4, 8], ...},   # [weight_bits, act_bits]; act_bits null for weight-only layers
     ...any extra keys (budget, objective, accuracy) are kept and ignored...}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..export.checkpoint import atomic_write_json, read_tagged_json
from .convert import quantized_layers, set_precision

FORMAT = "bitswitch-precision"


def write_precision_file(path: str | os.PathLike, layers: Mapping[str, tuple[int, int | None]], **extra: Any) -> Path:
    doc = {"format": FORMAT, "version": 1, "layers": {k: [int(v[0]), None if v[1] is None else int(v[1])] for k, v in layers.items()}, **extra}
    return atomic_write_json(path, doc)


def apply_precision_file(model: nn.Module, path: str | os.PathLike, *, others_stay: bool = False) -> dict[str, tuple[int, int]]:
    """Set ``model`` to the precision file's configuration; it must name every quantized layer.

    A file missing a layer would silently leave that layer at its current precision; that is an error
    unless ``others_stay`` (the CLI's ``--others-stay``) says so.
    """
    spec = read_precision_file(path)
    missing = [n for n in quantized_layers(model) if n not in spec]
    if missing and not others_stay:
        raise ValueError(f"{path}: no precision for {len(missing)} quantized layer(s) ({', '.join(missing[:5])}); "
                         "list every layer, or pass --others-stay to keep their current precision")
    set_precision(model, spec)
    return spec


def read_precision_file(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    path = Path(path)
    doc = read_tagged_json(
        path, FORMAT, missing=f"precision config not found: {path}",
        wrong=f"{path}: not a bitswitch precision file (expected {{\"format\": \"{FORMAT}\", \"layers\": {{name: [w_bits, a_bits]}}}})",
    )
    out = {}
    for name, v in doc["layers"].items():
        if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and (v[1] is None or isinstance(v[1], int))):
            raise ValueError(f"{path}: layer {name!r} must map to [weight_bits, act_bits] ([weight_bits, null] for weight-only layers), got {v!r}")
        out[name] = (v[0], v[1])
    return out
