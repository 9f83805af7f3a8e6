"""A class-folder image tree (``<root>/train/<class>/*.jpg``, ``<root>/test/<class>/*.jpg``) as in-memory uint8 arrays.

Small user datasets train like the built-in ones (seeded shuffling, batched augmentation, the
validation split) once decoded into an :class:`ArrayDataset`. Folders are read by
:class:`~.imagenet.ImageFolderDataset` (the same layouts, including a ``labels.csv``); images are
converted to RGB and either share one size or are resized (short side) and centre-cropped to
``image_size``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .arrays import ArrayDataset
from .errors import DataError, layout_error
from .imagenet import LAYOUTS, ImageFolderDataset, Preprocess

SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}
#: decoding more than this many images into memory is refused (use a streaming loader for ImageNet-sized data)
MAX_IMAGES = 200_000


def load_image_folder(root: str | Path, split: str, image_size: int = 0) -> ArrayDataset:
    """``split`` ("train"/"test"; "test" reads ``test/`` or else ``val/``) of the tree at ``root``."""
    root = Path(root).expanduser()
    if split not in SPLIT_FOLDERS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    folder = next((root / f for f in SPLIT_FOLDERS[split] if (root / f).is_dir()), None)
    if folder is None:
        layouts = [f"<root>/{'|'.join(SPLIT_FOLDERS[s])}/ holding one of: {lay}" for s in SPLIT_FOLDERS for lay in LAYOUTS[:1]]
        raise layout_error("image folder", root, layouts, f"no {' or '.join(SPLIT_FOLDERS[split])}/ folder")
    size = image_size or None
    ds = ImageFolderDataset(folder, preprocess=Preprocess(resize=size, crop=size))
    if len(ds) > MAX_IMAGES:
        raise DataError(f"{folder}: {len(ds)} images; decoding more than {MAX_IMAGES} into memory is refused")
    images = []
    for i in range(len(ds)):
        img = np.asarray(ds.preprocess.resize_image(ds.load_image(i)), dtype=np.uint8)
        if images and img.shape != images[0].shape:
            raise DataError(f"{ds.samples[i][0]}: image of size {img.shape[1]}x{img.shape[0]}, the first one is "
                            f"{images[0].shape[1]}x{images[0].shape[0]}; set image_size to resize and crop every image")
        images.append(img)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return ArrayDataset(x, ds.labels, list(ds.classes))


__all__ = ["load_image_folder"]
