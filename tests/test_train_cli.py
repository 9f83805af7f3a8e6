"""The train / eval / quickstart commands end to end."""

from __future__ import annotations

import json

import pytest
import torch

import bitswitch
from bitswitch.cli import main
from bitswitch.nn.precision_file import write_precision_file


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = root / "c.yaml"
    cfg.write_text("mode: joint\nbits: [8, 4, 2]\nmodel: digits_cnn\ndataset: digits\ntrain_subset: 600\nepochs: 5\nlr: 0.003\nnum_threads: 1\n")
    assert main(["train", str(cfg), "epochs=1", "--out", str(root / "run"), "--no-progress"]) == 0
    return root


def test_train_cli_writes_run_and_refuses_bad_input(joint_run, capsys):
    run = joint_run / "run"
    assert (run / "best.safetensors").is_file() and (run / "accuracy.png").is_file()
    assert "epochs: 1" in (run / "config.yaml").read_text()
    assert main(["train", str(joint_run / "c.yaml"), "bits=2,4,8", "--out", str(joint_run / "x")]) == 2
    assert "sorted from highest to lowest" in capsys.readouterr().err
    assert main(["train", str(joint_run / "c.yaml"), "epcohs=3", "--out", str(joint_run / "x")]) == 2
    assert "unknown config key 'epcohs'" in capsys.readouterr().err
    assert main(["train", str(joint_run / "c.yaml"), "epochs=2", "--out", str(run), "--resume"]) == 2
    assert "differing keys: epochs" in capsys.readouterr().err
    assert not (joint_run / "x").exists()


def test_eval_cli_prints_table(joint_run, capsys):
    ckpt = joint_run / "run" / "best.safetensors"
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--bits", "8,4,2", "--data", "digits", "--json", str(joint_run / "rows.json")]) == 0
    out = capsys.readouterr().out
    for col in ("precision", "accuracy %", "model KB", "MBOPs", "W8A8", "W4A4", "W2A2"):
        assert col in out
    rows = json.loads((joint_run / "rows.json").read_text())
    summary = json.loads((joint_run / "run" / "summary.json").read_text())
    assert [r["accuracy %"] for r in rows] == [summary["test_acc"][k] for k in ("w8a8", "w4a4", "w2a2")]
    assert rows[0]["MBOPs"] > rows[1]["MBOPs"] > rows[2]["MBOPs"]
    model = bitswitch.load(ckpt)
    layers = list(bitswitch.quantized_layers(model))
    write_precision_file(joint_run / "subnet.json", {layers[0]: (8, 8), layers[1]: (2, 4)})
    assert main(["eval", str(ckpt), "--config", str(joint_run / "subnet.json")]) == 0
    assert "mixed (subnet.json)" in capsys.readouterr().out
    assert main(["eval", str(ckpt), "--bits", "8,3"]) == 2
    assert "not one this checkpoint supports" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path), "--fp32-epochs", "6", "--joint-epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "per-bit accuracy" in out and "W2A2" in out and "NO" not in out
    ckpt = tmp_path / "digits_cnn_w8.safetensors"
    trained = json.loads((tmp_path / "joint" / "summary.json").read_text())["test_acc"]
    # the one integer checkpoint, reloaded by another command, scores what training measured at every bit-width
    assert main(["eval", str(ckpt), "--bits", "8,6,4,2", "--data", "digits", "--json", str(tmp_path / "rows.json")]) == 0
    accs = [r["accuracy %"] for r in json.loads((tmp_path / "rows.json").read_text())]
    assert accs == [trained[f"w{b}a{b}"] for b in (8, 6, 4, 2)]
    assert min(accs) >= 70.0, accs  # 10 classes: chance is 10 % (this run: 97-99 %)
    model = bitswitch.load(ckpt)
    x = torch.rand(16, 1, 8, 8)
    outputs = {}
    for b in (8, 6, 4, 2):
        bitswitch.set_precision(model, b)
        assert set(bitswitch.get_precision(model).values()) == {(b, b)}
        with torch.no_grad():
            outputs[b] = model(x)
    assert all(not torch.equal(outputs[8], outputs[b]) for b in (6, 4, 2))  # switching changes what the model computes
