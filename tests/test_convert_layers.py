"""Conversion of user models: isinstance matching, filter_fn, Conv1d, MultiheadAttention, weight-only
Embedding/Linear, the conversion report, warnings and errors, BatchNorm pairs from the data flow,
and integer checkpoints of every layer type."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bitswitch
from bitswitch.cost import layer_costs
from bitswitch.nn import QuantConv1d, QuantEmbedding, QuantLinear, QuantMultiheadAttention, SwitchableBatchNorm


class MyLinear(nn.Linear):
    """A subclass with its own forward computing the same thing (like timm's Linear)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class StdConv(nn.Conv2d):
    """A subclass whose forward transforms the weight: converting it would change the model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class Mixed(nn.Module):
    """Every supported layer type: Embedding, Conv1d, MultiheadAttention, Linear subclass, Conv2d."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.conv1d = nn.Conv1d(8, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.conv2d = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = MyLinear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids.long())  # (N, L, 8); long() lets layer_costs feed float zeros
        x = self.conv1d(x.transpose(1, 2)).transpose(1, 2)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.bn(self.conv2d(x.unsqueeze(1))).mean(1)
        return self.head(torch.relu(self.fc(x)).mean(1))


IDS = torch.randint(0, 16, (4, 6), generator=torch.Generator().manual_seed(0))


def _quantized_mixed(**kw) -> nn.Module:
    q = bitswitch.quantize(Mixed().eval(), bits=(8, 4, 2), full_precision=(), weight_only=["embed"], **kw)
    bitswitch.calibrate(q, [IDS])
    return q.eval()


def test_every_layer_type_is_converted_by_isinstance() -> None:
    q = _quantized_mixed()
    assert isinstance(q.embed, QuantEmbedding) and q.embed.weight_only and q.embed.a_bits is None
    assert isinstance(q.conv1d, QuantConv1d) and isinstance(q.fc, QuantLinear) and isinstance(q.attn, QuantMultiheadAttention)
    assert [n for n in bitswitch.quantized_layers(q) if n.startswith("attn")] == ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"]
    assert q.bitswitch_config.weight_only == ("embed",) and q.bitswitch_config.batchnorms == {"bn": "conv2d"}
    rows = {r["name"]: r["action"] for r in bitswitch.conversion_report(q)}
    assert rows == {"embed": "weight-only", "conv1d": "quantized", "attn.q_proj": "quantized", "attn.k_proj": "quantized",
                    "attn.v_proj": "quantized", "attn.out_proj": "quantized", "conv2d": "quantized", "fc": "quantized", "head": "quantized"}


def test_full_precision_run_reproduces_the_float_model_and_every_projection_matters() -> None:
    fp = Mixed().eval()
    q = bitswitch.quantize(fp, bits=(8, 2), full_precision=(), weight_only=["embed"])
    bitswitch.calibrate(q, [IDS])
    q.eval()
    bitswitch.set_precision(q, None)
    assert torch.allclose(q(IDS), fp(IDS), atol=1e-6)
    bitswitch.set_precision(q, 8)
    ref = q(IDS)
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):  # nn.MultiheadAttention ignored a swapped out_proj
        bitswitch.set_precision(q, {f"attn.{proj}": 2})
        assert not torch.equal(q(IDS), ref), proj
        bitswitch.set_precision(q, 8)


def test_weight_only_layers_keep_float_inputs_whatever_the_precision_spec() -> None:
    q = bitswitch.quantize(Mixed().eval(), bits=(8, 4), full_precision=(), weight_only=["embed", "fc"])
    bitswitch.set_precision(q, (4, 8))
    assert bitswitch.get_precision(q)["fc"] == (4, None) and bitswitch.get_precision(q)["head"] == (4, 8)
    bitswitch.set_precision(q, {"fc": (8, None), "embed": 4})
    assert (q.fc.w_bits, q.fc.a_bits, q.embed.a_bits) == (8, None, None)
    x = torch.randn(3, 8)
    assert torch.equal(q.fc(x), F.linear(x, q.fc.effective_weight(), q.fc.bias))  # input not quantized
    with pytest.raises(ValueError, match="both be None"):
        bitswitch.set_precision(q, {"head": (4, None)})


def test_precision_files_carry_weight_only_layers(tmp_path: Path) -> None:
    from bitswitch.nn.precision_file import apply_precision_file, write_precision_file

    q = bitswitch.quantize(Mixed().eval(), bits=(8, 4), full_precision=(), weight_only=["embed"])
    bitswitch.set_precision(q, {"embed": 4, "fc": (4, 8)})
    saved = bitswitch.get_precision(q)
    path = write_precision_file(tmp_path / "p.json", saved)
    bitswitch.set_precision(q, 8)
    assert apply_precision_file(q, path) == saved and bitswitch.get_precision(q) == saved


