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

from ..progress import Progress
from ._args import COUNT, NON_NEGATIVE, bit_list
from ._data import labelled_batches, resolve_data, subnet_from_args
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
    p.add_argument("--batch-size", type=COUNT, default=1000, help="images (language models: windows) per forward pass (default 1000)")
    p.add_argument("--limit", type=COUNT, default=None, metavar="N",
                   help="evaluate on N images of the split only (a fixed seeded subset; the first N of an image folder; language models: "
                        "the first N windows of the context): a quick estimate (default: all)")
    p.add_argument("--recalibrate-bn", type=NON_NEGATIVE, default=None, metavar="N",
                   help="re-estimate BatchNorm statistics on N training images first (default: with --config, the precision "
                        "file's recipe, 256 images; otherwise 0). export --config takes the same option and ships the same model")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..cost import bops, layer_costs, model_bytes
    from ..nn.convert import set_precision

    path = Path(args.checkpoint)
    model, meta = load_model(args, path)
    if meta["quant_config"] is None and (args.bits or args.config):  # before any data is loaded
        raise ValueError(f"{path} is an FP32 checkpoint: --bits and --config apply to quantized checkpoints only")
    if args.config and args.bits:
        raise ValueError("--bits and --config exclude each other: --config evaluates the file's one mixed configuration")
    if "ptq" in meta and args.bits:
        raise ValueError(f"{path} is a bitswitch ptq result: one mixed configuration, evaluated as saved; --bits does not apply")
    extra = meta.get("extra") or {}
    if "lm" in extra:
        args.bits = bit_list(args.bits) if args.bits else None
        return _show(args, run_language_model(args, path, model, meta), f"{path} on {extra.get('dataset')} {args.split}")
    if args.split == "val":
        raise ValueError("--split val is the validation split of a language model's text; image checkpoints take test or train")
    name, root = resolve_data(args, extra)
    batches, _ = labelled_batches(name, root, extra, args.split, args.limit, args.batch_size)
    images = sum(int(y.shape[0]) for _, y in batches)
    avail = [] if meta["quant_config"] is None else list(meta["quant_config"]["bits"])  # []: an FP32 checkpoint
    runs = len(bit_list(args.bits) if args.bits else avail) if avail and not args.config and "ptq" not in meta else 1
    bar = Progress(runs * len(batches), "eval", unit="batch")  # the accuracy passes: one per row

    @torch.no_grad()
    def accuracy() -> float:
        correct = 0
        for x, y in batches:
            correct += int((model(x).argmax(1) == y).sum())
            bar.update()
        return 100.0 * correct / images

    def row(label: str) -> dict[str, Any]:
        costs = layer_costs(model, batches[0][0])
        return {"precision": label, "accuracy %": accuracy(), "model KB": model_bytes(costs) / 1024, "MBOPs": bops(costs) / 1e6}

    rows = []
    n_recal = 0 if args.config else (args.recalibrate_bn or 0)
    if n_recal:
        from ..nn.recalibrate import recalibrate_bn
        from ..search.subnet import BNRecipe

        r = BNRecipe(images=n_recal)
        recal, _ = labelled_batches(name, root, extra, r.split, r.images, r.batch_size, seed=r.seed)
    if not avail:
        if n_recal:
            recalibrate_bn(model, recal)
        rows.append(row("FP32"))
    elif args.config:  # the subnet export --config ships: the file's BN recipe (search/subnet.py)
        how = subnet_from_args(args, model, extra)
        rows.append(row(f"mixed ({Path(args.config).name}), {how}"))
    elif "ptq" in meta:
        rows.append(row("PTQ (mixed, as saved)"))
    else:
        bits = bit_list(args.bits) if args.bits else avail
        for b in bits:
            if b not in avail:
                raise ValueError(f"bit-width {b} is not one this checkpoint supports; valid: {avail}")
        for b in bits:
            set_precision(model, b)
            if n_recal:
                recalibrate_bn(model, recal)
            rows.append(row(f"W{b}A{b}"))
    bar.close()
    subset = f", --limit {args.limit}: a subset, omit it for the whole split" if args.limit else ""
    return _show(args, rows, f"{path} on {name} {args.split} ({images} images{subset}); BOPs per image, quantized layers only")


def _show(args: argparse.Namespace, rows: list[dict[str, Any]], title: str) -> int:
    """Print the rows as a table under ``title`` (and write them to ``--json``)."""
    from ..export.checkpoint import atomic_write_json
    from ..table import print_table

    print(title)
    print_table(list(rows[0]), rows)
    if args.json:
        atomic_write_json(args.json, rows)
    return 0
