"""The train / eval commands end to end (quickstart: test_quickstart.py)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

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
    assert main(["train", str(joint_run / "c.yaml"), "epochs=2", "--resume", str(run)]) == 2
    assert f"differing keys: epochs: 1 (run) vs 2 ({joint_run / 'c.yaml'}). To continue the run as it was started, pass only its folder: bitswitch train --resume {run}" in capsys.readouterr().err
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


def test_ctrl_c_prints_one_line_and_resume_needs_only_the_run_folder(joint_run, monkeypatch, press_ctrl_c, capsys):
    """The README's form: a config plus overrides; Ctrl-C mid-epoch; `--resume RUN_DIR` alone finishes it
    exactly as an uninterrupted run does."""
    cfg, run = str(joint_run / "c.yaml"), joint_run / "split"
    assert main(["train", cfg, "epochs=2", "train_subset=300", "batch_size=64", "--out", str(joint_run / "whole"), "--no-progress"]) == 0
    press_ctrl_c(6)  # 270 training images in batches of 64: 4 steps per epoch
    capsys.readouterr()
    assert main(["train", cfg, "epochs=2", "train_subset=300", "batch_size=64", "--out", str(run), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err == (f"bitswitch train: interrupted after step 6 (epoch 2, batch 2 of 4); saved the training state to "
                   f"{run}/state.safetensors; resume with: bitswitch train --resume {run}\n")
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "lr=0.5"]) == 2
    assert "lr=0.5 would change what it computes" in capsys.readouterr().err
    assert main(["train", "--resume", str(joint_run / "nothing")]) == 2
    assert "no config.yaml there; pass the folder of the interrupted run" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "num_threads=1"]) == 0
    whole = bitswitch.load(joint_run / "whole" / "best.safetensors").state_dict()
    resumed = bitswitch.load(run / "best.safetensors").state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert json.loads((run / "summary.json").read_text())["test_acc"] == json.loads((joint_run / "whole" / "summary.json").read_text())["test_acc"]


def test_train_help_lists_every_config_key_with_its_default(capsys):
    from bitswitch.train.config import field_default, field_docs

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = re.sub(r"\n +# ", " ", capsys.readouterr().out)  # join the wrapped comments
    for _, key, comment in field_docs():
        assert comment, f"TrainConfig.{key} has no comment"
        default = field_default(key)
        shown = default if isinstance(default, str) else json.dumps(default)
        assert f"\n    {key}: {shown}  # {comment}\n" in out, key


def test_eval_limit_uses_a_subset_and_says_so_with_progress_on_a_terminal(joint_run, monkeypatch, capsys):
    ckpt = joint_run / "run" / "best.safetensors"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # capsys's stream, as a terminal would be
    assert main(["eval", str(ckpt), "--bits", "8,2", "--limit", "100", "--batch-size", "40", "--json", str(joint_run / "lim.json")]) == 0
    out, err = capsys.readouterr()
    assert "on digits test (100 images, --limit 100: a subset, omit it for the whole split)" in out
    assert "eval:" in err and "/6 [00:00<" in err  # a bar over 2 bit-widths x 3 batches, with elapsed<left
    monkeypatch.undo()
    assert main(["eval", str(ckpt), "--bits", "8", "--limit", "100", "--batch-size", "40"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # no bar when stderr is not a terminal
    shown = float(out.split("W8A8")[1].split()[0])  # the same 100 images again, at 8 bits
    assert json.loads((joint_run / "lim.json").read_text())[0]["accuracy %"] == pytest.approx(shown, abs=0.005)


def test_a_hard_interrupt_is_one_line_naming_the_last_saved_state(joint_run, monkeypatch, capsys):
    """A second Ctrl-C (a KeyboardInterrupt inside a step) or one before the first step: no traceback either."""
    from bitswitch.train import loop

    cfg, run = str(joint_run / "c.yaml"), joint_run / "hard"
    monkeypatch.setattr(loop, "load_data", lambda cfg: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["train", cfg, "train_subset=300", "--out", str(run), "--no-progress"]) == 130
    assert capsys.readouterr().err == "bitswitch train: interrupted; nothing was saved\n"
    monkeypatch.undo()
    real, calls = loop.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # 270 images / 128: 2 steps per epoch, so in the third epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    assert main(["train", cfg, "epochs=3", "train_subset=300", "--out", str(run), "--no-progress"]) == 130
    assert capsys.readouterr().err == (f"bitswitch train: interrupted; the last saved training state is {run}/state.safetensors; "
                                       f"resume with: bitswitch train --resume {run}\n")
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_ctrl_c_in_any_command_is_one_line(joint_run, monkeypatch, capsys):
    from bitswitch.commands import eval as eval_command

    monkeypatch.setattr(eval_command, "labelled_batches", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["eval", str(joint_run / "run" / "best.safetensors")]) == 130
    assert capsys.readouterr().err == "bitswitch eval: interrupted\n"


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").iterdir()), ids=lambda p: p.name)
def test_every_shipped_config_is_a_valid_train_config(path):
    """The files under configs/ are what docs and benchmarks tell users to run: each must load and validate."""
    from bitswitch.train import TrainConfig

    cfg = TrainConfig.from_file(path)
    assert cfg.out_dir.startswith("runs/"), "shipped configs write under runs/"
