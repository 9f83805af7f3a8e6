"""The README's command table walked end to end through the command line, as a new user would, on a
tiny model and small data: each command reads what the one before it wrote (through the default
file names where the README relies on them), and a Ctrl-C in the middle of training is resumed from
the run folder alone."""

from __future__ import annotations

import json
from pathlib import Path

from bitswitch.cli import main

CONFIG = "model: digits_cnn\ndataset: digits\ntrain_subset: 400\nbatch_size: 64\nnum_threads: 1\nprogress: false\n"


def test_train_resume_info_eval_hessian_search_export_ptq(tmp_path, monkeypatch, press_ctrl_c, capsys, tiny_image_folder):
    monkeypatch.chdir(tmp_path)
    Path("digits.yaml").write_text(CONFIG)

    def run(*argv: str, code: int = 0) -> str:
        """One command; its exit code, and its stdout and stderr together."""
        assert main(list(argv)) == code, (argv, capsys.readouterr())
        out, err = capsys.readouterr()
        return out + err

    # train FP32, then joint from it; Ctrl-C in the second epoch (360 images / 64: 5 steps per epoch)
    assert "run directory: fp32" in run("train", "digits.yaml", "mode=fp32", "epochs=1", "--out", "fp32")
    press_ctrl_c(7)
    said = run("train", "digits.yaml", "mode=joint", "bits=8,4,2", "init_from=fp32", "epochs=2", "--out", "joint", code=130)
    assert said.strip().endswith("resume with: bitswitch train --resume joint") and "Traceback" not in said
    assert "test accuracy (%): W8A8" in run(*said.split("resume with: bitswitch ")[1].split())
    assert json.loads(Path("joint/summary.json").read_text())["epochs"] == 2

    # every checkpoint train wrote is read by info and eval
    assert "0 quantized" in run("info", "fp32/best.safetensors")
    assert "2 quantized" in run("info", "joint/best.safetensors")  # of 4: the first and last layer stay FP32
    assert "FP32" in run("eval", "fp32/best.safetensors", "--limit", "200")
    rows = run("eval", "joint/best.safetensors", "--bits", "8,4,2", "--limit", "200")
    assert all(f"W{b}A{b}" in rows for b in (8, 4, 2)) and "(200 images, --limit 200" in rows

    # hessian -> search -> eval --config -> export --config, through the default file names
    assert "wrote joint/best.hessian.json" in run("hessian", "joint/best.safetensors", "--samples", "64", "--max-iter", "5")
    assert "wrote subnet.json" in run("search", "joint/best.safetensors", "--budget", "avg-bits=5")
    assert "mixed (subnet.json)" in run("eval", "joint/best.safetensors", "--config", "subnet.json", "--limit", "200")
    run("export", "joint/best.safetensors", "--config", "subnet.json", "--out", "subnet.onnx")
    assert Path("subnet.onnx").is_file() and not Path("subnet.failed.onnx").exists()

    # post-training mixed precision of a custom model, and its output read by info, eval and export
    run("ptq", "--model", "byom_models:tiny_cnn", "--data", str(tiny_image_folder), "--num-calib", "8", "--budget", "0.6", "--out", "ptq")
    assert '"factory": "byom_models:tiny_cnn"' in run("info", "ptq/model.safetensors")
    assert "PTQ (mixed, as saved)" in run("eval", "ptq/model.safetensors", "--data", str(tiny_image_folder), "--trust-factory")
    run("export", "ptq/model.safetensors", "--trust-factory", "--data", str(tiny_image_folder), "--out", "ptq.onnx")
    assert Path("ptq.onnx").is_file()
