"""``bitswitch quickstart`` end to end: every stage's result is checked, not only that it ran."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from bitswitch.cli import main
from bitswitch.nn.precision_file import read_precision_file

BITS = (8, 6, 4, 2)
BUDGET = 5.0


def _row(out: str, label: str) -> str:
    """The one line of the summary table (between its title and the footnote) that holds ``label``."""
    table = out[out.index("bitswitch quickstart:"):out.index("BOPs relative to")]
    lines = [line for line in table.splitlines() if label in line]
    assert len(lines) == 1, f"expected one summary row with {label!r}, got {lines}"
    return lines[0]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    capture = pytest.MonkeyPatch()
    capture.setenv("COLUMNS", "100")  # rich's width when stdout is not a terminal
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["quickstart", "--out", str(out), "--fp32-epochs", "3", "--joint-epochs", "1", "--budget", str(BUDGET), "--no-progress"])
    capture.undo()
    assert rc == 0
    return out, json.loads((out / "summary.json").read_text()), buf.getvalue()


@pytest.mark.slow
def test_training_stages_reach_accuracy_far_above_chance(quickstart):
    _, s, out = quickstart
    assert s["fp32_acc"] > 90.0  # digits: chance is 10 %
    for b in BITS:
        assert s["trained_acc"][f"w{b}a{b}"] > (80.0 if b == 2 else 90.0)
    assert f"{s['fp32_acc']:.2f}" in _row(out, "FP32 model")


@pytest.mark.slow
def test_reloaded_integer_file_switches_to_the_trained_accuracy(quickstart):
    _, s, out = quickstart
    for b in BITS:
        key = f"w{b}a{b}"
        assert s["reloaded_acc"][key] == s["trained_acc"][key]
        row = _row(out, f"W{b}A{b} (file)")
        assert f"{s['reloaded_acc'][key]:.2f}" in row and "= trained" in row


@pytest.mark.slow
def test_one_integer_file_is_a_third_of_fp32(quickstart):
    path, s, out = quickstart
    assert s["int_bytes"] == (path / "model.safetensors").stat().st_size
    assert s["int_bytes"] / s["fp32_bytes"] < 0.35
    assert f"{s['int_bytes'] / s['fp32_bytes']:.2f}x FP32" in _row(out, "model.safetensors")


@pytest.mark.slow
def test_mixed_configuration_spends_the_budget_and_keeps_accuracy(quickstart):
    path, s, out = quickstart
    layers = s["mixed_layers"]
    assert len(layers) == 5
    w_bits = [w for w, a in layers.values()]
    assert all(w == a and w in BITS for w, a in layers.values())
    assert len(set(w_bits)) > 1, "a budget between two bit-widths must give a mixed configuration"
    assert s["mixed_avg_bits"] == sum(w_bits) / len(w_bits)
    assert 4.0 < s["mixed_avg_bits"] <= BUDGET  # the ILP uses the budget, never exceeds it
    assert s["mixed_rel_bops"] < 0.5
    assert s["mixed_acc"] > 90.0
    assert read_precision_file(path / "subnet.json") == {k: tuple(v) for k, v in layers.items()}
    row = _row(out, "mixed ")
    assert f"{s['mixed_acc']:.2f}" in row and ",".join(map(str, w_bits)) in row


@pytest.mark.slow
def test_the_suggested_next_command_runs_on_the_files(quickstart, capsys):
    path, s, out = quickstart
    assert f"bitswitch eval {path / 'model.safetensors'} --config {path / 'subnet.json'}" in out
    rows = path / "rows.json"
    assert main(["eval", str(path / "model.safetensors"), "--config", str(path / "subnet.json"), "--json", str(rows)]) == 0
    assert "mixed (subnet.json)" in capsys.readouterr().out
    assert json.loads(rows.read_text())[0]["accuracy %"] == s["mixed_acc"]  # the subnet's recipe rebuilds the quickstart's model


@pytest.mark.slow
def test_exported_onnx_agrees_with_pytorch(quickstart):
    path, s, out = quickstart
    assert (path / "mixed.onnx").stat().st_size == s["onnx_bytes"]
    assert s["onnx_agreement"] >= 99.0
    # the file computes what PyTorch computes for the exported model (biases snapped to the int32 grid) ...
    assert abs(s["onnx_acc"] - s["exported_acc"]) <= 100.0 - s["onnx_agreement"] + 1e-9
    # ... which is the searched subnet up to decisions at a tie (measured: 0 of 359 images on AVX2, 1 on AVX-512)
    assert abs(s["exported_acc"] - s["mixed_acc"]) <= 100.0 * 2 / 359 + 1e-9
    row = _row(out, "mixed.onnx")
    assert f"{s['onnx_acc']:.2f}" in row and f"{s['onnx_agreement']:.1f} % agree" in row


def test_budget_outside_the_trained_bits_is_refused(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path), "--budget", "9"]) == 2
    assert "--budget must lie between" in capsys.readouterr().err
