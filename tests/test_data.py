"""Tests for bitswitch.data: loaders (real data in ../shared/data + tiny fakes), augmentation, loader."""

from __future__ import annotations

import csv
import gzip
import io
import os
import pickle
import struct
import tarfile
import time
from unittest import mock
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bitswitch.data import (
    CIFAR10_CLASSES,
    DATASET_STATS,
    FASHION_MNIST_CLASSES,
    ArrayDataset,
    DataError,
    ImageFolderDataset,
    Preprocess,
    TensorLoader,
    batches,
    default_data_root,
    detect_cifar10_layout,
    efficientnet_lite_preprocess,
    imagenet_preprocess,
    load_cifar10,
    load_dataset,
    load_digits_dataset,
    load_fashion_mnist,
    load_imagenet_samples,
    random_crop,
    random_cutout,
    random_flip,
)

# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Never touch the user's ~/.cache or a user BITSWITCH_DATA from tests."""
    monkeypatch.setenv("BITSWITCH_CACHE", str(tmp_path / "bitswitch-cache"))
    monkeypatch.delenv("BITSWITCH_DATA", raising=False)


def _rng_images(n: int, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


# ------------------------------------------------------------------------------ Fashion-MNIST


def test_fashion_mnist_real(shared_data):
    root = shared_data / "fashion_mnist"
    train = load_fashion_mnist(root, "train")
    test = load_fashion_mnist(root, "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.dtype == torch.int64
    assert train.class_counts().tolist() == [6000] * 10
    assert test.class_counts().tolist() == [1000] * 10
    assert train.classes == FASHION_MNIST_CLASSES
    mean = train.images.float().div(255).mean().item()
    assert abs(mean - DATASET_STATS["fashion_mnist"]["mean"][0]) < 1e-3


def test_idx_uncompressed_roundtrip(tmp_path):
    imgs = _rng_images(5, 1, 28, 28)[:, 0]
    labels = np.array([0, 3, 9, 1, 2], dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(imgs))
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(_idx_bytes(labels))
    ds = load_fashion_mnist(tmp_path, "test")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(imgs))
    assert ds.labels.tolist() == labels.tolist()


def test_fashion_mnist_truncated_and_malformed(tmp_path):
    imgs = _rng_images(10, 1, 28, 28)[:, 0]
    labels = np.arange(10, dtype=np.uint8)
    full = _idx_bytes(imgs)
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(_idx_bytes(labels))
    img_path = tmp_path / "train-images-idx3-ubyte.gz"

    # header says 10 images, the (valid) gzip stream holds only 5
    with gzip.open(img_path, "wb") as f:
        f.write(full[: 16 + 5 * 28 * 28])
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist(tmp_path, "train")

    # the gzip stream itself is cut off
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        f.write(full)
    img_path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match=str(img_path.name)):
        load_fashion_mnist(tmp_path, "train")

    # bad magic number
    with gzip.open(img_path, "wb") as f:
        f.write(b"\x12\x34\x56\x78" + full[4:])
    with pytest.raises(DataError, match="magic"):
        load_fashion_mnist(tmp_path, "train")

    # missing files -> message names the expected files/layouts
    with pytest.raises(DataError) as err:
        load_fashion_mnist(tmp_path, "test")
    msg = str(err.value)
    assert str(tmp_path) in msg and "t10k-images-idx3-ubyte" in msg and "Accepted layouts" in msg


# ------------------------------------------------------------------------------------ CIFAR-10


def _write_cifar_pickles(d: Path, n_per_batch: int = 4, n_test: int = 3):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    all_train, all_labels = [], []
    for b in range(1, 6):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        batch = {b"batch_label": f"training batch {b} of 5".encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img{b}_{i}.png".encode() for i in range(n_per_batch)]}
        with open(d / f"data_batch_{b}", "wb") as f:
            pickle.dump(batch, f, protocol=2)
        all_train.append(data)
        all_labels += labels
    test_data = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    test_labels = [9, 0, 5][:n_test]
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"labels": test_labels, b"data": test_data}, f, protocol=2)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}, f, protocol=2)
    return np.concatenate(all_train), np.array(all_labels), test_data, np.array(test_labels)


