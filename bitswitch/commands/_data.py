"""Which dataset a command reads: one rule for eval, export, hessian and search."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def resolve_data(args: argparse.Namespace, extra: dict[str, Any]) -> tuple[str, str | None]:
    """(dataset name, folder or None) from ``--data``/``--dataset``/``--data-root`` or the checkpoint's metadata.

    ``--data`` may be a dataset name (then ``--data-root`` or ``$BITSWITCH_DATA`` locates it) or a
    folder (then ``--dataset`` or the folder's name says what it holds); without either, the
    checkpoint's training config decides which dataset, never which folder: a file's metadata cannot
    point a command at a path (``docs/security.md``).
    """
    from ..data import DATASETS, canonical_name

    trained = extra.get("train_config") or {}
    data_root = getattr(args, "data_root", None)
    if args.data and canonical_name(args.data) in DATASETS:
        return args.data, data_root
    if args.data and not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data!r} is neither a dataset name ({', '.join(DATASETS)}) nor a folder")
    name = args.dataset or extra.get("dataset") or trained.get("dataset")
    root = args.data or data_root
    if name is None and root is not None:
        name = Path(root).name
    if name is None:
        raise ValueError("the checkpoint does not say which data it was trained on: "
                         "pass --data NAME (or --data FOLDER --dataset NAME)")
    return name, root
