"""ONNX export: QDQ files verified in onnxruntime for uniform and mixed precisions, clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

import bitswitch
from bitswitch.export.onnx import UnsupportedOpError, VerificationError, executed_kernels, export_onnx, run_onnx, verify_onnx
from bitswitch.models import build
from bitswitch.nn.precision_file import write_precision_file

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SHAPE = (3, 16, 16)


def _model(name: str = "preact_resnet8", bits=(8, 6, 4, 2), **kw) -> tuple[nn.Module, torch.Tensor]:
    """A calibrated model with non-trivial BN statistics, in eval mode."""
    m = build(name, **kw)
    x = torch.randn(32, *SHAPE)
    m.train()
    with torch.no_grad():
        m(x)  # BN running stats that are not the identity
    q = bitswitch.quantize(m.eval(), bits=bits)
    bitswitch.calibrate(q, [x])
    return q.eval(), x


@pytest.fixture(scope="module")
def resnet8():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return _model()


def _init_types(path) -> dict[str, int]:
    m = onnx.load(str(path))
    return {t.name: t.data_type for t in m.graph.initializer}


@pytest.mark.parametrize("bits", [8, 6, 4, 2], ids=lambda b: f"w{b}a{b}")
def test_uniform_round_trip(resnet8, tmp_path, bits):
    q, x = resnet8
    bitswitch.set_precision(q, bits)
    path = tmp_path / f"m{bits}.onnx"
    rep = export_onnx(q, path, input_shape=SHAPE)
    res = verify_onnx(q, path, [x])
    assert res.passed and res.top1_agreement >= 0.995
    T = onnx.TensorProto
    types = _init_types(path)
    weights = [v for k, v in types.items() if k.endswith("weight_int")]
    assert weights and all(v == (T.INT4 if bits <= 4 else T.INT8) for v in weights)  # integers in the file
    assert not any(k.endswith(".weight") or k.endswith("_weight") for k in types if k.startswith("layer")), "a quantized weight stored as float"
    assert rep.op_counts["QuantizeLinear"] >= len(bitswitch.quantized_layers(q)) - 1
    assert all(lt.act_clipped == (bits not in (8, 4)) for lt in rep.layers if lt.a_bits is not None)
    # pre-activation blocks normalise a residual sum: those BNs are kept as ops and reported
    assert rep.unfolded_bn and all(".bn1" in n or n == "bn" for n in rep.unfolded_bn)


def test_mixed_config_round_trip_via_cli(resnet8, tmp_path):
    q, x = resnet8
    layers = list(bitswitch.quantized_layers(q))
    choices = [(8, 8), (4, 8), (6, 4), (2, 6), (8, 2), (4, 4)]
    config = {n: choices[i % len(choices)] for i, n in enumerate(layers)}
    bitswitch.set_precision(q, config)
    path = tmp_path / "mixed.onnx"
    rep = export_onnx(q, path, input_shape=SHAPE)
    assert {(lt.w_bits, lt.a_bits) for lt in rep.layers if lt.w_bits} == set(config.values())
    assert verify_onnx(q, path, [x]).passed

    # the same through the command line, from a checkpoint and a precision file
    from bitswitch.cli import main

    bitswitch.set_precision(q, 8)
    ckpt = tmp_path / "m.safetensors"
    bitswitch.save(q, ckpt, extra={"input_shape": list(SHAPE)})
    cfg = write_precision_file(tmp_path / "subnet.json", config)
    out = tmp_path / "cli.onnx"
    assert main(["export", str(ckpt), "--config", str(cfg), "--out", str(out), "--verify-images", "64"]) == 0
    reloaded = bitswitch.load(ckpt)
    bitswitch.set_precision(reloaded, config)
    np.testing.assert_allclose(run_onnx(out, x), run_onnx(path, x), rtol=0, atol=0)


def test_conv_bn_folded_and_integer_kernels(tmp_path):
    torch.manual_seed(0)
    q, x = _model("small_cnn", in_channels=3) if False else _model("preact_resnet8")
    small = build("small_cnn")
    xs = torch.randn(16, 1, 28, 28)
    small.train()
    with torch.no_grad():
        small(xs)
    qs = bitswitch.quantize(small.eval(), bits=(8, 4), full_precision=())
    bitswitch.calibrate(qs, [xs])
    qs.eval()
    bitswitch.set_precision(qs, 8)
    path = tmp_path / "small.onnx"
    rep = export_onnx(qs, path, input_shape=(1, 28, 28))
    assert rep.unfolded_bn == [] and "BatchNormalization" not in rep.op_counts
    assert verify_onnx(qs, path, [xs]).passed
    kernels = executed_kernels(path, xs[:1])
    # conv -> BN -> ReLU -> next layer's Q is the pattern onnxruntime runs as an integer kernel
    assert kernels.get("QLinearConv", 0) == sum(lt.fusable for lt in rep.layers) >= 1


def test_fp32_baseline_matches_latent_model(tmp_path):
    torch.manual_seed(0)
    q, x = _model()
    bitswitch.set_precision(q, None)
    path = tmp_path / "fp.onnx"
    rep = export_onnx(q, path, input_shape=SHAPE, fp32=True)
    assert "QuantizeLinear" not in rep.op_counts
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(path, x), q(x).numpy(), atol=1e-4, rtol=1e-4)


class _Sigmoidal(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.sigmoid(self.conv(x)).mean((2, 3)))


def test_unsupported_op_is_named(tmp_path):
    m = bitswitch.quantize(_Sigmoidal(), bits=(8,), full_precision=())
    bitswitch.calibrate(m, [torch.randn(4, *SHAPE)])
    with pytest.raises(UnsupportedOpError, match="sigmoid"):
        export_onnx(m, tmp_path / "x.onnx", input_shape=SHAPE)
    ln = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    q = bitswitch.quantize(ln, bits=(8,), full_precision=())
    bitswitch.calibrate(q, [torch.randn(4, 8)])
    with pytest.raises(UnsupportedOpError, match="LayerNorm"):
        export_onnx(q, tmp_path / "y.onnx", input_shape=(8,))


def test_verification_fails_loudly(resnet8, tmp_path):
    q, x = resnet8
    bitswitch.set_precision(q, 8)
    path = tmp_path / "m.onnx"
    export_onnx(q, path, input_shape=SHAPE)
    bitswitch.set_precision(q, 2)  # the PyTorch model no longer matches the file
    with pytest.raises(VerificationError, match="top-1 agreement|output steps"):
        verify_onnx(q, path, [x], max_steps=4)


def test_missing_onnx_gives_install_hint(resnet8, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"bitswitch\[export\]"):
        export_onnx(resnet8[0], tmp_path / "m.onnx", input_shape=SHAPE)
