"""CIFAR-10 in any of three layouts, decoded to one uint8 tensor.

Accepted layouts under ``root`` (auto-detected, in this order):

(a) the official python-pickle batches: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch}``
    or those files directly in ``root``;
(b) an image folder ``{train,test}/<class>/*.(jpg|jpeg|png)`` at ``root`` or ``root/CIFAR-10-images``;
(c) the tarball ``cifar10-images-jpeg.tar.gz`` (which unpacks to layout (b)), read directly with
    :mod:`tarfile` without extracting; ``root`` may also be the tarball itself.

Decoding 60k JPEGs takes a few seconds, so layouts (b) and (c) cache the decoded arrays as ``.npz``
in :func:`bitswitch.data.cache.cache_dir` (``$BITSWITCH_CACHE`` or ``~/.cache/bitswitch``), keyed by
the source path, size and mtime.
"""

from __future__ import annotations

import io
import pickle
import re
import tarfile
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from . import cache as _cache
from .arrays import ArrayDataset
from .errors import DataError, layout_error, require_8bit

__all__ = ["CIFAR10_CLASSES", "detect_cifar10_layout", "load_cifar10"]

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TARBALL_NAMES = ("cifar10-images-jpeg.tar.gz", "CIFAR-10-images.tar.gz", "cifar10-images.tar.gz")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

LAYOUTS = [
    "(a) python pickle batches: <root>/cifar-10-batches-py/data_batch_1..data_batch_5 + test_batch "
    "(+ batches.meta), or those files directly in <root>",
    "(b) image folder: <root>/{train,test}/<class>/*.jpg|jpeg|png, or <root>/CIFAR-10-images/{train,test}/<class>/*",
    "(c) tarball: <root>/cifar10-images-jpeg.tar.gz unpacking to CIFAR-10-images/{train,test}/<class>/*.jpg "
    "(read without extracting), or <root> = path of such a .tar[.gz]",
]


# ------------------------------------------------------------------------------------ pickle
class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals the official CIFAR batches need (numpy arrays)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch file")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"CIFAR-10 pickle file {str(path)!r} is malformed or truncated: {exc}") from exc
    except OSError as exc:
        raise DataError(f"could not read CIFAR-10 pickle file {str(path)!r}: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10 pickle file {str(path)!r} does not hold a dict (got {type(obj).__name__})")
    return obj


def _get(d: dict, key: str):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    return None


