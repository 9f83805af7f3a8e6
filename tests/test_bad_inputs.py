"""Bad configs and bad CLI arguments: refused before work starts, as one line with exit code 2 (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bitswitch
from bitswitch.cli import main
from bitswitch.models import build
from bitswitch.nn.precision_file import apply_precision_file, write_precision_file
from bitswitch.train import TrainConfig

ALIAS_BOMB = """\
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
model_kwargs: {bomb: [*g, *g, *g, *g, *g, *g, *g, *g, *g]}
"""


@pytest.mark.parametrize("text, match", [
    (ALIAS_BOMB, r"YAML aliases \(\*a\) are not allowed"),
    ("epochs: 1\nlr: 0.1\nepochs: 3\n", "duplicate key 'epochs'"),
    ("lr: .inf\n", "lr must be a finite number"),
    ("grad_clip: .nan\n", "grad_clip must be a finite number"),
    ("hasb_p_max: 5\n", r"hasb_p_max must be in \[0, 1\], got 5"),
    ("out_dir: ''\n", "out_dir must name a folder"),
    ("device: cpuFOO\n", "device must be cpu, cuda or cuda:N, got 'cpuFOO'"),
    ("num_threads: 100000\n", r"num_threads must be in \[0, \d+\] \(this machine's cores\), got 100000"),
    ("betas: [0.9, 1.5]\n", r"betas must be in \[0, 1\)"),
])
def test_bad_config_files_are_refused_naming_the_option(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_file(path)


def test_threads_above_the_cores_need_the_force_switch(monkeypatch) -> None:
    monkeypatch.setenv("BITSWITCH_FORCE_THREADS", "1")
    assert TrainConfig(num_threads=100000).num_threads == 100000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = bitswitch.quantize(build("mlp", in_features=16, hidden=8, num_classes=3), (8, 4, 2), full_precision=())
    bitswitch.calibrate(m, [torch.randn(8, 16)])
    return bitswitch.save(m, tmp_path_factory.mktemp("cli") / "m.safetensors")


def test_a_precision_file_missing_a_layer_is_an_error_unless_others_stay(ckpt: Path, tmp_path: Path) -> None:
    model = bitswitch.load(ckpt)
    subnet = write_precision_file(tmp_path / "subnet.json", {"fc1": (4, 4), "fc2": (2, 2)})
    with pytest.raises(ValueError, match=r"no precision for 1 quantized layer\(s\) \(fc3\).*--others-stay"):
        apply_precision_file(model, subnet)
    apply_precision_file(model, subnet, others_stay=True)
    assert bitswitch.get_precision(model) == {"fc1": (4, 4), "fc2": (2, 2), "fc3": (8, 8)}


def _cases(ckpt: Path, tmp: Path) -> list[tuple[list[str], str]]:
    bomb = tmp / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    cfg = tmp / "ok.yaml"
    cfg.write_text(f"out_dir: {tmp / 'run'}\nepochs: 1\n")
    flipped = tmp / "flipped.safetensors"
    raw = bytearray(ckpt.read_bytes())
    raw[-3] ^= 4  # in the tensor data
    flipped.write_bytes(bytes(raw))
    c = str(ckpt)
    return [
        (["search", c, "--act", "99"], "--act: must be 'tied' or a bit-width in [2, 16], got '99'"),
        (["search", c, "--budget", "avg-bits=3", "--sweep", "bops=0:1:100000000"], "N must be 1 to 1000 points, got 100000000"),
        (["search", c, "--budget", "avg-bits=3", "--threads", "100000"], "--threads: must be an integer in [0,"),
        (["export", c, "--out", str(tmp / "m.onnx"), "--verify-images", "-5"], "--verify-images: must be an integer >= 1, got -5"),
        (["export", c, "--out", str(tmp / "m.onnx"), "--min-top1", "nan"], "--min-top1: must be a finite number >= 0.0 and <= 1.0, got 'nan'"),
        (["export", c, "--out", str(tmp / "m.onnx"), "--bits", "99"], "--bits: must be an integer in [2, 16], got 99"),
        (["eval", c, "--recalibrate-bn", "-5"], "--recalibrate-bn: must be an integer >= 0, got -5"),
        (["eval", c, "--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
        (["eval", c, "--data", "imagenet"], "--data 'imagenet' is neither a dataset name"),
        (["hessian", c, "--tol", "nan"], "--tol: must be a finite number > 0.0, got 'nan'"),
        (["info", str(tmp / "missing.safetensors")], "checkpoint not found"),
        (["info", str(flipped)], "checksum mismatch"),
        (["info", c, "--input-shape", "100000,100000,3"], "elements per sample; the limit is"),
        (["info", c, "--input-shape", "3,x"], "must be comma-separated integers"),
        (["train", str(bomb)], "YAML aliases (*a) are not allowed"),
        (["train", str(cfg), "lr=.inf"], "lr must be a finite number, got inf"),
        (["train", str(cfg), "device=cpuFOO"], "device must be cpu, cuda or cuda:N"),
        (["train", str(cfg), "out_dir="], "out_dir must name a folder"),
        (["train", str(cfg), "hasb_p_max=5"], "hasb_p_max must be in [0, 1], got 5"),
        (["train", str(cfg), "num_threads=100000"], "num_threads must be in [0,"),
        (["train", str(tmp / "none.yaml")], "config file not found"),
        (["no-such-command"], "invalid choice"),
    ]


def test_cli_bad_arguments_give_one_line_and_exit_code_2(ckpt: Path, tmp_path: Path, capsys) -> None:
    for argv, expected in _cases(ckpt, tmp_path):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse refuses at parse time
            rc = e.code
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2, (argv, err)
        assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, (argv, err)
        assert expected in lines[0], (argv, lines[0])


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        main(["--debug", "info", str(tmp_path / "missing.safetensors")])


def test_model_that_does_not_fit_the_data_is_refused_before_training(tmp_path: Path) -> None:
    from bitswitch.train import train

    cfg = TrainConfig(dataset="digits", model="digits_cnn", model_kwargs={"num_classes": 5}, out_dir=str(tmp_path / "run"),
                      epochs=1, train_subset=200, progress=False, num_threads=1)
    with pytest.raises(ValueError, match=r"outputs of shape \[2, 5\] per batch of 2, the data has 10 classes"):
        train(cfg)
    assert not (tmp_path / "run").exists()


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_hostile_pt_file_is_a_clear_error(tmp_path: Path) -> None:
    from bitswitch.models import load_weights

    path = tmp_path / "evil.pt"
    torch.save({"w": _Payload()}, path)
    with pytest.raises(ValueError, match="refused: not a plain PyTorch state dict"):
        load_weights(build("mlp"), path)