def test_subclass_with_other_arithmetic_is_left_float_with_a_warning() -> None:
    model = nn.Sequential(StdConv(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.warns(UserWarning, match=r"0 \(StdConv: its forward\(\) computes something other than Conv2d"):
        q = bitswitch.quantize(model, bits=(8,), full_precision=())
    assert type(q[0]) is StdConv and isinstance(q[2], nn.Conv2d) and q.bitswitch_config.quantized == ("2",)
    rows = {r["name"]: r for r in bitswitch.conversion_report(q)}
    assert rows["0"]["action"] == "skipped" and rows["4"]["action"] == "skipped" and "lazy" in rows["4"]["reason"]


def test_filter_fn_selects_layers_and_unsupported_requests_are_errors() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 4, 2), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1))
    with pytest.warns(UserWarning, match=r"1 \(ConvTranspose2d"):
        q = bitswitch.quantize(model, bits=(8,), full_precision=(), filter_fn=lambda m, n: isinstance(m, nn.Conv2d) and n != "2")
    assert q.bitswitch_config.quantized == ("0", "3")
    assert {r["name"]: r["reason"] for r in bitswitch.conversion_report(q)}["2"] == "filter_fn returned False"
    with pytest.raises(ValueError, match=r"filter_fn selects '1', a ConvTranspose2d, which bitswitch cannot quantize.*supported: nn.Linear"):
        bitswitch.quantize(model, filter_fn=lambda m, n: True)
    with pytest.raises(ValueError, match=r"full_precision entry '1' matches '1', a ConvTranspose2d"):
        bitswitch.quantize(model, full_precision=["1"])
    with pytest.raises(ValueError, match=r"weight_only entry 'conv' matches no quantizable layer; did you mean"):
        bitswitch.quantize(Mixed(), weight_only=["conv"])
    with pytest.raises(ValueError, match="both in full_precision and in weight_only"):
        bitswitch.quantize(Mixed(), full_precision=["fc"], weight_only=["f*"])
    with pytest.raises(ValueError, match="full_precision must be"):
        bitswitch.quantize(Mixed(), full_precision=None)  # type: ignore[arg-type]


def test_auto_keeps_first_and_last_in_call_order_for_cnns_and_embeddings_plus_head_otherwise() -> None:
    class Reordered(nn.Module):  # head registered first, stem last
        def __init__(self) -> None:
            super().__init__()
            self.head, self.body, self.stem = nn.Linear(4, 2), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.head(self.body(self.stem(x)).mean((2, 3)))

    assert bitswitch.quantize(Reordered(), example_inputs=torch.randn(1, 3, 8, 8)).bitswitch_config.full_precision == ("head", "stem")
    assert bitswitch.quantize(Reordered()).bitswitch_config.full_precision == ("head", "stem")  # registration order: same pair
    assert bitswitch.quantize(Reordered(), full_precision="first_last").bitswitch_config.quantized == ("body",)
    q = bitswitch.quantize(Mixed())
    assert q.bitswitch_config.full_precision == ("head",)  # embeddings are never quantized unless weight_only asks
    assert isinstance(q.attn.q_proj, QuantLinear) and type(q.embed) is nn.Embedding