def _meta_classes(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    meta = _unpickle(path)
    names = _get(meta, "label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"CIFAR-10 meta file {str(path)!r} has no 'label_names' list")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _numbered_batches(d: Path) -> list[Path]:
    found = {}
    for p in d.glob("data_batch_*"):
        m = re.fullmatch(r"data_batch_(\d+)", p.name)
        if m and p.is_file():
            found[int(m.group(1))] = p
    if not found:
        return []
    n = max(found)
    missing = [k for k in range(1, n + 1) if k not in found]
    if missing:
        raise layout_error("CIFAR-10", d, LAYOUTS, f"data_batch files {missing} are missing")
    return [found[k] for k in range(1, n + 1)]


def _pickle_dir(root: Path) -> Path | None:
    for d in (root / "cifar-10-batches-py", root):
        if d.is_dir() and ((d / "test_batch").is_file() or (d / "data_batch_1").is_file()):
            return d
    return None


def _load_pickle_layout(d: Path, split: str) -> ArrayDataset:
    files = _numbered_batches(d) if split == "train" else ([d / "test_batch"] if (d / "test_batch").is_file() else [])
    if not files:
        want = "data_batch_1..5" if split == "train" else "test_batch"
        raise layout_error("CIFAR-10", d, LAYOUTS, f"pickle layout without {want} for split {split!r}")
    images, labels = [], []
    for f in files:
        batch = _unpickle(f)
        data, lab = _get(batch, "data"), _get(batch, "labels")
        if lab is None:
            lab = _get(batch, "fine_labels")
        if data is None or lab is None:
            raise DataError(f"CIFAR-10 batch {str(f)!r} lacks b'data' or b'labels' (keys: {list(batch)})")
        data = np.asarray(data)
        lab = np.asarray(lab, dtype=np.int64).reshape(-1)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(
                f"CIFAR-10 batch {str(f)!r}: b'data' must be uint8 of shape (N, 3072), "
                f"got {data.dtype} {data.shape}"
            )
        if data.shape[0] != lab.shape[0]:
            raise DataError(f"CIFAR-10 batch {str(f)!r}: {data.shape[0]} images but {lab.shape[0]} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    classes = _meta_classes(d / "batches.meta") or list(CIFAR10_CLASSES)
    return ArrayDataset(
        torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
        torch.from_numpy(np.concatenate(labels)),
        classes,
    )


# ------------------------------------------------------------------------------ image folders
def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_dir(root: Path) -> Path | None:
    for d in (root, root / "CIFAR-10-images"):
        if (d / "train").is_dir() or (d / "test").is_dir():
            if any(_class_dirs(d / s) for s in SPLITS if (d / s).is_dir()):
                return d
    return None


def _resolve_classes(per_split: dict[str, list[str]], meta: list[str] | None, where: Path) -> list[str]:
    """Sorted class folder names (checked equal across splits); the meta file's order if it has the same set."""
    sets = {s: names for s, names in per_split.items() if names}
    if not sets:
        raise layout_error("CIFAR-10", where, LAYOUTS, "no class folders found")
    first = next(iter(sets.values()))
    for s, names in sets.items():
        if names != first:
            raise DataError(
                f"CIFAR-10 at {str(where)!r}: class folders differ between splits "
                f"({', '.join(f'{k}: {v}' for k, v in sets.items())})"
            )
    classes = sorted(first)
    if meta is not None:
        if set(meta) == set(classes) and len(meta) == len(classes):
            classes = list(meta)
        else:
            warnings.warn(
                f"CIFAR-10 at {str(where)!r}: class folders {classes} do not match batches.meta {meta}; "
                "using sorted folder names",
                stacklevel=3,
            )
    return classes


def _decode(items: list[tuple[str, object]], where: Path) -> np.ndarray:
    """Decode ``(name, bytes | path)`` items to a uint8 ``(N, C, H, W)`` array (RGB)."""
    out: np.ndarray | None = None
    for i, (name, src) in enumerate(items):
        try:
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
                require_8bit(im.mode, name)
                arr = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"CIFAR-10: could not decode image {name!r} in {str(where)!r}: {exc}") from exc
        if out is None:
            out = np.empty((len(items),) + arr.shape, dtype=np.uint8)
        elif arr.shape != out.shape[1:]:
            raise DataError(
                f"CIFAR-10: image {name!r} in {str(where)!r} has size {arr.shape[:2]}, "
                f"expected {out.shape[1:3]} like the others"
            )
        out[i] = arr
    assert out is not None
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _from_arrays(arrays: dict[str, np.ndarray]) -> ArrayDataset:
    return ArrayDataset(
        torch.from_numpy(arrays["images"]),
        torch.from_numpy(arrays["labels"].astype(np.int64)),
        [str(c) for c in arrays["classes"].tolist()],
    )


def _cached_build(kind: str, split: str, key_parts: tuple, build, cache, cache_dir) -> ArrayDataset:
    path = None
    if cache:
        key = _cache.cache_key("cifar10", kind, split, *key_parts)
        path = _cache.cache_dir(cache_dir) / f"cifar10-{kind}-{split}-{key}.npz"
        hit = _cache.load_cached(path)
        if hit is not None and {"images", "labels", "classes"} <= set(hit):
            return _from_arrays(hit)
    images, labels, classes = build()
    arrays = {"images": images, "labels": labels.astype(np.int64), "classes": np.array(classes, dtype=str)}
    if path is not None:
        _cache.save_cached(path, arrays)
    return _from_arrays(arrays)


def _load_folder_layout(d: Path, split: str, cache, cache_dir) -> ArrayDataset:
    split_dir = d / split
    if not split_dir.is_dir():
        raise layout_error("CIFAR-10", d, LAYOUTS, f"image-folder layout without a {split!r} folder")
    per_split = {s: _class_dirs(d / s) for s in SPLITS if (d / s).is_dir()}
    meta = None
    for m in (d / "batches.meta", d.parent / "batches.meta"):
        meta = _meta_classes(m)
        if meta is not None:
            break
    classes = _resolve_classes(per_split, meta, d)
    files: list[tuple[int, Path]] = []
    listing = []
    for k, c in enumerate(classes):
        cdir = split_dir / c
        if not cdir.is_dir():
            continue
        count = len(files)
        for p in sorted(cdir.iterdir(), key=lambda p: p.name):
            if _is_image_name(p.name) and p.is_file():
                st = p.stat()
                files.append((k, p))
                listing.append(f"{c}/{p.name}:{st.st_size}:{st.st_mtime_ns}")
        if len(files) == count:
            raise DataError(f"CIFAR-10: class folder {str(cdir)!r} holds no .jpg/.jpeg/.png image; remove it or add its images")
    if not files:
        raise layout_error("CIFAR-10", split_dir, LAYOUTS, "no .jpg/.jpeg/.png files in the class folders")

    def build():
        images = _decode([(str(p), p) for _, p in files], split_dir)
        labels = np.array([k for k, _ in files], dtype=np.int64)
        return images, labels, classes

    key = (str(split_dir.resolve()), "|".join(classes), "\n".join(listing))
    return _cached_build("folder", split, key, build, cache, cache_dir)


# -------------------------------------------------------------------------------------- tarball
def _tarball(root: Path) -> Path | None:
    if root.is_file() and root.name.lower().endswith(_TAR_SUFFIXES):
        return root
    for name in TARBALL_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def _load_tarball(tar_path: Path, split: str, cache, cache_dir) -> ArrayDataset:
    def build():
        per_split: dict[str, set[str]] = {s: set() for s in SPLITS}
        members: list[tuple[str, str, bytes]] = []  # (class, file name, bytes) of the wanted split
        try:
            with tarfile.open(tar_path, "r|*") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    parts = PurePosixPath(m.name).parts
                    if len(parts) < 3 or parts[-3] not in SPLITS or not _is_image_name(parts[-1]):
                        continue
                    if any(p.startswith("__MACOSX") for p in parts):
                        continue
                    s, c, name = parts[-3], parts[-2], parts[-1]
                    per_split[s].add(c)
                    if s == split:
                        f = tf.extractfile(m)
                        assert f is not None
                        members.append((c, name, f.read()))
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"CIFAR-10 tarball {str(tar_path)!r} is unreadable or truncated: {exc}") from exc
        if not members:
            raise layout_error(
                "CIFAR-10", tar_path, LAYOUTS, f"tarball has no {split}/<class>/*.jpg|jpeg|png members"
            )
        meta = _meta_classes(tar_path.parent / "batches.meta")
        classes = _resolve_classes({s: sorted(v) for s, v in per_split.items()}, meta, tar_path)
        index = {c: k for k, c in enumerate(classes)}
        members.sort(key=lambda t: (index[t[0]], t[1]))
        images = _decode([(f"{split}/{c}/{n}", b) for c, n, b in members], tar_path)
        labels = np.array([index[c] for c, _, _ in members], dtype=np.int64)
        return images, labels, classes

    fp = _cache.file_fingerprint(tar_path)
    return _cached_build("tar", split, fp, build, cache, cache_dir)


# ------------------------------------------------------------------------------------ public
def detect_cifar10_layout(root: str | Path) -> tuple[str, Path]:
    """``("pickle" | "folder" | "tarball", path)`` for the first layout found under ``root``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise layout_error("CIFAR-10", root, LAYOUTS, "path does not exist")
    if root.is_dir():
        d = _pickle_dir(root)
        if d is not None:
            return "pickle", d
        d = _folder_dir(root)
        if d is not None:
            return "folder", d
    t = _tarball(root)
    if t is not None:
        return "tarball", t
    raise layout_error("CIFAR-10", root, LAYOUTS, "none of the accepted layouts was found")


def load_cifar10(
    root: str | Path,
    split: str = "train",
    *,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> ArrayDataset:
    """Load CIFAR-10 ``split`` ("train" or "test") as uint8 ``(N, 3, 32, 32)``.

    Layout is auto-detected (see module docstring). Labels index :data:`CIFAR10_CLASSES`
    order (verified against ``batches.meta`` when present). For folder layouts, examples are
    ordered by class, then by file name. ``cache=False`` disables the decoded-array cache;
    ``cache_dir`` overrides ``$BITSWITCH_CACHE``.
    """
    if split not in SPLITS:
        raise DataError(f"CIFAR-10 split must be one of {list(SPLITS)}, got {split!r}")
    kind, path = detect_cifar10_layout(root)
    if kind == "pickle":
        return _load_pickle_layout(path, split)
    if kind == "folder":
        return _load_folder_layout(path, split, cache, cache_dir)
    return _load_tarball(path, split, cache, cache_dir)
