"""Conversion, precision switching, calibration and switchable BatchNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bitswitch
from bitswitch.models import build
from bitswitch.nn import QuantConv2d, QuantLinear, SwitchableBatchNorm
from bitswitch.nn.convert import add_bit_width


def _calibrated(name: str = "preact_resnet8", bits=(8, 6, 4, 2), shape=(3, 32, 32), **kw) -> tuple[nn.Module, torch.Tensor]:
    x = torch.randn(16, *shape)
    q = bitswitch.quantize(build(name), bits=bits, **kw)
    bitswitch.calibrate(q, [x[:8], x[8:]])
    return q.eval(), x


def test_default_keeps_first_conv_and_last_linear_in_full_precision() -> None:
    q = bitswitch.quantize(build("resnet18", num_classes=10), bits=(8, 4))
    assert type(q.conv1) is nn.Conv2d and type(q.fc) is nn.Linear
    assert isinstance(q.layer1[0].conv1, QuantConv2d)
    assert q.bitswitch_config.full_precision == ("conv1", "fc")
    # BN after the FP conv1 is plain; BNs after quantized convs are switchable
    assert type(q.bn1) is nn.BatchNorm2d
    assert isinstance(q.layer1[0].bn1, SwitchableBatchNorm) and q.layer1[0].bn1.source == "layer1.0.conv1"


def test_full_precision_by_pattern_and_all_quantized() -> None:
    q = bitswitch.quantize(build("resnet18"), bits=(8,), full_precision=["conv1", "layer4.*", "fc"])
    assert not any(n.startswith("layer4") for n in bitswitch.quantized_layers(q))
    q_all = bitswitch.quantize(build("mlp"), bits=(8, 4), full_precision=())
    assert list(bitswitch.quantized_layers(q_all)) == ["fc1", "fc2", "fc3"]
    assert isinstance(q_all.fc3, QuantLinear)


def test_conversion_errors() -> None:
    with pytest.raises(ValueError, match="matches no quantizable layer"):
        bitswitch.quantize(build("mlp"), full_precision=["nope*"])
    with pytest.raises(ValueError, match="above the storage precision"):
        bitswitch.quantize(build("mlp"), bits=(8, 4), storage_bits=6)
    with pytest.raises(ValueError, match="repeated"):
        bitswitch.quantize(build("mlp"), bits=(4, 4))
    with pytest.raises(ValueError, match="rounding"):
        bitswitch.quantize(build("mlp"), rounding="stochastic")
    with pytest.raises(ValueError, match="nothing to quantize"):
        bitswitch.quantize(nn.Sequential(nn.Linear(2, 2)))
    q = bitswitch.quantize(build("mlp"))
    with pytest.raises(ValueError, match="already quantized"):
        bitswitch.quantize(q)


def test_conversion_leaves_the_input_model_alone() -> None:
    m = build("mlp")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bitswitch.quantize(m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert type(m.fc2) is nn.Linear


def test_set_precision_validation_names_what_is_valid() -> None:
    q, _ = _calibrated()
    with pytest.raises(ValueError, match=r"not one this model was built for; valid: \[8, 6, 4, 2\]"):
        bitswitch.set_precision(q, 3)
    q16 = bitswitch.quantize(build("mlp"), bits=(8, 4))
    with pytest.raises(ValueError, match="above the storage precision h=8"):
        bitswitch.set_precision(q16, {"fc2": (12, 8)})
    with pytest.raises(ValueError, match=r"unknown quantized layer 'layer1.0.conv3'.*did you mean"):
        bitswitch.set_precision(q, {"layer1.0.conv3": 4})
    with pytest.raises(ValueError, match="kept in full precision"):
        bitswitch.set_precision(q, {"conv1": 4})
    with pytest.raises(ValueError, match="precision must be"):
        bitswitch.set_precision(q, "4")
    with pytest.raises(ValueError, match="no quantized layers"):
        bitswitch.set_precision(build("mlp"), 4)


def test_failed_set_precision_changes_nothing() -> None:
    q, _ = _calibrated()
    bitswitch.set_precision(q, 6)
    before = bitswitch.get_precision(q)
    with pytest.raises(ValueError):
        bitswitch.set_precision(q, {"layer1.0.conv1": 4, "layer1.0.conv2": 5})
    assert bitswitch.get_precision(q) == before


def test_outputs_change_with_precision_and_mixed_configs_apply() -> None:
    q, x = _calibrated()
    outs = {}
    with torch.no_grad():
        for b in (8, 6, 4, 2):
            bitswitch.set_precision(q, b)
            outs[b] = q(x)
            assert all(bn.active_bits == b for bn in q.modules() if isinstance(bn, SwitchableBatchNorm))
    for a, b in [(8, 6), (6, 4), (4, 2)]:
        assert not torch.equal(outs[a], outs[b])
    bitswitch.set_precision(q, 8)
    bitswitch.set_precision(q, {"layer1.0.conv1": (2, 8), "layer2.0.conv2": 4})
    prec = bitswitch.get_precision(q)
    assert prec["layer1.0.conv1"] == (2, 8) and prec["layer2.0.conv2"] == (4, 4) and prec["layer3.0.conv1"] == (8, 8)
    assert q.layer1[0].bn2.active_bits == 2  # follows the weight bits of its source layer
    with torch.no_grad():
        assert not torch.equal(q(x), outs[8])


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


def test_calibrated_resnet20_at_8_bits_stays_close_to_fp32(shared_data) -> None:
    from bitswitch.data import DATASET_STATS, TensorLoader, load_dataset

    test = load_dataset("cifar10", shared_data / "cifar10", "test").subset(torch.arange(256))
    batches = list(TensorLoader(test, 64, shuffle=False, **DATASET_STATS["cifar10"]))
    fp = build("preact_resnet20")
    # a few BN-statistics passes so the random-init network has realistic activations
    fp.train()
    with torch.no_grad():
        for x, _ in batches:
            fp(x)
    fp.eval()
    q = bitswitch.quantize(fp, bits=(8, 6, 4, 2))
    bitswitch.calibrate(q, batches[:2])
    q.eval()
    x = torch.cat([b[0] for b in batches[2:]])
    with torch.no_grad():
        ref = fp(x)
        sqnr = {}
        for b in (8, 6, 4, 2):
            bitswitch.set_precision(q, b)
            sqnr[b] = _sqnr(ref, q(x))
    assert sqnr[8] > 30, sqnr
    assert sqnr[8] > sqnr[6] > sqnr[4] > sqnr[2], sqnr


def test_full_precision_mode_reproduces_the_float_model() -> None:
    m = build("preact_resnet8").eval()
    q, x = _calibrated()
    q2 = bitswitch.quantize(m)
    bitswitch.calibrate(q2, [x])
    bitswitch.set_precision(q2, None)
    with torch.no_grad():
        assert torch.equal(q2.eval()(x), m(x))


def test_uncalibrated_model_says_what_to_do() -> None:
    q = bitswitch.quantize(build("mlp"))
    with pytest.raises(RuntimeError, match="bitswitch.calibrate"):
        q(torch.randn(2, 64))


def test_calibration_bad_input() -> None:
    q = bitswitch.quantize(build("mlp"))
    with pytest.raises(ValueError, match="empty"):
        bitswitch.calibrate(q, [])
    with pytest.raises(ValueError, match="NaN"):
        bitswitch.calibrate(q, [torch.full((2, 64), float("nan"))])
    with pytest.raises(ValueError, match="weight_init"):
        bitswitch.calibrate(q, [torch.randn(2, 64)], weight_init="magic")


def test_activation_grid_sign_follows_the_data() -> None:
    q, _ = _calibrated("mobilenet_v2", bits=(8, 4), shape=(3, 64, 64))
    layers = bitswitch.quantized_layers(q)
    # a projection conv reads a ReLU6 output (unsigned); an expansion conv reads the linear
    # bottleneck (signed)
    assert not layers["features.2.conv.2"].act_quant.signed
    assert layers["features.3.conv.0.0"].act_quant.signed


def test_training_step_updates_every_scale_of_the_active_bit() -> None:
    q, x = _calibrated()
    q.train()
    bitswitch.set_precision(q, 4)
    q(x).square().mean().backward()
    for name, m in bitswitch.quantized_layers(q).items():
        assert m.weight.grad is not None and m.weight_quant.scale.grad is not None, name
        assert m.act_quant.scales["4"].grad is not None and m.act_quant.scales["8"].grad is None, name


def test_layer_costs_count_macs_and_params() -> None:
    q = bitswitch.quantize(build("mobilenet_v2"), bits=(8, 4))
    costs = {c.name: c for c in bitswitch.layer_costs(q, (3, 224, 224))}
    assert costs["features.0.0"].macs == 112 * 112 * 32 * 27 and not costs["features.0.0"].quantized
    dw = costs["features.2.conv.1.0"]  # 3x3 depthwise, 96 channels, stride 2 -> 56x56
    assert dw.kind == "depthwise" and dw.macs == 56 * 56 * 96 * 9 and dw.params == 96 * 9
    assert costs["classifier.1"].macs == 1280 * 1000
    total = sum(c.macs for c in costs.values())
    assert 295e6 < total < 305e6  # MobileNetV2 is ~300M MACs
    assert "features.18.0" in bitswitch.layer_table(list(costs.values()))


def _weight_only_mlp(bits=(8, 4)) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(16, 64)
    q = bitswitch.quantize(build("mlp"), bits=bits, full_precision=(), weight_only=["*"], switchable_bn=False)
    bitswitch.calibrate(q, [x])
    return q.eval(), x


def test_add_bit_width_gives_the_double_rounding_of_the_stored_codes(tmp_path) -> None:
    q, x = _weight_only_mlp()
    with pytest.raises(ValueError, match="not one this model was built for"):
        bitswitch.set_precision(q, 6)
    wide = bitswitch.quantize(build("mlp"), bits=(8, 6, 4), act_bits=(8, 4), full_precision=(), weight_only=["*"], switchable_bn=False)
    wide.load_state_dict(q.state_dict())  # the same latent weights and shared scales: only the bit list differs
    add_bit_width(q, [6, 3])
    assert q.fc1.weight_quant.bits == (8, 6, 4, 3)
    bitswitch.set_precision(q, 6)
    bitswitch.set_precision(wide, 6)
    assert torch.equal(q.fc1.effective_weight(), wide.fc1.effective_weight())
    bitswitch.set_precision(q, 3)
    out3 = q(x)
    with pytest.raises(ValueError, match=r"untrained weight bit-width\(s\) \[3\]"):
        bitswitch.save(q, tmp_path / "m.safetensors")  # the file could not load at that precision
    bitswitch.set_precision(q, 8)
    reloaded = bitswitch.load(bitswitch.save(q, tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="not one this model was built for"):
        bitswitch.set_precision(reloaded, 3)  # the file lists the trained bit-widths only
    add_bit_width(reloaded, 3)
    bitswitch.set_precision(reloaded, 3)
    assert torch.equal(reloaded(x), out3)


def test_add_bit_width_refusals() -> None:
    q, _ = _weight_only_mlp()
    with pytest.raises(ValueError, match="above the storage precision h=8"):
        add_bit_width(q, [10])
    with pytest.raises(ValueError, match="must be an integer"):
        add_bit_width(q, [4.5])
    bn = bitswitch.quantize(build("mlp"), bits=(8, 4), full_precision=(), weight_only=["*"])
    with pytest.raises(ValueError, match="per-bit-width BatchNorms"):
        add_bit_width(bn, [5])
    unshared = bitswitch.quantize(build("mlp"), bits=(8, 4), full_precision=(), weight_only=["*"], variant="unshared", switchable_bn=False)
    with pytest.raises(ValueError, match="variant 'unshared'"):
        add_bit_width(unshared, [5])


def test_every_batchnorm_behind_a_quantized_layer_is_per_bit_in_a_preact_resnet() -> None:
    # each block's bn1 normalises the previous block's residual sum, whose statistics change with the
    # precision: one shared copy mixes the bit-widths' statistics (the 2-bit model then evaluates with
    # the others' running means); only layer1.0.bn1, behind the FP32 stem, stays plain
    model, _ = _calibrated("preact_resnet8")
    plain = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and ".bn." not in n]
    assert plain == ["layer1.0.bn1"]
    sources = {n: m.source for n, m in model.named_modules() if isinstance(m, SwitchableBatchNorm)}
    assert sources["layer2.0.bn1"] == "layer1.0.conv2" and sources["bn"] == "layer3.0.conv2"
