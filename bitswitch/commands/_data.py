"""Which dataset a command reads: one rule for eval, export, hessian and search (built-in datasets,
and the ImageNet-style folders ``bitswitch ptq`` reads)."""

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


def is_image_folder(name: str, root: str | None) -> bool:
    """The ImageNet-style folder ``bitswitch ptq`` reads (``images/`` + ``labels.csv``)."""
    return name == "imagenet" or (root is not None and (Path(root) / "labels.csv").is_file())


def labelled_batches(name: str, root: str | None, extra: dict[str, Any], split: str, samples: int | None,
                     batch_size: int, *, seed: int = 0, skip: int = 0) -> tuple[list[tuple[Any, Any]], tuple[int, ...]]:
    """``(batches, one sample's shape)`` of a built-in dataset (a seeded subset of ``split``) or of an
    ImageNet-style folder (its images in sorted order, ``split`` ignored, preprocessed as the
    checkpoint's ``extra.preprocess`` says: ``imagenet`` or ``efficientnet_lite``)."""
    if not is_image_folder(name, root):
        from ..data import DataError, canonical_name, default_data_root
        from ..search.evaluate import dataset_batches

        if root is None and canonical_name(name) != "digits" and default_data_root() is None:  # the library's message names root=, not a flag
            raise DataError(f"no folder for dataset {name!r}: pass --data FOLDER (the folder holding its files) "
                            f"or set BITSWITCH_DATA to a folder with a '{name}/' sub-folder")
        return dataset_batches(name, root, split, samples, batch_size, seed=seed, skip=skip,
                               mean=extra.get("mean"), std=extra.get("std"))
    from ..data import batches, efficientnet_lite_preprocess, imagenet_preprocess, load_imagenet_samples

    if root is None:
        raise ValueError("ImageNet-style data needs its folder: pass --data FOLDER")
    kind = extra.get("preprocess", "imagenet")
    if kind not in ("imagenet", "efficientnet_lite"):
        raise ValueError(f"extra.preprocess {kind!r} must be 'imagenet' or 'efficientnet_lite'")
    ds = load_imagenet_samples(root, efficientnet_lite_preprocess() if kind == "efficientnet_lite" else imagenet_preprocess())
    order = sorted(range(len(ds)), key=lambda i: ds.samples[i][0].name)[skip:]
    order = order[:samples] if samples is not None else order
    if not order:
        raise ValueError(f"{root} has no images left to use (skip={skip})")
    out = list(batches(ds, batch_size, indices=order, num_threads=2))
    return out, tuple(out[0][0].shape[1:])


def subnet_from_args(args: argparse.Namespace, model: Any, extra: dict[str, Any]) -> str:
    """Set ``model`` to ``args.config``'s subnet exactly as ``eval --config`` scores it and ``export
    --config`` ships it (:func:`bitswitch.search.subnet.build_subnet`: the file's BatchNorm recipe, or
    ``--recalibrate-bn N`` images, of the data ``--data`` or the checkpoint names); returns how."""
    from ..search.subnet import BNRecipe, build_subnet, read_recipe

    recipe = read_recipe(args.config).with_images(args.recalibrate_bn)

    def load(r: BNRecipe) -> list[tuple[Any, Any]]:
        try:
            name, root = resolve_data(args, extra)
        except ValueError as e:
            raise ValueError(f"{e}; the subnet's BatchNorm statistics are re-estimated on {r.images} {r.split} images "
                             "(--recalibrate-bn 0 keeps the supernet's)") from None
        return labelled_batches(name, root, extra, r.split, r.images, r.batch_size, seed=r.seed)[0]

    n = build_subnet(model, args.config, load, recipe=recipe, others_stay=args.others_stay)
    return f"BN re-estimated on {n} {recipe.split} images (seed {recipe.seed})" if n else "BN statistics as trained"


def language_model(extra: dict[str, Any]) -> Any:
    """The checkpoint's :class:`bitswitch.lm.LMInfo`, or None for a model that is not a language model."""
    from ..lm import NotALanguageModel, read_lm_info

    try:
        return read_lm_info(extra)
    except NotALanguageModel:
        return None


def lm_text(args: argparse.Namespace, info: Any) -> Any:
    """The Shakespeare splits of a language model (``--data FOLDER``, else ``--data-root``, else
    ``$BITSWITCH_DATA``), refused when their vocabulary is not the checkpoint's."""
    from ..data import DataError, default_data_root
    from ..data.text import load_shakespeare

    data = getattr(args, "data", None)
    # --data shakespeare (the name) is found in $BITSWITCH_DATA or --data-root; a folder that does not exist is named in the error
    root = (None if data == "shakespeare" else data) or getattr(args, "data_root", None)
    if root is None and default_data_root() is None:  # the library's message names data_root=, not a flag
        raise DataError("a language model's text: pass --data FOLDER (the folder holding plays/, e.g. ../shared/data/shakespeare) or set BITSWITCH_DATA")
    splits = load_shakespeare(root)
    if splits.vocab.chars != info.vocab.chars:
        raise ValueError(f"the text in {root or '$BITSWITCH_DATA'} has another vocabulary ({len(splits.vocab)} characters) "
                         f"than the checkpoint's ({len(info.vocab)}): pass the data it was trained on with --data FOLDER")
    return splits


def text_batches(args: argparse.Namespace, info: Any, split: str, samples: int, batch_size: int, *,
                 seed: int = 0, skip: int = 0) -> list[tuple[Any, Any]]:
    """``samples`` windows of a language model's context at seeded random offsets of a Shakespeare
    split (``--data FOLDER``, else ``--data-root``, else ``$BITSWITCH_DATA``), as ``(inputs, next
    characters)`` batches; ``skip`` drops the first ``skip`` windows of the same seeded draw, so
    ``(samples=a)`` and ``(samples=b, skip=a)`` never share a draw."""
    import torch

    from ..data.text import random_windows

    ids = lm_text(args, info).split(split)
    if ids.numel() <= info.context:
        raise ValueError(f"the {split} split has {ids.numel()} characters, fewer than one window of {info.context} + 1")
    x, y = random_windows(ids, skip + samples, info.context, torch.Generator().manual_seed(seed))
    x, y = x[skip:], y[skip:]
    return [(x[i: i + batch_size], y[i: i + batch_size]) for i in range(0, samples, batch_size)]