@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_pickle_layout_roundtrip(tmp_path, nested):
    d = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    train_data, train_labels, test_data, test_labels = _write_cifar_pickles(d)
    assert detect_cifar10_layout(tmp_path) == ("pickle", d)
    train = load_cifar10(tmp_path, "train")
    test = load_cifar10(tmp_path, "test")
    assert train.images.shape == (20, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(train_data.reshape(-1, 3, 32, 32)))
    assert train.labels.tolist() == train_labels.tolist()
    assert torch.equal(test.images.reshape(3, -1), torch.from_numpy(test_data))
    assert test.labels.tolist() == test_labels.tolist()
    assert train.classes == CIFAR10_CLASSES


def test_cifar10_pickle_refuses_arbitrary_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match="not allowed"):
        load_cifar10(tmp_path, "test")


def _write_png_folder(base: Path, classes, per_class: dict[str, int], size=(32, 32), seed=0):
    """base/{split}/<class>/NNNN.png with random pixels; returns {split: (images N,3,H,W, labels)}."""
    out = {}
    for split_i, (split, n) in enumerate(per_class.items()):
        imgs, labels = [], []
        for k, c in enumerate(sorted(classes)):
            cdir = base / split / c
            cdir.mkdir(parents=True, exist_ok=True)
            arr = _rng_images(n, 3, size[1], size[0], seed=seed + 100 * split_i + k)
            # write in reverse order: the loader must sort by name
            for i in reversed(range(n)):
                Image.fromarray(arr[i].transpose(1, 2, 0)).save(cdir / f"{i:04d}.png")
            imgs.append(arr)
            labels += [k] * n
        out[split] = (np.concatenate(imgs), np.array(labels))
    return out


@pytest.mark.parametrize("subdir", ["", "CIFAR-10-images"])
def test_cifar10_image_folder_png_roundtrip(tmp_path, subdir):
    root = tmp_path / "data"
    classes = ["cat", "airplane", "dog"]
    expected = _write_png_folder(root / subdir if subdir else root, classes, {"train": 3, "test": 2})
    assert detect_cifar10_layout(root)[0] == "folder"
    for split in ("train", "test"):
        ds = load_cifar10(root, split)
        assert ds.classes == sorted(classes)
        assert torch.equal(ds.images, torch.from_numpy(expected[split][0]))
        assert ds.labels.tolist() == expected[split][1].tolist()
    cache_files = sorted((tmp_path / "bitswitch-cache").glob("cifar10-folder-*.npz"))
    assert len(cache_files) == 2
    again = load_cifar10(root, "train")  # from the cache
    assert torch.equal(again.images, torch.from_numpy(expected["train"][0]))
    assert not list((tmp_path / "bitswitch-cache").glob("*.tmp"))


