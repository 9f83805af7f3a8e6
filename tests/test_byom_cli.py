"""Every command takes what the others write: ``ptq -> info -> eval -> export`` through the CLI on a
custom model (``--model package.module:factory``) and a small ImageNet-style image folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitswitch.cli import main


@pytest.fixture(scope="module")
def ptq_file(tiny_image_folder: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ptq")
    assert main(["ptq", "--model", "byom_models:tiny_cnn", "--data", str(tiny_image_folder), "--num-calib", "8", "--budget", "0.6",
                 "--candidates", "W8A16,W8A8,W4A8", "--out", str(out)]) == 0
    return out / "model.safetensors"


def test_ptq_info_eval_export_chain(ptq_file: Path, tiny_image_folder: Path, tmp_path: Path, capsys) -> None:
    assert main(["info", str(ptq_file)]) == 0  # the file alone: no model code needed
    text = capsys.readouterr().out
    assert '"factory": "byom_models:tiny_cnn"' in text and "2 BatchNorms folded" in text and "int8" in text
    assert main(["eval", str(ptq_file), "--data", str(tiny_image_folder), "--trust-factory"]) == 0
    assert "PTQ (mixed, as saved)" in capsys.readouterr().out
    onnx = tmp_path / "m.onnx"
    assert main(["export", str(ptq_file), "--model", "byom_models:tiny_cnn", "--data", str(tiny_image_folder), "--out", str(onnx)]) == 0
    assert onnx.is_file()


def test_recorded_factory_needs_trust_and_must_fit(ptq_file: Path, tiny_image_folder: Path, tmp_path: Path, capsys) -> None:
    assert main(["eval", str(ptq_file), "--data", str(tiny_image_folder)]) == 2  # importing the recorded factory runs code
    assert "pass --trust-factory" in capsys.readouterr().err
    assert main(["hessian", str(ptq_file), "--model", "byom_models:wider_cnn", "--data", str(tiny_image_folder), "--out", str(tmp_path / "h.json")]) == 2
    assert "tensor 0.bias: the file declares F32 [8], the model needs F32 [12]" in capsys.readouterr().err  # the first that differs
    assert not (tmp_path / "h.json").exists()  # nothing half-written
    assert main(["eval", str(ptq_file), "--data", str(tiny_image_folder), "--model", "no_such_module:f"]) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err


def test_uncapturable_model_fails_clearly_and_writes_nothing(tiny_image_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["ptq", "--model", "byom_models:branchy", "--data", str(tiny_image_folder), "--num-calib", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot capture _Branchy with torch.export at" in err and "byom_models.py" in err and "(if x.mean() > 0:" in err
    assert not out.exists()
