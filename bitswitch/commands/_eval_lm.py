"""``bitswitch eval`` of a language-model checkpoint: loss (nats per character) and perplexity per bit-width.

The text is the dataset the checkpoint was trained on, read from ``--data`` (the folder holding
``plays/``, or its parent) or ``$BITSWITCH_DATA``, never from a path in the file's metadata
(``docs/security.md``); its vocabulary must be the checkpoint's. The loss is
:func:`bitswitch.lm.lm_loss`, the one evaluation of every language-model workflow.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from ..lm import lm_loss, perplexity, read_lm_info
from ._data import lm_text

TEXT_SPLITS = ("test", "val", "train")


def run_language_model(args: argparse.Namespace, path: Path, model: nn.Module, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``bitswitch eval`` for a language-model checkpoint (one per bit-width, or the FP32 model)."""
    import torch

    from ..cost import layer_costs, model_bytes
    from ..nn.convert import quantized_layers, set_precision
    from ..nn.precision_file import apply_precision_file

    extra = meta.get("extra") or {}
    info = read_lm_info(extra)
    dataset = extra.get("dataset")
    if args.dataset not in (None, dataset):
        raise ValueError(f"{path} is a language model trained on {dataset!r}; --dataset {args.dataset!r} does not apply")
    if args.recalibrate_bn:
        raise ValueError("--recalibrate-bn re-estimates BatchNorm statistics; a language model has none")
    text = lm_text(args, info)
    ids = text.split(args.split)
    quant = meta["quant_config"]
    avail = [] if quant is None else list(quant["bits"])
    weight_only = bool(avail) and all(m.weight_only for m in quantized_layers(model).values())

    def row(label: str) -> dict[str, Any]:
        loss = lm_loss(model, ids, info.context, batch_size=args.batch_size, limit=args.limit * info.context + 1 if args.limit else 0)
        kb = model_bytes(layer_costs(model, torch.zeros(1, info.context, dtype=torch.long))) / 1024
        return {"precision": label, "loss nats/char": loss, "perplexity": perplexity(loss), "model KB": kb}

    if not avail:
        return [row("FP32")]
    if args.config:
        apply_precision_file(model, args.config, others_stay=args.others_stay)
        return [row(f"mixed ({Path(args.config).name})")]
    bits = args.bits or avail
    bad = [b for b in bits if b not in avail]
    if bad:
        raise ValueError(f"bit-width {bad[0]} is not one this checkpoint supports; valid: {avail}")
    rows = []
    for b in bits:
        set_precision(model, b)
        rows.append(row(f"W{b}" if weight_only else f"W{b}A{b}"))
    return rows


__all__ = ["TEXT_SPLITS", "run_language_model"]