def test_cifar10_small_tarball_and_cache(tmp_path):
    src = tmp_path / "src"
    expected = _write_png_folder(src / "CIFAR-10-images", ["b", "a"], {"train": 3, "test": 2})
    root = tmp_path / "tar_root"
    root.mkdir()
    tar_path = root / "cifar10-images-jpeg.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        tf.add(src / "CIFAR-10-images", arcname="CIFAR-10-images")
    cache = tmp_path / "cache"
    assert detect_cifar10_layout(root) == ("tarball", tar_path)
    for split in ("train", "test"):
        ds = load_cifar10(root, split, cache_dir=cache)
        assert ds.classes == ["a", "b"]
        assert torch.equal(ds.images, torch.from_numpy(expected[split][0]))
        assert ds.labels.tolist() == expected[split][1].tolist()
    assert len(list(cache.glob("cifar10-tar-*.npz"))) == 2
    # the tarball path itself is accepted, and the cache is reused (no new files)
    ds = load_cifar10(tar_path, "train", cache_dir=cache)
    assert torch.equal(ds.images, torch.from_numpy(expected["train"][0]))
    assert len(list(cache.glob("*.npz"))) == 2
    # a changed tarball (new mtime) gets a new cache entry
    os.utime(tar_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    load_cifar10(root, "test", cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 3
    # a corrupt cache file is ignored and rebuilt
    for p in cache.glob("*.npz"):
        p.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache"):
        ds = load_cifar10(root, "test", cache_dir=cache)
    assert torch.equal(ds.images, torch.from_numpy(expected["test"][0]))


@pytest.fixture(scope="session")
def cifar10_real(shared_data, tmp_path_factory):
    """Both splits decoded once, then loaded again from the cache, counting the JPEG decodes and
    tarball reads of each load (a spy on PIL's and tarfile's ``open``)."""
    root = shared_data / "cifar10"
    cache = tmp_path_factory.mktemp("cifar-cache")
    calls = {"image": 0, "tar": 0}
    image_open, tar_open = Image.open, tarfile.open

    def counting(kind, real):
        def wrapper(*a, **k):
            calls[kind] += 1
            return real(*a, **k)
        return wrapper

    out, opened = {}, {}
    with mock.patch.object(Image, "open", counting("image", image_open)), mock.patch.object(tarfile, "open", counting("tar", tar_open)):
        for split in ("train", "test"):
            for load in ("decode", "cached"):
                before = dict(calls)
                out[f"{load}_{split}"] = load_cifar10(root, split, cache_dir=cache)
                opened[f"{load}_{split}"] = {k: calls[k] - before[k] for k in calls}
    files = sorted(p.name for p in cache.iterdir())
    return out, opened, files


def test_cifar10_real_tarball(shared_data, cifar10_real):
    data, opened, files = cifar10_real
    labels = np.load(shared_data / "cifar10" / "labels.npz")
    train, test = data["decode_train"], data["decode_test"]
    assert train.images.shape == (50000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 3, 32, 32)
    assert train.classes == CIFAR10_CLASSES
    assert train.class_counts().tolist() == np.bincount(labels["y_train"], minlength=10).tolist()
    assert test.class_counts().tolist() == np.bincount(labels["y_test"], minlength=10).tolist()
    mean = train.images[::10].float().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(DATASET_STATS["cifar10"]["mean"]), atol=0.01)
    # the first load of a split reads the tarball and decodes every image; the second reads the cache only
    assert opened["decode_train"] == {"image": 50000, "tar": 1} and opened["decode_test"] == {"image": 10000, "tar": 1}
    assert opened["cached_train"] == {"image": 0, "tar": 0} and opened["cached_test"] == {"image": 0, "tar": 0}
    assert len(files) == 2 and all(f.startswith("cifar10-tar-") and f.endswith(".npz") for f in files)
    for split in ("train", "test"):
        cached, decoded = data[f"cached_{split}"], data[f"decode_{split}"]
        assert torch.equal(cached.images, decoded.images) and torch.equal(cached.labels, decoded.labels)


def test_cifar10_errors_name_layouts(tmp_path):
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path / "nope", "train")
    assert "nope" in str(err.value) and "cifar-10-batches-py" in str(err.value)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hi")
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path / "junk", "train")
    msg = str(err.value)
    assert "Accepted layouts" in msg and "{train,test}/<class>" in msg and "cifar10-images-jpeg.tar.gz" in msg
    with pytest.raises(DataError, match="split"):
        load_cifar10(tmp_path, "validation")
    # a truncated pickle batch
    (tmp_path / "p").mkdir()
    _write_cifar_pickles(tmp_path / "p")
    raw = (tmp_path / "p" / "test_batch").read_bytes()
    (tmp_path / "p" / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(tmp_path / "p", "test")


# ------------------------------------------------------------------------------------ ImageNet


def test_imagenet_samples(shared_data):
    root = shared_data / "imagenet_samples"
    ds = load_imagenet_samples(root)
    assert len(ds) == 1000 and len(ds.classes) == 1000
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [p.name for p, _ in ds.samples] == [r["filename"] for r in rows]
    assert ds.labels.tolist() == [int(r["class_index"]) for r in rows]
    assert ds.classes[0] == "n01440764" and ds.classes == sorted(ds.classes)
    x, y = ds[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 0
    xb, yb = next(batches(ds, 3, indices=[5, 999, 7]))
    assert xb.shape == (3, 3, 224, 224) and yb.tolist() == [ds.samples[i][1] for i in (5, 999, 7)]

    # efficientnet-lite normalisation is (p - 127) / 128 on the uint8 crop
    pre = efficientnet_lite_preprocess()
    img = ds.load_image(0)
    crop = np.asarray(pre.resize_image(img), dtype=np.float32).transpose(2, 0, 1)
    assert torch.allclose(pre(img), torch.from_numpy((crop - 127.0) / 128.0), atol=1e-5)


def test_image_folder_csv_with_odd_names(tmp_path):
    rng = np.random.default_rng(0)
    names = ['plain.png', 'with space.png', 'quote"and,comma.png', "it's.png"]
    for i, n in enumerate(names):
        arr = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
        img = Image.fromarray(arr)
        if i == 1:
            img = img.convert("L")  # greyscale images must come out RGB
        img.save(tmp_path / n)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "wnid", "class_index"])
        for i, n in enumerate(names):
            w.writerow([n, f"n{i % 2:08d}", i % 2])
    pre = Preprocess(resize=32, crop=24, mean=(0.5,) * 3, std=(0.25,) * 3)
    ds = ImageFolderDataset(tmp_path, preprocess=pre)
    assert ds.layout == "csv" and len(ds) == 4 and ds.classes == ["n00000000", "n00000001"]
    for i in range(4):
        x, y = ds[i]
        assert x.shape == (3, 24, 24) and y == i % 2
    xb, yb = next(batches(ds, 8, num_threads=2))
    assert xb.shape == (4, 3, 24, 24) and yb.tolist() == [0, 1, 0, 1]
    # resize follows torchvision: short side 30 -> 32, long side int(32 * 40 / 30) = 42
    assert Preprocess(resize=32, crop=None).resize_image(ds.load_image(0)).size == (42, 32)


