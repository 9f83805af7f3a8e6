"""ImageNet-style image folders with lazy PIL decoding and torchvision-free preprocessing."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import DataError, layout_error, require_8bit

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderDataset",
    "Preprocess",
    "batches",
    "efficientnet_lite_preprocess",
    "imagenet_preprocess",
    "load_imagenet_samples",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
LABEL_FILE_NAMES = ("labels.csv",)

LAYOUTS = [
    "class sub-folders: <root>/<class>/*.jpg|jpeg|png|... (class index = position in sorted folder names)",
    "flat folder + label file: images in <root> (or <root>/images) and a CSV <root>/labels.csv "
    "(or labels_file=...) with header 'filename,wnid,class_index' (wnid optional)",
]

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class Preprocess:
    """Evaluation preprocessing: resize short side, centre crop, scale to [0, 1], normalise.

    Mirrors torchvision's ``Resize(resize) -> CenterCrop(crop) -> ToTensor() -> Normalize(mean, std)``
    on PIL images (short side -> ``resize``, long side ``int(resize * long / short)``; crop offsets
    ``round((size - crop) / 2)``). ``resize=None`` / ``crop=None`` skip that step. ``mean``/``std``
    are in [0, 1] units, one value per channel.
    """

    resize: int | None = 256
    crop: int | None = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise DataError(
                f"Preprocess interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if len(self.mean) != len(self.std):
            raise DataError("Preprocess mean and std must have the same length")
        if any(s <= 0 for s in self.std):
            raise DataError("Preprocess std values must be positive")

    def resize_image(self, img: Image.Image) -> Image.Image:
        if self.resize is not None:
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.resize, int(self.resize * long / short)
            size = (new_short, new_long) if w <= h else (new_long, new_short)
            if size != img.size:
                img = img.resize(size, _INTERPOLATIONS[self.interpolation])
        if self.crop is not None:
            w, h = img.size
            if w < self.crop or h < self.crop:
                raise DataError(f"image of size {w}x{h} is smaller than the crop {self.crop}")
            left = int(round((w - self.crop) / 2.0))
            top = int(round((h - self.crop) / 2.0))
            img = img.crop((left, top, left + self.crop, top + self.crop))
        return img

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        """uint8 PIL RGB -> normalised float32 ``(C, H, W)``."""
        x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        x = x.permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return x.sub_(mean).div_(std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self.to_tensor(self.resize_image(img))


def imagenet_preprocess(resize: int = 256, crop: int = 224, interpolation: str = "bilinear") -> Preprocess:
    """Standard torchvision-style ImageNet evaluation: resize 256, centre crop 224, ImageNet mean/std."""
    return Preprocess(resize, crop, IMAGENET_MEAN, IMAGENET_STD, interpolation)


def efficientnet_lite_preprocess(resize: int = 256, crop: int = 224, interpolation: str = "bilinear") -> Preprocess:
    """EfficientNet-Lite evaluation: resize 256, centre crop 224, then ``(x * 255 - 127) / 128``.

    With ``x`` the [0, 1] pixel value, this is Normalize(mean=127/255, std=128/255) per channel, i.e.
    the uint8 pixel ``p`` maps to ``(p - 127) / 128`` (range about [-0.99, 1.0]).
    """
    return Preprocess(resize, crop, (127 / 255,) * 3, (128 / 255,) * 3, interpolation)


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()


def _read_label_csv(path: Path, image_dir: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [h.strip() for h in (reader.fieldnames or [])]
            if "filename" not in fields or "class_index" not in fields:
                raise layout_error(
                    "image label file",
                    path,
                    LAYOUTS,
                    f"CSV header is {fields}, expected columns 'filename,wnid,class_index'",
                )
            reader.fieldnames = fields
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"could not read label file {str(path)!r}: {exc}") from exc
    if not rows:
        raise DataError(f"label file {str(path)!r} has a header but no rows")
    samples: list[tuple[Path, int]] = []
    names: dict[int, str] = {}
    missing: list[str] = []
    for lineno, row in enumerate(rows, start=2):
        fname = row.get("filename")
        idx = row.get("class_index")
        if not fname or idx is None:
            raise DataError(f"label file {str(path)!r} line {lineno}: empty filename or class_index")
        try:
            k = int(idx.strip())
        except ValueError:
            raise DataError(f"label file {str(path)!r} line {lineno}: class_index {idx!r} is not an integer") from None
        if k < 0:
            raise DataError(f"label file {str(path)!r} line {lineno}: negative class_index {k}")
        rel = Path(fname)
        p = image_dir / rel
        if rel.is_absolute() or ".." in rel.parts:
            raise DataError(f"label file {str(path)!r} line {lineno}: filename {fname!r} leaves {str(image_dir)!r}")
        if not p.is_file():
            missing.append(fname)
        wnid = (row.get("wnid") or "").strip()
        if wnid:
            if names.setdefault(k, wnid) != wnid:
                raise DataError(
                    f"label file {str(path)!r} line {lineno}: class_index {k} has wnid {wnid!r} "
                    f"but earlier {names[k]!r}"
                )
        samples.append((p, k))
    if missing:
        raise DataError(
            f"label file {str(path)!r} lists {len(missing)} file(s) not found in {str(image_dir)!r}, "
            f"e.g. {missing[:3]}"
        )
    n_classes = max(k for _, k in samples) + 1
    classes = [names.get(k, str(k)) for k in range(n_classes)]
    return samples, classes


class ImageFolderDataset:
    """Lazily decoded image dataset; ``ds[i]`` is ``(float tensor (C, H, W), label)``.

    Layouts (see :data:`LAYOUTS`): class sub-folders ``root/<class>/*``, or a flat folder plus a CSV
    label file (``filename,wnid,class_index``). With no ``labels_file``, ``root/labels.csv`` is used
    when present (images in ``root/images`` if that folder exists, else in ``root``).
    Images are converted to RGB (ImageNet has greyscale and CMYK files) and passed through
    ``preprocess`` (default :func:`imagenet_preprocess`).
    """

    def __init__(
        self,
        root: str | Path,
        labels_file: str | Path | None = None,
        preprocess: Preprocess | None = None,
    ) -> None:
        root = Path(root).expanduser()
        self.preprocess = preprocess if preprocess is not None else imagenet_preprocess()
        if not root.is_dir():
            raise layout_error("image folder dataset", root, LAYOUTS, "not a directory")
        if labels_file is None:
            for name in LABEL_FILE_NAMES:
                if (root / name).is_file():
                    labels_file = root / name
                    break
        if labels_file is not None:
            labels_file = Path(labels_file).expanduser()
            if not labels_file.is_file():
                raise layout_error("image folder dataset", labels_file, LAYOUTS, "label file not found")
            image_dir = root
            if (root / "images").is_dir() and not any(_is_image(p) for p in root.iterdir()):
                image_dir = root / "images"
            self.samples, self.classes = _read_label_csv(labels_file, image_dir)
            self.layout = "csv"
            self.image_dir = image_dir
        else:
            class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            samples = []
            classes = []
            for cdir in class_dirs:
                files = sorted((p for p in cdir.iterdir() if _is_image(p)), key=lambda p: p.name)
                if not files:
                    raise DataError(f"class folder {str(cdir)!r} holds no image; remove it or add its images (labels follow the folder order)")
                k = len(classes)
                classes.append(cdir.name)
                samples.extend((p, k) for p in files)
            if not samples:
                raise layout_error(
                    "image folder dataset", root, LAYOUTS, "no class sub-folders with images and no labels.csv"
                )
            self.samples, self.classes = samples, classes
            self.layout = "folders"
            self.image_dir = root
        self.root = root

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([k for _, k in self.samples], dtype=torch.int64)

    def load_image(self, index: int) -> Image.Image:
        """The RGB PIL image at ``index`` (no preprocessing)."""
        path = self.samples[index][0]
        try:
            with Image.open(path) as im:
                im.load()
                require_8bit(im.mode, str(path))
                return im.convert("RGB") if im.mode != "RGB" else im.copy()
        except (OSError, ValueError) as exc:
            raise DataError(f"could not decode image {str(path)!r}: {exc}") from exc

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.preprocess(self.load_image(index)), self.samples[index][1]

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(root={str(self.root)!r}, layout={self.layout!r}, n={len(self)}, "
            f"classes={len(self.classes)}, preprocess={self.preprocess})"
        )


def batches(
    dataset,
    batch_size: int,
    indices: Sequence[int] | None = None,
    num_threads: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield stacked ``(images, labels)`` batches of ``dataset[i]`` in order (for eval/calibration).

    ``indices`` restricts/reorders the examples; ``num_threads > 0`` decodes with a thread pool
    (PIL releases the GIL while decoding).
    """
    if batch_size <= 0:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    order = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    pool = ThreadPoolExecutor(num_threads) if num_threads > 0 else None
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            items = list(pool.map(dataset.__getitem__, chunk)) if pool else [dataset[i] for i in chunk]
            xs = torch.stack([x if isinstance(x, torch.Tensor) else torch.as_tensor(x) for x, _ in items])
            ys = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
            yield xs, ys
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def load_imagenet_samples(root: str | Path, preprocess: Preprocess | None = None) -> ImageFolderDataset:
    """The 1000-image ImageNet sample set: ``root/images/<wnid>_<name>.JPEG`` + ``root/labels.csv``."""
    root = Path(root).expanduser()
    if not (root / "labels.csv").is_file() or not (root / "images").is_dir():
        raise layout_error(
            "ImageNet samples",
            root,
            ["<root>/images/<wnid>_<name>.JPEG + <root>/labels.csv (filename,wnid,class_index)"],
            "missing images/ or labels.csv",
        )
    return ImageFolderDataset(root / "images", labels_file=root / "labels.csv", preprocess=preprocess)
