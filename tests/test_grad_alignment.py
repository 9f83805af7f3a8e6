"""``benchmarks/grad_alignment.py`` on digits: the per-bit gradients are the ones a plain backward
gives, the model is left as found, both points of a run are reported, and a fixed run is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bitswitch.nn.convert import set_precision
from bitswitch.train import TrainConfig, train
from bitswitch.train.data import load_data
from bitswitch.train.loop import build_run_model

TINY = {"dataset": "digits", "model": "digits_cnn", "train_subset": 600, "batch_size": 64, "epochs": 1, "num_threads": 1,
        "calib_batches": 2, "optimizer": "adam", "lr": 1e-2, "bits": [8, 4, 2], "progress": False}


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("grad_alignment")


def test_gradients_cosines_and_both_points(bench, tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY, out_dir=str(tmp_path / "joint"))
    train(cfg)
    model = build_run_model(cfg, load_data(cfg), resume=False)
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(32, 1, 8, 8, generator=g) * 16, torch.randint(0, 10, (32,), generator=g))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = bench.bit_gradients(model, [batch], [8, 2])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BatchNorm statistics restored
    weights = bench.quantized_weights(model)
    set_precision(model, 2)
    model.zero_grad()
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    assert torch.equal(grads[2][0], torch.cat([w.grad.flatten() for w in weights]))
    assert not torch.equal(grads[2], grads[8])

    assert bench.main([str(tmp_path / "joint"), "--batches", "2", "--threads", "1", "--out", str(tmp_path), "--name", "ga"]) == 0
    rows = json.loads((tmp_path / "ga.json").read_text())["rows"]
    assert {r["point"] for r in rows} == {"calibrated start", "end of training"}
    quantities = [r["quantity"] for r in rows if r["point"] == "calibrated start"]
    assert quantities == ["|grad| w8a8", "|grad| w4a4", "|grad| w2a2", "cos(w8a8, w4a4)", "cos(w8a8, w2a2)", "cos(w4a4, w2a2)"]
    assert all(-1.0 <= r["min"] <= r["mean"] <= r["max"] <= 1.0 for r in rows if r["quantity"].startswith("cos"))
    start, end = ({r["quantity"]: r["mean"] for r in rows if r["point"] == p} for p in ("calibrated start", "end of training"))
    assert start != end  # the trained latent weights, not the start again


def test_a_fixed_run_is_refused(bench, tmp_path: Path) -> None:
    train(TrainConfig(**{**TINY, "mode": "fixed", "bits": [4]}, out_dir=str(tmp_path / "w4")))
    with pytest.raises(SystemExit, match="a joint run of two or more bit-widths"):
        bench.main([str(tmp_path / "w4"), "--out", str(tmp_path)])