def test_image_folder_class_subfolders(tmp_path):
    for c in ("zebra", "ant"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((10, 12, 3), i * 50, np.uint8)).save(tmp_path / c / f"{i}.jpg")
    (tmp_path / "empty").mkdir()  # would shift every later label by one: refused
    with pytest.raises(DataError, match="empty.*holds no image"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "empty").rmdir()
    ds = ImageFolderDataset(tmp_path, preprocess=Preprocess(resize=None, crop=8, mean=(0.0,) * 3, std=(1.0,) * 3))
    assert ds.layout == "folders" and ds.classes == ["ant", "zebra"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    x, _ = ds[1]
    assert x.shape == (3, 8, 8) and abs(float(x.mean()) - 50 / 255) < 0.02


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError) as err:
        ImageFolderDataset(tmp_path / "missing")
    assert "missing" in str(err.value) and "labels.csv" in str(err.value)
    with pytest.raises(DataError) as err:
        ImageFolderDataset(tmp_path)  # empty folder: neither layout
    assert "<root>/<class>/" in str(err.value) and "filename,wnid,class_index" in str(err.value)
    with pytest.raises(DataError, match="labels.csv"):
        load_imagenet_samples(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label\na.png,0\n")
    with pytest.raises(DataError, match="filename,wnid,class_index"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "labels.csv").write_text("filename,wnid,class_index\nnot_there.png,n1,0\n")
    with pytest.raises(DataError, match="not_there.png"):
        ImageFolderDataset(tmp_path)
    assert imagenet_preprocess().mean == (0.485, 0.456, 0.406)


# -------------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_shapes_identity_determinism(dtype):
    x = torch.from_numpy(_rng_images(16, 3, 8, 10)).to(dtype)
    g = lambda s: torch.Generator().manual_seed(s)
    assert random_crop(x, 4, g(0)).shape == x.shape
    assert random_crop(x, 4, g(0)).dtype == dtype
    assert torch.equal(random_crop(x, 0, g(0)), x)
    flipped = random_flip(x, g(3))
    assert flipped.shape == x.shape
    assert torch.equal(random_flip(flipped, g(3)), x)  # same draws -> flip of flip is identity
    assert not torch.equal(flipped, x)
    assert torch.equal(random_flip(x, g(0), p=1.0), x.flip(-1))
    assert torch.equal(random_crop(x, 3, g(5)), random_crop(x, 3, g(5)))
    assert not torch.equal(random_crop(x, 3, g(5)), random_crop(x, 3, g(6)))


@pytest.mark.parametrize("size", [1, 4, 5, 16])
def test_random_cutout_erases_one_clipped_square_per_image(size):
    """Each image loses exactly the part of a size x size square (centre uniform) that lies inside it, all channels."""
    h, w = 9, 11
    x = torch.rand(64, 3, h, w) + 1.0  # never 0, so erased pixels are exactly the zeros
    out = random_cutout(x, size, torch.Generator().manual_seed(7))
    centre = torch.stack([torch.randint(0, h, (64,), generator=(g := torch.Generator().manual_seed(7))),
                          torch.randint(0, w, (64,), generator=g)])
    for i in range(64):
        top, left = int(centre[0, i]) - size // 2, int(centre[1, i]) - size // 2
        expect = torch.zeros(h, w, dtype=torch.bool)
        expect[max(top, 0):max(top + size, 0), max(left, 0):max(left + size, 0)] = True
        erased = out[i] == 0
        assert torch.equal(erased, expect.expand(3, h, w)), i
        assert torch.equal(out[i][~erased], x[i][~erased])  # the rest untouched
    assert torch.equal(random_cutout(x, 0), x)
    assert torch.equal(random_cutout(x, size, torch.Generator().manual_seed(7)), out)  # deterministic per generator
    with pytest.raises(DataError, match="cutout size must be >= 0"):
        random_cutout(x, -1)


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_random_crop_matches_reference(mode):
    x = torch.from_numpy(_rng_images(12, 2, 6, 7))
    p = 2
    out = random_crop(x, p, torch.Generator().manual_seed(1), mode=mode)
    offs = torch.randint(0, 2 * p + 1, (2, 12), generator=torch.Generator().manual_seed(1))
    if mode == "reflect":
        padded = torch.nn.functional.pad(x.float(), (p, p, p, p), mode="reflect").to(torch.uint8)
    else:
        padded = torch.nn.functional.pad(x, (p, p, p, p))
    for i in range(12):
        dy, dx = int(offs[0, i]), int(offs[1, i])
        assert torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 7])


