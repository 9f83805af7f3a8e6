"""``bitswitch train`` on the user's own model (``package.module:factory``) and data (a callable
returning tensors, or an image-folder tree): the run folder, resume and the factory in the checkpoint.

The user's package is a module written into ``tmp_path``, importable through ``PYTHONPATH`` in the
CLI subprocess (and through ``sys.path`` for the in-process runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bitswitch
from bitswitch.export.checkpoint import CheckpointError, read_checkpoint
from bitswitch.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
USER_CODE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make_net(num_classes, in_channels, width=8):
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def quadrants(n=240, seed=0):
        # class k: a bright quadrant k on noise, float images in [0, 1]
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 4, (n,), generator=g)
        x = torch.rand(n, 1, 8, 8, generator=g) * 0.5
        for i, k in enumerate(y.tolist()):
            r, c = divmod(k, 2)
            x[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 0.5
        return x, y

    def data():
        (x, y), (xt, yt) = quadrants(240, 0), quadrants(80, 1)
        return {"train": (x, y), "test": (xt, yt), "classes": ["nw", "ne", "sw", "se"]}

    def not_a_model(num_classes, in_channels):
        return "a string"
    """
)
COMMON = dict(model="byom_user:make_net", model_kwargs={"width": 8}, dataset="byom_user:data", bits=[8, 4, 2], batch_size=32, lr=0.003,
              calib_batches=2, progress=False, num_threads=1)


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    pkg = tmp_path / "code"
    pkg.mkdir()
    (pkg / "byom_user.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(pkg))
    return pkg


def test_cli_trains_a_factory_model_on_callable_data(tmp_path, user_code):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in {**COMMON, "epochs": 2}.items()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_code), str(REPO)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bitswitch.cli", "train", str(cfg), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy (%): W8A8" in proc.stdout
    run = tmp_path / "run"
    assert {"config.yaml", "metrics.jsonl", "last.safetensors", "best.safetensors", "state.safetensors", "accuracy.png",
            "summary.json"} <= {p.name for p in run.iterdir()}
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and set(history[-1]["val_acc"]) == {"w8a8", "w4a4", "w2a2"}
    summary = json.loads((run / "summary.json").read_text())
    assert min(summary["test_acc"].values()) > 60  # 4 classes: chance is 25 %
    _, meta = read_checkpoint(run / "best.safetensors")
    assert meta["arch"] == {"factory": "byom_user:make_net", "kwargs": {"num_classes": 4, "in_channels": 1, "width": 8}}
    assert meta["extra"]["dataset"] == "byom_user:data"
    # the checkpoint never imports the factory by itself; built by the user, it reloads
    with pytest.raises(CheckpointError, match="model factory 'byom_user:make_net'.*bitswitch.models.build"):
        bitswitch.load(run / "best.safetensors")
    model = bitswitch.load(run / "best.safetensors", model=bitswitch.models.build("byom_user:make_net", **meta["arch"]["kwargs"]))
    assert {w for w, _ in bitswitch.get_precision(model).values()} == {8}


def test_factory_run_resumes_bit_exactly(tmp_path, user_code):
    full = train(TrainConfig(out_dir=str(tmp_path / "full"), epochs=2, **COMMON))
    train(TrainConfig(out_dir=str(tmp_path / "split"), epochs=2, **COMMON), stop_after=1)
    resumed = train(TrainConfig(out_dir=str(tmp_path / "split"), epochs=2, **COMMON), resume=True)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.test_acc == full.test_acc


def test_image_folder_tree_trains(tmp_path, user_code):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("val", 6)):  # test/ may be called val/
        for k, name in enumerate(["circle", "square", "stripes"]):
            folder = tmp_path / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 80, (12, 10, 3), dtype=np.uint8)
                img[:, 3 * k : 3 * k + 3] = 255
                Image.fromarray(img).save(folder / f"{i}.png")
    result = train(TrainConfig(out_dir=str(tmp_path / "run"), **{**COMMON, "dataset": "imagefolder", "data_root": str(tmp_path / "images"),
                                                                  "image_size": 8, "epochs": 2, "batch_size": 16}))
    _, meta = read_checkpoint(tmp_path / "run" / "best.safetensors")
    assert meta["arch"]["kwargs"]["num_classes"] == 3 and meta["arch"]["kwargs"]["in_channels"] == 3
    assert meta["extra"]["input_shape"] == [3, 8, 8] and meta["extra"]["dataset"] == "imagefolder"
    assert set(result.test_acc) == {"w8a8", "w4a4", "w2a2"}


def test_bad_factories_and_data_are_named(tmp_path, user_code):
    def run(**kw):
        return train(TrainConfig(out_dir=str(tmp_path / "bad"), **{**COMMON, "epochs": 1, **kw}))

    with pytest.raises(ValueError, match="model 'byom_user:make-net' must look like package.module:callable"):
        TrainConfig(model="byom_user:make-net")
    with pytest.raises(ValueError, match="dataset 'a:b:c' must look like"):
        TrainConfig(dataset="a:b:c")
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg.models'.*PYTHONPATH"):
        run(model="no_such_pkg.models:make")
    with pytest.raises(ValueError, match="has no attribute 'make'"):
        run(model="byom_user:make")
    with pytest.raises(ValueError, match="returned a str, not a torch.nn.Module"):
        run(model="byom_user:not_a_model", model_kwargs={})
    with pytest.raises(ValueError, match="unknown argument.*'depth'.*accepted: num_classes, in_channels, width"):
        run(model_kwargs={"depth": 3})
    with pytest.raises(ValueError, match="dataset 'byom_user:quadrants' must return \\(train_x, train_y, test_x, test_y\\)"):
        run(dataset="byom_user:quadrants")
    with pytest.raises(ValueError, match="dataset 'byom_user:make_net' is called with no arguments"):
        run(dataset="byom_user:make_net")
    with pytest.raises(ValueError, match="set data_root"):
        TrainConfig(dataset="imagefolder")
    with pytest.raises(ValueError, match="image_size resizes the images of dataset 'imagefolder'"):
        TrainConfig(image_size=32)
    with pytest.raises(Exception, match="no train/ folder"):
        run(dataset="imagefolder", data_root=str(tmp_path))
    assert not (tmp_path / "bad").exists()
