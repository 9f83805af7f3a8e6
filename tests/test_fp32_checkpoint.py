"""An FP32 run's checkpoint is an ordinary bitswitch checkpoint: eval and info open it, init_from reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bitswitch
from bitswitch.cli import main
from bitswitch.train import TrainConfig, load_data, train
from bitswitch.train.loop import build_run_model
from bitswitch.train.model import build_float_model, load_fp32_weights

TINY = {"dataset": "digits", "model": "digits_cnn", "batch_size": 64, "train_subset": 500, "epochs": 1, "lr": 3e-3,
        "progress": False, "num_threads": 1, "calib_batches": 1}


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fp32") / "run"
    train(TrainConfig.from_dict({**TINY, "mode": "fp32", "out_dir": str(out)}))
    return out


def test_eval_and_info_open_an_fp32_run(fp32_run, capsys, tmp_path):
    ckpt = fp32_run / "best.safetensors"
    assert main(["eval", str(ckpt), "--json", str(tmp_path / "rows.json")]) == 0
    assert "FP32" in capsys.readouterr().out
    rows = json.loads((tmp_path / "rows.json").read_text())
    summary = json.loads((fp32_run / "summary.json").read_text())
    assert [r["precision"] for r in rows] == ["FP32"]
    assert rows[0]["accuracy %"] == summary["test_acc"]["fp32"]  # eval reloads the file the run evaluated
    assert main(["eval", str(ckpt), "--bits", "8"]) == 2
    assert "FP32 checkpoint" in capsys.readouterr().err
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "quantization: none (FP32 checkpoint)" in out
    assert "conv1" in out and "fc" in out and "0 quantized" in out


def test_init_from_reads_an_fp32_run(fp32_run, tmp_path):
    weights = bitswitch.load(fp32_run / "best.safetensors").state_dict()
    cfg = TrainConfig.from_dict({**TINY, "mode": "joint", "bits": [8, 4], "init_from": str(fp32_run), "out_dir": str(tmp_path / "joint")})
    model = build_run_model(cfg, load_data(cfg), resume=False)
    for name in ("conv1.weight", "conv2.weight", "conv3.weight", "fc.weight", "fc.bias"):  # quantized layers keep the FP32 latent weight
        assert torch.equal(model.state_dict()[name], weights[name]), name
    # the file, not the directory; and a quantized checkpoint or another architecture is refused
    data = load_data(cfg)
    fresh = build_float_model(cfg, data)
    load_fp32_weights(fresh, fp32_run / "best.safetensors")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in weights.items())
    quantized = tmp_path / "q.safetensors"
    bitswitch.save(bitswitch.quantize(build_float_model(cfg, data), [8, 4]), quantized)
    with pytest.raises(ValueError, match="is a quantized checkpoint"):
        load_fp32_weights(fresh, quantized)
    other = TrainConfig.from_dict({**TINY, "model": "mlp", "mode": "fp32", "out_dir": str(tmp_path / "o")})
    with pytest.raises(ValueError, match="but this run builds"):
        load_fp32_weights(build_float_model(other, data), fp32_run)
    with pytest.raises(FileNotFoundError, match="init_from: no FP32 weights"):
        load_fp32_weights(fresh, tmp_path)
