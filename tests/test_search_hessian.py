"""Hutchinson traces against the exact Hessian, trace files, and the hessian/search commands."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import bitswitch
from bitswitch.cli import main
from bitswitch.models import build

pytestmark = pytest.mark.usefixtures("one_thread")
from bitswitch.nn.precision_file import read_precision_file
from bitswitch.search.hessian import (
    float_copy,
    hessian_traces,
    load_traces,
    save_traces,
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3))
    q = bitswitch.quantize(m, bits=(8, 4), full_precision=())
    bitswitch.calibrate(q, [torch.randn(32, 6)])
    return q


def exact_traces(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    f = float_copy(model).eval()
    params = {k: v.detach() for k, v in f.named_parameters()}
    out = {}
    for name in ("0", "2", "4"):
        key = f"{name}.weight"

        def loss(w: torch.Tensor, key: str = key) -> torch.Tensor:
            return F.cross_entropy(functional_call(f, {**params, key: w.reshape(params[key].shape)}, (x,)), y)

        h = torch.autograd.functional.hessian(loss, params[key].reshape(-1))
        out[name] = float(torch.diagonal(h).sum())
    return out


def test_hutchinson_matches_exact_hessian_trace() -> None:
    model = tiny_model()
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    exact = exact_traces(model, x, y)
    est = hessian_traces(model, [(x, y)], tol=0.03, max_iter=1500, min_iter=30, seed=1)
    for name, t in est.items():
        stderr = abs(t.trace) * t.rel_stderr
        assert abs(t.trace - exact[name]) <= 4 * stderr + 0.02 * abs(exact[name]), (name, t, exact[name])
        assert t.n_params == bitswitch.quantized_layers(model)[name].weight.numel()
        assert t.iterations >= 30


def test_integer_model_gives_the_same_traces_as_its_top_precision_function() -> None:
    model = tiny_model()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    latent = hessian_traces(model, [(x, y)], max_iter=5, tol=1e-9)
    # the latent model with its weights rounded to the top precision computes what the integer model does
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for layer in bitswitch.quantized_layers(rounded).values():
            layer.weight.copy_(layer.weight_quant(layer.weight, 8))
    for layer in bitswitch.quantized_layers(model).values():
        layer.to_integer()
    f = float_copy(model)
    for n, l in bitswitch.quantized_layers(f).items():
        assert torch.equal(l.weight, bitswitch.quantized_layers(rounded)[n].weight) and l.w_bits is None and l.a_bits is None
    a = hessian_traces(model, [(x, y)], max_iter=5, tol=1e-9)
    b = hessian_traces(model, [(x, y)], max_iter=5, tol=1e-9)
    assert {k: v.trace for k, v in a.items()} == {k: v.trace for k, v in b.items()}  # seeded: reproducible
    assert all(not t.converged and t.iterations == 5 for t in a.values())
    same = hessian_traces(rounded, [(x, y)], max_iter=5, tol=1e-9)
    assert {k: v.trace for k, v in a.items()} == {k: v.trace for k, v in same.items()}  # the same function, the same probes
    # and close to the latent model's: 8-bit rounding moves each weight by at most half a step
    for k, t in latent.items():
        assert a[k].trace == pytest.approx(t.trace, rel=0.02) and a[k].trace != t.trace


def test_trace_file_round_trip_and_errors(tmp_path: Path) -> None:
    model = tiny_model()
    traces = hessian_traces(model, [(torch.randn(8, 6), torch.randint(0, 3, (8,)))], max_iter=4)
    path = save_traces(tmp_path / "h.json", traces, samples=8)
    back = load_traces(path)
    assert {k: v.trace_per_param for k, v in back.items()} == {k: v.trace_per_param for k, v in traces.items()}
    with pytest.raises(FileNotFoundError, match="bitswitch hessian"):
        load_traces(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"layers": {}}))
    with pytest.raises(ValueError, match="not a bitswitch Hessian trace file"):
        load_traces(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown layer"):
        hessian_traces(model, [(torch.randn(8, 6), torch.randint(0, 3, (8,)))], layers=["nope"])
    with pytest.raises(ValueError, match="no data"):
        hessian_traces(model, [])


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A {4,3,2} ResNet-8 calibrated on digits, saved with its input shape."""
    torch.manual_seed(0)
    from bitswitch.search.evaluate import dataset_batches

    batches, shape = dataset_batches("digits", None, "train", 64, 32)
    model = bitswitch.quantize(build("preact_resnet8", in_channels=1, width=4), bits=(4, 3, 2))
    bitswitch.calibrate(model, batches)
    return bitswitch.save(model, tmp_path / "m.safetensors", extra={"input_shape": list(shape)})


