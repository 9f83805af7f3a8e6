"""``bitswitch eval CKPT --bits 8,6,4,2 --data ...``: accuracy, model size and BOPs per bit-width.

An FP32 run's checkpoint gives one row, ``FP32``.

With ``--config subnet.json`` (a per-layer precision file, :mod:`bitswitch.nn.precision_file`) it
evaluates that one mixed-precision configuration instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._args import COUNT, NON_NEGATIVE
from ._data import resolve_data


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint at several bit-widths (accuracy, size, BOPs)",
                       description="Reload a checkpoint from its integer file and print accuracy, model bytes and BOPs per bit-width.")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by bitswitch (train, quickstart or bitswitch.save)")
    p.add_argument("--bits", default=None, help="comma-separated bit-widths, e.g. 8,6,4,2 (default: every bit-width of the checkpoint)")
    p.add_argument("--config", default=None, help="a per-layer precision JSON file: evaluate that mixed configuration")
    p.add_argument("--others-stay", action="store_true", help="with --config: layers the file does not list keep their precision (default: an error)")
    p.add_argument("--data", default=None, help="dataset folder, or a dataset name (digits); default: the one the checkpoint was trained on")
    p.add_argument("--dataset", default=None, help="dataset name (fashion_mnist, cifar10, digits) when --data is a folder the checkpoint does not name")
    p.add_argument("--split", default="test", choices=("test", "train"), help="which split to evaluate (default: test)")
    p.add_argument("--batch-size", type=COUNT, default=1000)
    p.add_argument("--recalibrate-bn", type=NON_NEGATIVE, default=None, metavar="N",
                   help="re-estimate BatchNorm statistics on N training images first (default: 256 with --config, 0 otherwise)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
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
    from ..data import TensorLoader, dataset_stats, load_dataset
    from ..export.checkpoint import atomic_write_json, load, read_checkpoint
    from ..nn.convert import set_precision
    from ..nn.precision_file import apply_precision_file
    from ..table import print_table

    path = Path(args.checkpoint)
    _, meta = read_checkpoint(path)
    if meta["quant_config"] is None and (args.bits or args.config):  # before any data is loaded
        raise ValueError(f"{path} is an FP32 checkpoint: --bits and --config apply to quantized checkpoints only")
    extra = meta.get("extra") or {}
    name, root = resolve_data(args, extra)
    ds = load_dataset(name, root, args.split)
    stats = dataset_stats(name)
    mean, std = extra.get("mean", stats.get("mean")), extra.get("std", stats.get("std"))
    loader = TensorLoader(ds, args.batch_size, shuffle=False, mean=mean, std=std)
    model = load(path)
    avail = [] if meta["quant_config"] is None else list(meta["quant_config"]["bits"])  # []: an FP32 checkpoint
    shape = list(ds.images.shape[1:])

    @torch.no_grad()
    def accuracy() -> float:
        correct = 0
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
        return 100.0 * correct / len(ds)

    def row(label: str) -> dict[str, Any]:
        costs = layer_costs(model, shape)
        return {"precision": label, "accuracy %": accuracy(), "model KB": model_bytes(costs) / 1024, "MBOPs": bops(costs) / 1e6}

    rows = []
    n_recal = args.recalibrate_bn if args.recalibrate_bn is not None else (256 if args.config else 0)
    if n_recal:
        from ..data import ArrayDataset
        from ..nn.recalibrate import recalibrate_bn

        train = load_dataset(name, root, "train")
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n_recal]
        recal = list(TensorLoader(ArrayDataset(train.images[idx], train.labels[idx], train.classes), 128, shuffle=False, mean=mean, std=std))
    if not avail:
        if n_recal:
            recalibrate_bn(model, recal)
        rows.append(row("FP32"))
    elif args.config:
        apply_precision_file(model, args.config, others_stay=args.others_stay)
        if n_recal:  # measured: mixed configurations lose up to ~10 points with the per-bit BNs as trained
            recalibrate_bn(model, recal)
        rows.append(row(f"mixed ({Path(args.config).name})" + (f", BN re-estimated on {n_recal} images" if n_recal else "")))
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
    print(f"{path} on {name} {args.split} ({len(ds)} images); BOPs per image, quantized layers only")
    print_table(list(rows[0]), rows)
    if args.json:
        atomic_write_json(args.json, rows)
    return 0