# -------------------------------------------------------------------------------- TensorLoader


def _toy_dataset(n=50, c=3, hw=8, classes=5):
    return ArrayDataset(
        torch.from_numpy(_rng_images(n, c, hw, hw)),
        torch.arange(n) % classes,
        [f"c{k}" for k in range(classes)],
    )


def _epoch(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def test_tensor_loader_reproducible_epochs():
    ds = _toy_dataset()
    a = TensorLoader(ds, 16, shuffle=True, augment=True, seed=7, mean=(0.5,) * 3, std=(0.25,) * 3)
    b = TensorLoader(ds, 16, shuffle=True, augment=True, seed=7, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert len(a) == 4
    xa0, ya0 = _epoch(a)
    xa1, ya1 = _epoch(a)
    xb0, yb0 = _epoch(b)
    assert xa0.dtype == torch.float32 and xa0.shape == (50, 3, 8, 8) and ya0.dtype == torch.int64
    assert torch.equal(xa0, xb0) and torch.equal(ya0, yb0)
    assert not torch.equal(ya0, ya1)  # a new permutation each epoch
    assert sorted(ya0.tolist()) == sorted(ds.labels.tolist())
    b.set_epoch(1)  # resume
    xb1, yb1 = _epoch(b)
    assert torch.equal(xa1, xb1) and torch.equal(ya1, yb1)
    c = TensorLoader(ds, 16, shuffle=True, seed=8)
    assert not torch.equal(_epoch(c)[1], ya0)


def test_tensor_loader_plain_and_drop_last():
    ds = _toy_dataset()
    loader = TensorLoader(ds, 16, shuffle=False, drop_last=True, mean=[0.5], std=[0.5])
    assert len(loader) == 3
    x, y = _epoch(loader)
    assert y.tolist() == ds.labels[:48].tolist()
    assert torch.allclose(x, (ds.images[:48].float() / 255 - 0.5) / 0.5)
    plain = TensorLoader(ds, 64, shuffle=False)
    x, _ = _epoch(plain)
    assert len(plain) == 1 and torch.allclose(x, ds.images.float() / 255)
    with pytest.raises(DataError):
        TensorLoader(ds, 0, shuffle=False)
    with pytest.raises(DataError, match="channels"):
        TensorLoader(ds, 4, shuffle=False, mean=(0.1, 0.2), std=(1.0, 1.0))


# ----------------------------------------------------------------------------- ArrayDataset


def test_split_deterministic_disjoint_stratified():
    ds = _toy_dataset(n=100, classes=4)
    keep_a, held_a = ds.split_indices(0.2, seed=3)
    keep_b, held_b = ds.split_indices(0.2, seed=3)
    assert torch.equal(keep_a, keep_b) and torch.equal(held_a, held_b)
    assert len(held_a) == 20 and len(keep_a) == 80
    assert set(keep_a.tolist()).isdisjoint(held_a.tolist())
    assert sorted(keep_a.tolist() + held_a.tolist()) == list(range(100))
    _, val = ds.split(0.2, seed=3)
    assert val.class_counts().tolist() == [5, 5, 5, 5]
    assert torch.equal(val.images, ds.images[held_a])
    _, other = ds.split_indices(0.2, seed=4)
    assert not torch.equal(other, held_a)
    _, plain = ds.split_indices(0.3, seed=0, stratified=False)
    assert len(plain) == 30


def test_array_dataset_validation():
    with pytest.raises(DataError, match="empty"):
        ArrayDataset(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), ["a"])
    with pytest.raises(DataError, match="labels"):
        ArrayDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ["a"])
    with pytest.raises(DataError, match="uint8"):
        ArrayDataset(torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.int64), ["a"])
    with pytest.raises(DataError, match="classes"):
        ArrayDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 3]), ["a", "b"])
    ds = _toy_dataset(n=10)
    sub = ds.subset([3, 1])
    assert len(sub) == 2 and torch.equal(sub.images[0], ds.images[3])
    assert len(ds.subset(ds.labels == 0)) == 2
    with pytest.raises(DataError):
        ds.subset([])
    with pytest.raises(DataError):
        ds.split(1.5, seed=0)


# ------------------------------------------------------------------------- digits / dispatch


def test_digits():
    train, test = load_digits_dataset()
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255
    _, test2 = load_digits_dataset()
    assert torch.equal(test.images, test2.images) and torch.equal(test.labels, test2.labels)


def test_load_dataset_dispatch(shared_data, monkeypatch):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", None, "train")
    assert "cifar10" in str(err.value) and "fashion_mnist" in str(err.value) and "digits" in str(err.value)
    assert default_data_root() is None
    with pytest.raises(DataError, match="BITSWITCH_DATA"):
        load_dataset("fashion_mnist", None, "test")
    monkeypatch.setenv("BITSWITCH_DATA", str(shared_data))
    assert default_data_root() == shared_data
    assert len(load_dataset("fashion_mnist", None, "test")) == 10000
    assert len(load_dataset("fashion-mnist", shared_data, "test")) == 10000  # parent folder accepted
    assert len(load_dataset("fashion_mnist", shared_data / "fashion_mnist", "test")) == 10000
    assert len(load_dataset("digits", None, "test")) == 359