def test_unconverged_traces_are_a_warning_in_hessian_and_in_search(tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Progress says how far the iterations are and the time left; layers above --tol at --max-iter are named with their error."""
    assert main(["hessian", str(ckpt), "--data", "digits", "--samples", "32", "--max-iter", "12", "--tol", "1e-9"]) == 0
    out, err = capsys.readouterr()
    assert "Hessian traces on 32 digits training images (--samples 32)" in out
    n = len(load_traces(tmp_path / "m.hessian.json"))
    lines = [x for x in out.splitlines() if x.startswith("hessian: iteration")]
    assert [x.split(", about")[0] for x in lines] == [f"hessian: iteration 10 of 12, layers left {n}", f"hessian: iteration 12 of 12, layers left {n}"]
    assert all(x.endswith(" s left") for x in lines)
    traces = load_traces(tmp_path / "m.hessian.json")
    worst = max(traces.values(), key=lambda t: t.rel_stderr)
    assert err.startswith(f"warning: {n} of {n} layers did not converge (relative standard error of the trace): {worst.name} ({worst.rel_stderr:.3f}), ")
    assert n == 8 and all(f"{t.name} ({t.rel_stderr:.3f})" in err for t in traces.values())
    assert err.endswith("; raise --max-iter (now 12) or --samples, or accept a looser --tol\n")
    assert main(["search", str(ckpt), "--budget", "avg-bits=3", "--out", str(tmp_path / "s.json")]) == 0
    assert capsys.readouterr().err.startswith(f"warning: {tmp_path / 'm.hessian.json'}: {n} of {n} layers did not converge")
    assert main(["hessian", str(ckpt), "--data", "digits", "--samples", "32", "--max-iter", "12", "--tol", "10"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["search", str(ckpt), "--budget", "avg-bits=3", "--out", str(tmp_path / "s.json")]) == 0
    assert capsys.readouterr().err == ""


def test_hessian_and_search_commands(tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = bitswitch.load(ckpt)
    assert main(["hessian", str(ckpt), "--data", "digits", "--samples", "64", "--max-iter", "3"]) == 0
    trace_file = tmp_path / "m.hessian.json"
    assert trace_file.is_file()
    out = tmp_path / "subnet.json"
    capsys.readouterr()
    assert main(["search", str(ckpt), "--budget", "avg-bits=3", "--out", str(out)]) == 0  # default objective 'noise': data-free
    assert json.loads(out.read_text())["objective"] == "noise"
    capsys.readouterr()
    assert main(["search", str(ckpt), "--objective", "loss", "--budget", "avg-bits=3", "--out", str(out)]) == 2  # needs data
    assert "--objective noise" in capsys.readouterr().err
    assert main(["search", str(ckpt), "--objective", "loss", "--budget", "avg-bits=3", "--baselines", "--random", "5", "--out", str(out),
                 "--data", "digits", "--samples", "64", "--recal-samples", "32"]) == 0
    config = read_precision_file(out)
    assert set(config) == set(bitswitch.quantized_layers(model))
    assert sum(w for w, _ in config.values()) / len(config) <= 3
    bitswitch.set_precision(model, config)  # what `bitswitch eval --config` does with it
    assert json.loads(out.read_text())["objective"] == "loss"
    capsys.readouterr()
    assert main(["search", str(ckpt), "--budget", "avg-bits=3", "--rerank", "3", "--rerank-samples", "48", "--out", str(out),
                 "--data", "digits", "--samples", "64", "--recal-samples", "32"]) == 0
    text = capsys.readouterr().out
    assert "re-ranking 3 ILP proposal(s)" in text and "on 48 held-out images" in text and text.count("measured loss") >= 4
    assert "uniform W3 (reference, not a proposal)" in text
    doc = json.loads(out.read_text())
    assert doc["rerank"]["k"] == 3 and doc["avg_bits"] <= 3
    assert main(["search", str(ckpt), "--sweep", "bops=0.1:0.2:2", "--rerank", "2", "--data", "digits"]) == 2
    assert "not to --sweep" in capsys.readouterr().err
    assert main(["search", str(ckpt), "--objective", "noise", "--sweep", "bops=0.07:0.25:4", "--out", str(tmp_path / "p.json"), "--out-dir", str(tmp_path / "sw")]) == 0
    points = json.loads((tmp_path / "p.json").read_text())["points"]
    assert points and len(list((tmp_path / "sw").glob("*.json"))) == len(points)
    capsys.readouterr()
    assert main(["search", str(ckpt), "--objective", "bits", "--budget", "bops=0.01"]) == 2
    assert "smallest feasible budget is bops=0.0625x" in capsys.readouterr().err
    assert main(["search", str(ckpt), "--objective", "bits", "--budget", "bops=lots"]) == 2
    assert "malformed budget" in capsys.readouterr().err
    assert main(["search", str(ckpt), "--objective", "bits", "--hessian", str(tmp_path / "none.json"), "--budget", "avg-bits=3"]) == 2
    assert "bitswitch hessian" in capsys.readouterr().err