class BnBeforeConv(nn.Module):
    """BatchNorm registered before the conv that feeds it; ``block`` used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(self.stem(x))))
        x = self.block(self.block(x))
        return self.head(x.mean((2, 3)))


def _train_bn_stats(model: nn.Module, x: torch.Tensor) -> nn.Module:
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def test_batchnorm_pairs_come_from_the_data_flow(tmp_path: Path) -> None:
    x = torch.randn(8, 3, 8, 8)
    fp = _train_bn_stats(BnBeforeConv(), x)
    with_flow = bitswitch.quantize(fp, bits=(8, 4), full_precision=(), example_inputs=x)
    assert with_flow.bitswitch_config.batchnorms == {"bn": "conv", "block.1": "block.0"}
    guessed = bitswitch.quantize(fp, bits=(8, 4), full_precision=())
    assert guessed.bn.source == "stem"  # registration order picks the wrong layer ...
    bitswitch.calibrate(guessed, [x])
    assert guessed.bn.source == "conv" and guessed.bitswitch_config.batchnorms == with_flow.bitswitch_config.batchnorms  # ... calibrate fixes it
    bitswitch.set_precision(guessed, {"conv": 4})
    assert guessed.bn.active_bits == 4 and guessed.block[1].active_bits == 8
    loaded = bitswitch.load(bitswitch.save(guessed, tmp_path / "m.safetensors"), model=BnBeforeConv())
    assert loaded.bn.source == "conv"
    with torch.no_grad():
        assert torch.equal(loaded(x), guessed.eval()(x))


def test_calibrate_makes_a_plain_batchnorm_fed_by_a_quantized_layer_switchable() -> None:
    x = torch.randn(4, 3, 8, 8)
    q = bitswitch.quantize(BnBeforeConv(), bits=(8, 4), full_precision=["stem"])
    assert type(q.bn) is nn.BatchNorm2d  # follows the FP stem by registration order
    bitswitch.calibrate(q, [x])
    assert isinstance(q.bn, SwitchableBatchNorm) and q.bn.source == "conv"


def test_mixed_model_checkpoint_is_bit_identical_at_every_bit_width_and_holds_codes_only(tmp_path: Path) -> None:
    q = _quantized_mixed()
    path = bitswitch.save(q, tmp_path / "m.safetensors")
    loaded = bitswitch.load(path, model=Mixed())
    assert {r["name"]: r["action"] for r in bitswitch.conversion_report(loaded)} == {
        r["name"]: r["action"] for r in bitswitch.conversion_report(q) if r["action"] != "skipped"}
    with torch.no_grad():
        for b in (8, 4, 2):
            bitswitch.set_precision(q, b)
            bitswitch.set_precision(loaded, b)
            assert torch.equal(q(IDS), loaded(IDS)), b
        bitswitch.set_precision(q, {"fc": 2, "attn.k_proj": (4, 8), "embed": 4})
        bitswitch.save(q, path)
        loaded = bitswitch.load(path, model=Mixed())
        assert bitswitch.get_precision(loaded) == bitswitch.get_precision(q) and torch.equal(q(IDS), loaded(IDS))
    weights = sum(m.weight_shape.numel() for m in bitswitch.quantized_layers(q).values())
    fp_bytes = sum(p.numel() * 4 for p in Mixed().parameters())
    assert path.stat().st_size < weights + (fp_bytes - 4 * weights) + 12_000  # int8 codes + float rest + scales/metadata


def test_layer_costs_count_the_new_layer_types() -> None:
    costs = {c.name: c for c in layer_costs(bitswitch.quantize(Mixed(), bits=(8,), full_precision=()), (6,))}
    assert costs["embed"].kind == "embedding" and costs["embed"].macs == 0 and not costs["embed"].quantized
    assert costs["conv1d"].macs == 6 * 8 * 8 * 3 and costs["attn.k_proj"].macs == 6 * 8 * 8
    assert costs["conv2d"].macs == 2 * 6 * 8 * 9 and costs["fc"].kind == "linear"


def test_packed_checkpoint_of_tied_weight_only_layers_is_bit_identical(tmp_path: Path) -> None:
    from bitswitch.export import save_compact

    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.mix, self.head = nn.Embedding(16, 8), nn.Linear(8, 8), nn.Linear(8, 16, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(torch.relu(self.mix(self.embed(ids))))

    q = bitswitch.quantize(TiedLM(), bits=(8, 4, 2), full_precision=(), weight_only=["embed", "head"])
    bitswitch.calibrate(q, [IDS])
    q.eval()
    save_compact(q, tmp_path / "p.safetensors", keep=(4, 2))
    loaded = bitswitch.load(tmp_path / "p.safetensors", model=TiedLM())
    assert loaded.head.weight_int is loaded.embed.weight_int
    with torch.no_grad():
        for b in (4, 2):
            bitswitch.set_precision(q, b)
            bitswitch.set_precision(loaded, b)
            assert torch.equal(q(IDS), loaded(IDS)), b


def test_timm_mobilenetv3_head_subclass_is_found_and_every_batchnorm_follows_its_conv(timm) -> None:
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10).eval()
    assert type(model.classifier) is not nn.Linear and isinstance(model.classifier, nn.Linear)  # timm's Linear subclass
    x = torch.randn(2, 3, 32, 32)
    q = bitswitch.quantize(model, bits=(8, 4), example_inputs=x)
    assert q.bitswitch_config.full_precision == ("conv_stem", "classifier")  # was a conv in the head: the subclass was skipped
    switchable = {n: m.source for n, m in q.named_modules() if isinstance(m, SwitchableBatchNorm)}
    assert switchable and all(src.rsplit(".", 1)[0] == n.rsplit(".", 1)[0] for n, src in switchable.items())  # bn1 <- conv_dw etc.
    bitswitch.calibrate(q, [x])
    bitswitch.set_precision(q, 4)
    assert q.eval()(x).shape == (2, 10)


def test_attention_kept_fp32_by_name_round_trips(tmp_path: Path) -> None:
    q = bitswitch.quantize(Mixed(), bits=(8, 4), full_precision=["attn.*"])
    assert isinstance(q.attn, QuantMultiheadAttention) and type(q.attn.q_proj) is nn.Linear
    bitswitch.calibrate(q, [IDS])
    loaded = bitswitch.load(bitswitch.save(q, tmp_path / "m.safetensors"), model=Mixed())
    with torch.no_grad():
        assert torch.equal(loaded(IDS), q.eval()(IDS))
