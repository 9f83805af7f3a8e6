"""A searched subnet as ``eval --config`` scores it and ``export --config`` ships it.

A precision file (:mod:`bitswitch.nn.precision_file`) names each layer's bits; the supernet's per-bit
BatchNorms hold statistics for the uniform configurations it was trained on, and a mixed
configuration loses up to ~10 points with them (issue 19's CIFAR-10 walk: 45.45 % as trained, 50.71 %
with re-estimated statistics). So the subnet *is* the configuration plus BatchNorm statistics re-estimated
by a recipe: which split, how many images, batch size and seed. ``bitswitch search`` writes that
recipe into the file (``bn_recalibration``), and :func:`build_subnet` is the one place that follows
it, so every command that reads the file builds the same model from the same images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from torch import nn

from ..nn.precision_file import apply_precision_file, read_precision_file
from ..nn.recalibrate import active_batchnorms, recalibrate_bn

RECIPE_KEY = "bn_recalibration"


@dataclass(frozen=True)
class BNRecipe:
    """How a subnet's BatchNorm statistics are re-estimated: ``images`` of ``split`` (0: keep the
    supernet's), a seeded subset read in batches of ``batch_size``."""

    images: int = 256
    batch_size: int = 128
    seed: int = 0
    split: str = "train"

    def __post_init__(self) -> None:
        if not (isinstance(self.images, int) and self.images >= 0):
            raise ValueError(f"BN recipe: images must be an integer >= 0, got {self.images!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"BN recipe: batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"BN recipe: seed must be an integer, got {self.seed!r}")
        if self.split not in ("train", "test"):
            raise ValueError(f"BN recipe: split must be 'train' or 'test', got {self.split!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_images(self, images: int | None) -> BNRecipe:
        """This recipe with another image count (``None``: unchanged), e.g. from ``--recalibrate-bn N``."""
        return self if images is None else replace(self, images=images)


def read_recipe(path: str | os.PathLike) -> BNRecipe:
    """The file's recipe; the default one for a file without (hand-written, or from an older search)."""
    read_precision_file(path)  # the same checks and messages as every precision file
    with open(path) as f:
        raw = json.load(f).get(RECIPE_KEY)
    if raw is None:
        return BNRecipe()
    names = {f.name for f in fields(BNRecipe)}
    if not isinstance(raw, dict) or set(raw) - names:
        raise ValueError(f"{path}: {RECIPE_KEY} must be an object with keys {sorted(names)}, got {raw!r}")
    return BNRecipe(**raw)


#: ``load(recipe) -> batches``: the recipe's images of the data the command was pointed at
Loader = Callable[[BNRecipe], Sequence[Any]]


def build_subnet(model: nn.Module, path: str | os.PathLike, load: Loader | None, *, recipe: BNRecipe | None = None,
                 others_stay: bool = False) -> int:
    """Set ``model`` (in place) to the subnet of precision file ``path``; returns the number of images its
    BatchNorm statistics were re-estimated on (0: none, by the recipe or because it has no BatchNorm).

    ``recipe`` defaults to the file's (:func:`read_recipe`). ``load`` supplies its images; ``None``
    only where the recipe asks for none.
    """
    recipe = recipe or read_recipe(path)
    apply_precision_file(model, path, others_stay=others_stay)
    if not recipe.images or not active_batchnorms(model):
        return 0
    if load is None:
        raise ValueError(f"{path}: its BatchNorm statistics are re-estimated on {recipe.images} {recipe.split} images, but no data was given")
    return recalibrate_bn(model, load(recipe))


__all__ = ["BNRecipe", "Loader", "RECIPE_KEY", "build_subnet", "read_recipe"]
