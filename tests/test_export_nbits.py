"""Weight-only linear layers as onnxruntime ``MatMulNBits`` (2/4/8-bit kernels) from the one int8 file.

Tolerances: with ``accuracy_level=0`` onnxruntime computes ``A @ ((B - zp) * scale)^T`` in float32
with the model's own codes and steps, so the only difference from PyTorch is the summation order
(~1e-6 relative); the checks allow 0.01 output steps (``max|y| / 127``) and demand every next-token
answer equal. ``accuracy_level=4`` quantizes the layer inputs to int8 per block inside the kernel
(not exact): measured ~0.5 % of a layer's output range, so those checks allow 3 output steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bitswitch
from bitswitch.cli import main
from bitswitch.export.nbits import INT8_COMPUTE_MAX_STEPS, INT8_COMPUTE_MIN_TOP1, NBITS_OP, block_size_for, kernel_bits, nbits_weight, pack_codes, rewrite_nbits
from bitswitch.export.onnx import export_onnx, run_onnx, verify_onnx
from bitswitch.models import build
from bitswitch.nn.convert import calibrate, set_precision

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CONTEXT = 16


# --------------------------------------------------------------------------------------------------
# packing


def test_pack_codes_hand_computed():
    # 2 bits: signed [-2, -1, 0, 1] -> unsigned [0, 1, 2, 3] -> 0 | 1<<2 | 2<<4 | 3<<6 = 228; the block
    # of 16 is padded with the zero point 2 (value 0): 2 | 2<<2 | 2<<4 | 2<<6 = 170
    assert pack_codes(np.array([[-2, -1, 0, 1]]), 2, 16).tolist() == [[[228, 170, 170, 170]]]
    # 4 bits: [-8, 7, 0] -> [0, 15, 8], low nibble first: 0 | 15<<4 = 240, 8 | 8<<4 (padding) = 136
    assert pack_codes(np.array([[-8, 7, 0]]), 4, 16).tolist() == [[[240] + [136] * 7]]
    # 8 bits: one byte per code, offset 128; K = 17 spills into a second block of 16
    packed = pack_codes(np.arange(-128, -111).reshape(1, 17), 8, 16)
    assert packed.shape == (1, 2, 16) and packed[0, 0].tolist() == list(range(16)) and packed[0, 1].tolist() == [16] + [128] * 15
    # a 3-bit grid in the 4-bit kernel; two rows stay apart
    assert pack_codes(np.array([[-4], [3]]), 4, 16)[:, 0, 0].tolist() == [4 | 8 << 4, 11 | 8 << 4]
    with pytest.raises(ValueError, match="do not fit a signed 2-bit grid"):
        pack_codes(np.array([[2]]), 2, 16)


def test_kernel_bits_and_block_size():
    assert [kernel_bits(b) for b in (1, 2, 3, 4, 5, 6, 8)] == [2, 2, 4, 4, 8, 8, 8]
    with pytest.raises(ValueError, match="at most 8-bit weights.*got 9 bits"):
        kernel_bits(9)
    assert block_size_for(128) == 128 and block_size_for(336) == 128 and block_size_for(40) == 64 and block_size_for(3) == 16
    with pytest.raises(ValueError, match="block_size must be a power of two >= 16"):
        block_size_for(64, 48)


def test_scales_replicate_the_channel_step():
    codes = torch.tensor([[1, -2] * 20, [0, 1] * 20])
    w = nbits_weight(codes, torch.tensor([0.5, 0.25]), 2, block_size=16)
    assert (w.bits, w.block_size, w.k, w.n) == (2, 16, 40, 2) and w.packed.shape == (2, 3, 4)
    assert w.scales.tolist() == [[0.5] * 3, [0.25] * 3]


# --------------------------------------------------------------------------------------------------
# exact maths on one layer


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_single_linear_matches_in_float_compute(tmp_path, bits):
    torch.manual_seed(bits)
    q = bitswitch.quantize(nn.Sequential(nn.Linear(40, 24)), bits=(8, 4, 3, 2), weight_only=["0"], full_precision=())
    calibrate(q, [torch.randn(8, 5, 40)])
    set_precision(q, bits)
    x = torch.randn(3, 5, 40)
    for level, tol in ((0, 1e-5), (4, 2e-2)):
        report = export_onnx(q, tmp_path / f"l{level}.onnx", example_inputs=x, accuracy_level=level, block_size=16)
        assert report.op_counts == {NBITS_OP: 1} and report.layers[0].weight_type == f"uint{kernel_bits(bits)}"
        got = run_onnx(tmp_path / f"l{level}.onnx", x)
        with torch.no_grad():
            ref = q(x).numpy()
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max(), (level, np.abs(got - ref).max())


def test_bad_options_fail_before_the_capture(tmp_path):
    q = bitswitch.quantize(nn.Sequential(nn.Linear(16, 8)), bits=(8, 4), weight_only=["0"], full_precision=())
    with pytest.raises(ValueError, match="accuracy_level must be one of"):
        export_onnx(q, tmp_path / "x.onnx", example_inputs=torch.randn(2, 16), accuracy_level=5)
    with pytest.raises(ValueError, match="block_size must be a power of two"):
        export_onnx(q, tmp_path / "x.onnx", example_inputs=torch.randn(2, 16), block_size=24)
    assert not (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------------------------------
# the language model


def _tiny_llama(weight_only: bool) -> nn.Module:
    torch.manual_seed(0)
    m = build("char_llama", vocab_size=82, dim=32, layers=1, heads=2, hidden=48, context=CONTEXT)
    q = bitswitch.quantize(m, (8, 4, 2), weight_only=["model.layers.*"] if weight_only else ())
    calibrate(q, [torch.randint(0, 82, (8, CONTEXT))])
    return q


@pytest.fixture(scope="module")
def lm_text(shared_data):
    from bitswitch.data.text import load_shakespeare

    return load_shakespeare(shared_data / "shakespeare")


@pytest.fixture(scope="module")
def lm_export(lm_text, shared_data, tmp_path_factory):
    """A weight-only joint checkpoint, exported at 4 bits through the CLI (accuracy level 0)."""
    from bitswitch.lm import lm_metadata

    d = tmp_path_factory.mktemp("lm")
    model = _tiny_llama(weight_only=True)
    bitswitch.save(model, d / "lm.safetensors", extra=lm_metadata(lm_text.vocab, CONTEXT))
    data = str(shared_data / "shakespeare")
    assert main(["export", str(d / "lm.safetensors"), "--bits", "4", "--out", str(d / "w4.onnx"), "--accuracy-level", "0",
                 "--data", data, "--verify-images", "32", "--max-steps", "0.01", "--min-top1", "1"]) == 0
    return d, bitswitch.load(d / "lm.safetensors"), data


def _windows(lm_text, n: int = 32) -> list[torch.Tensor]:
    return list(lm_text.test[: n * CONTEXT].reshape(n, CONTEXT).split(16))


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_lm_matches_pytorch_at_every_bit_width(lm_export, lm_text, bits):
    d, model, _ = lm_export
    set_precision(model, bits)
    path = d / f"rw{bits}.onnx"
    written = rewrite_nbits(model, d / "w4.onnx", path, accuracy_level=0)
    assert set(written.values()) == {bits} and len(written) == 7
    res = verify_onnx(model, path, _windows(lm_text), min_top1=1.0, max_steps=0.01)
    assert res.distinct_top1 > 5
    fast = rewrite_nbits(model, path, d / f"fast{bits}.onnx", accuracy_level=4)
    assert verify_onnx(model, d / f"fast{bits}.onnx", _windows(lm_text), min_top1=INT8_COMPUTE_MIN_TOP1, max_steps=INT8_COMPUTE_MAX_STEPS).passed
    assert len(fast) == 7


def test_rewrite_equals_a_fresh_export(lm_export, tmp_path):
    """``rewrite_nbits`` (milliseconds) writes the same weights as a fresh export (seconds), here at 2 bits."""
    d, model, _ = lm_export
    set_precision(model, 2)
    report = export_onnx(model, tmp_path / "w2.onnx", example_inputs=torch.zeros(2, CONTEXT, dtype=torch.long), dynamic_length=True, accuracy_level=0)
    assert report.op_counts[NBITS_OP] == 7 and {lt.kernel for lt in report.layers} == {NBITS_OP}
    rewrite_nbits(model, d / "w4.onnx", tmp_path / "rw2.onnx")
    fresh, rewritten = (onnx.load(str(p)) for p in (tmp_path / "w2.onnx", tmp_path / "rw2.onnx"))
    nbits = lambda m: {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer if "weight_" in t.name}  # noqa: E731
    a, b = nbits(fresh), nbits(rewritten)
    assert a.keys() == b.keys() and len(a) == 14 and all(np.array_equal(a[k], b[k]) for k in a)
    # tied embedding and head: one float table in the file
    assert sum(list(t.dims) == [82, 32] for t in fresh.graph.initializer) == 1


def test_cli_graph_rewrite_and_bad_bits(lm_export, tmp_path, capsys):
    d, _, data = lm_export
    ckpt = str(d / "lm.safetensors")
    assert main(["export", ckpt, "--bits", "2", "--graph", str(d / "w4.onnx"), "--out", str(tmp_path / "w2.onnx"), "--accuracy-level", "0",
                 "--data", data, "--verify-images", "16", "--max-steps", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "7 MatMulNBits layers" in out and "(uint2)" in out and "verified" in out
    # accuracy level 4 (the default: int8 compute, not exact) is verified with its own looser defaults
    assert main(["export", ckpt, "--bits", "8", "--graph", str(d / "w4.onnx"), "--out", str(tmp_path / "w8.onnx"), "--data", data,
                 "--verify-images", "16"]) == 0
    assert f"need >= {100 * INT8_COMPUTE_MIN_TOP1:.2f} %" in capsys.readouterr().out
    assert main(["export", ckpt, "--bits", "3", "--out", str(tmp_path / "w3.onnx"), "--data", data]) != 0
    assert "weight bit-width 3 is not one this model was built for; valid: [8, 4, 2]" in capsys.readouterr().err
    assert not (tmp_path / "w3.onnx").exists()


def test_weight_and_activation_layers_keep_the_qdq_path(tmp_path, lm_export):
    d, _, _ = lm_export
    q = _tiny_llama(weight_only=False)
    set_precision(q, 8)
    report = export_onnx(q, tmp_path / "w8a8.onnx", example_inputs=torch.randint(0, 82, (2, CONTEXT)))
    assert NBITS_OP not in report.op_counts
    assert {lt.kernel for lt in report.layers} == {"MatMulIntegerToFloat"} and len(report.layers) == 7
    with pytest.raises(ValueError, match="has no MatMulNBits layers"):
        rewrite_nbits(q, tmp_path / "w8a8.onnx", tmp_path / "x.onnx")
