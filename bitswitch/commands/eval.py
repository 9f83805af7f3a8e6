"""``bitswitch eval CKPT --bits 8,6,4,2 --data ...``: accuracy, model size and BOPs per bit-width.

An FP32 run's checkpoint gives one row, ``FP32``; a ``bitswitch ptq`` result one row, its mixed
configuration as saved. Custom architectures take ``--model``/``--trust-factory``
(:mod:`bitswitch.commands._model`); the data may be a built-in dataset or the ImageNet-style
folder ``bitswitch ptq`` reads.

With ``--config subnet.json`` (a per-layer precision file, :mod:`bitswitch.nn.precision_file`) it
evaluates that one mixed-precision configuration instead.

A language-model checkpoint (one with a vocabulary record) gives loss in nats per character and
perplexity per bit-width on its text's test, validation (``--split val``) or training split
(:mod:`bitswitch.commands._eval_lm`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._args import COUNT, NON_NEGATIVE
from ._data import labelled_batches, resolve_data
from ._eval_lm import TEXT_SPLITS, run_language_model
from ._model import add_model_args, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint at several bit-widths (accuracy, size, BOPs)",
                       description="Reload a checkpoint from its integer file and print accuracy, model bytes and BOPs per bit-width.")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by bitswitch (train, quickstart or bitswitch.save)")
    p.add_argument("--bits", default=None, help="comma-separated bit-widths, e.g. 8,6,4,2 (default: every bit-width of the checkpoint)")
    p.add_argument("--config", default=None, help="a per-layer precision JSON file: evaluate that mixed configuration")
    p.add_argument("--others-stay", action="store_true", help="with --config: layers the file does not list keep their precision (default: an error)")
    p.add_argument("--data", default=None, help="dataset folder (a built-in dataset's, or an ImageNet-style folder as bitswitch ptq reads), "
                   "or a dataset name (digits); default: the one the checkpoint was trained on")
    p.add_argument("--dataset", default=None, help="dataset name (fashion_mnist, cifar10, digits, imagenet) when --data is a folder the checkpoint does not name")
    p.add_argument("--split", default="test", choices=TEXT_SPLITS, help="which split to evaluate (default: test; val: language models only)")
    p.add_argument("--batch-size", type=COUNT, default=1000)
    p.add_argument("--recalibrate-bn", type=NON_NEGATIVE, default=None, metavar="N",
                   help="re-estimate BatchNorm statistics on N training images first (default: 256 with --config, 0 otherwise)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    add_model_args(p)
    p.set_defaults(func=run)


def _parse_bits(text: str) -> list[int]:
    try:
        bits = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--bits must be comma-separated integers, e.g. 8,6,4,2; got {text!r}") from None
    if not bits:
        raise ValueError("--bits must name at least one bit-width")
    return bits


def run(args: argparse.Namespace) -> int:
    import torch

    from ..cost import bops, layer_costs, model_bytes
    from ..nn.convert import set_precision
    from ..nn.precision_file import apply_precision_file

    path = Path(args.checkpoint)
    model, meta = load_model(args, path)
    if meta["quant_config"] is None and (args.bits or args.config):  # before any data is loaded
        raise ValueError(f"{path} is an FP32 checkpoint: --bits and --config apply to quantized checkpoints only")
    if "ptq" in meta and args.bits:
        raise ValueError(f"{path} is a bitswitch ptq result: one mixed configuration, evaluated as saved; --bits does not apply")
    extra = meta.get("extra") or {}
    if "lm" in extra:
        args.bits = _parse_bits(args.bits) if args.bits else None
        return _show(args, run_language_model(args, path, model, meta), f"{path} on {extra.get('dataset')} {args.split}")
    if args.split == "val":
        raise ValueError("--split val is the validation split of a language model's text; image checkpoints take test or train")
    name, root = resolve_data(args, extra)
    batches, _ = labelled_batches(name, root, extra, args.split, None, args.batch_size)
    images = sum(int(y.shape[0]) for _, y in batches)
    avail = [] if meta["quant_config"] is None else list(meta["quant_config"]["bits"])  # []: an FP32 checkpoint

    @torch.no_grad()
    def accuracy() -> float:
        return 100.0 * sum(int((model(x).argmax(1) == y).sum()) for x, y in batches) / images

    def row(label: str) -> dict[str, Any]:
        costs = layer_costs(model, batches[0][0])
        return {"precision": label, "accuracy %": accuracy(), "model KB": model_bytes(costs) / 1024, "MBOPs": bops(costs) / 1e6}

    rows = []
    n_recal = args.recalibrate_bn if args.recalibrate_bn is not None else (256 if args.config else 0)
    if n_recal:
        from ..nn.recalibrate import recalibrate_bn

        recal, _ = labelled_batches(name, root, extra, "train", n_recal, 128, seed=0)
    if not avail:
        if n_recal:
            recalibrate_bn(model, recal)
        rows.append(row("FP32"))
    elif args.config:
        apply_precision_file(model, args.config, others_stay=args.others_stay)
        if n_recal:  # measured: mixed configurations lose up to ~10 points with the per-bit BNs as trained
            recalibrate_bn(model, recal)
        rows.append(row(f"mixed ({Path(args.config).name})" + (f", BN re-estimated on {n_recal} images" if n_recal else "")))
    elif "ptq" in meta:
        rows.append(row("PTQ (mixed, as saved)"))
    else:
        bits = _parse_bits(args.bits) if args.bits else avail
        for b in bits:
            if b not in avail:
                raise ValueError(f"bit-width {b} is not one this checkpoint supports; valid: {avail}")
        for b in bits:
            set_precision(model, b)
            if n_recal:
                recalibrate_bn(model, recal)
            rows.append(row(f"W{b}A{b}"))
    return _show(args, rows, f"{path} on {name} {args.split} ({images} images); BOPs per image, quantized layers only")


def _show(args: argparse.Namespace, rows: list[dict[str, Any]], title: str) -> int:
    """Print the rows as a table under ``title`` (and write them to ``--json``)."""
    from ..export.checkpoint import atomic_write_json
    from ..table import print_table

    print(title)
    print_table(list(rows[0]), rows)
    if args.json:
        atomic_write_json(args.json, rows)
    return 0
