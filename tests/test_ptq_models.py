"""PTQ, Hessian traces and ILP search on models bitswitch has never seen: timm CNNs and a ViT, a
Hugging Face Llama fed token ids. Random-init tiny configurations; no weights are downloaded.

Phase 1 re-runs graph suffixes of the ``torch.export`` capture; each check compares the SQNR it
measured for one group with a plain eager forward of the model at that configuration.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bitswitch
from bitswitch.capture import CaptureError
from bitswitch.ptq import PTQConfig, start_session
from bitswitch.search import SearchProblem, hessian_traces, sensitivity

transformers = pytest.importorskip("transformers")  # imported before the timm fixture adds the torchvision stand-in
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

CANDS = [(8, 16), (8, 8), (4, 8)]


def _check_session(model: nn.Module, x: torch.Tensor) -> None:
    s = start_session(model, [x], PTQConfig(CANDS, progress=False, chunk_size=len(x), sample_size=4096))
    assert sorted(n for g in s.groups for n in g.layers) == sorted(s.layers)
    sens = s.sensitivity()
    for g in (s.groups[0], s.groups[len(s.groups) // 2], s.groups[-1]):  # suffix re-runs on the graph == eager runs
        assert sens[g.name][(4, 8)] == pytest.approx(s.output_sqnr({g.name: (4, 8)}), rel=1e-9, abs=1e-9)
    r = s.search(0.5)
    assert r.relative_bops <= 0.5
    return s


def test_ptq_on_timm_mobilenetv3(timm) -> None:
    # SE gates, hard-swish, depthwise convs; BatchNormAct2d (BN + activation in one module) folded on the graph.
    # (convnext_atto and efficientnet_b0 work the same way; left out here for time: ~15 s each on 2 busy cores.)
    model = timm.create_model("mobilenetv3_small_050", num_classes=10).eval()
    s = _check_session(model, torch.randn(4, 3, 32, 32))
    assert len(s.folded_pairs) > 30


def test_ptq_on_timm_vit(timm) -> None:
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10).eval()
    s = _check_session(model, torch.randn(4, 3, 32, 32))
    assert ["blocks.0.attn.qkv"] in [g.layers for g in s.groups]


def _llama() -> nn.Module:
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
    return LlamaForCausalLM(cfg).eval()


def test_ptq_on_hugging_face_llama_with_token_ids() -> None:
    s = _check_session(_llama(), torch.randint(0, 64, (4, 12)))
    groups = [g.layers for g in s.groups]
    assert ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"] in groups
    assert ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"] in groups


def test_uncapturable_model_names_the_users_line() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                return self.fc(x)
            return x

    with pytest.raises(CaptureError, match=r"test_ptq_models.py:\d+ \(if x.sum\(\) > 0"):
        start_session(Branchy(), [torch.ones(2, 4)], PTQConfig(CANDS, progress=False))


def _search(q: nn.Module, example, batches) -> dict[str, tuple[int, int]]:
    traces = hessian_traces(q, batches, max_iter=2, min_iter=2)
    assert set(traces) == set(bitswitch.quantized_layers(q)) and all(t.trace == t.trace for t in traces.values())
    problem = SearchProblem(bitswitch.layer_costs(q, example), sensitivity(traces), [8, 4])
    return problem.solve("avg-bits=6").config


def test_hessian_and_ilp_on_llama_token_ids() -> None:
    q = bitswitch.quantize(_llama(), bits=(8, 4), full_precision=["lm_head"])
    ids = torch.randint(0, 64, (2, 12))
    costs = {c.name: c for c in bitswitch.layer_costs(q, ids)}  # token ids, not float zeros
    assert costs["model.layers.0.self_attn.q_proj"].macs == 12 * 32 * 32
    config = _search(q, ids, [(ids, ids.roll(-1, 1))])  # SDPA attention: math kernel for double backward
    assert sorted(config) == sorted(bitswitch.quantized_layers(q)) and {p[0] for p in config.values()} == {8, 4}


def test_hessian_and_ilp_on_mobilenetv3_hardsigmoid(timm) -> None:
    model = timm.create_model("mobilenetv3_small_050", num_classes=10).eval()
    q = bitswitch.quantize(model, bits=(8, 4))
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    config = _search(q, (3, 32, 32), [(x, y)])  # nn.Hardsigmoid has no double backward in PyTorch
    assert {p[0] for p in config.values()} == {8, 4}


def test_op_without_double_backward_is_named() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.hardsigmoid(self.fc(x))

    with pytest.raises(ValueError, match=r"aten::hardsigmoid_backward.*'hardsigmoid'.*twice-differentiable"):
        hessian_traces(Gate(), [(torch.randn(4, 4), torch.tensor([0, 1, 2, 0]))], max_iter=2)


class _ViewsAndInPlace(nn.Module):
    """fc1 and fc2 read one value through data-movement ops; an in-place add_ after fc3 writes into a
    value computed before it (so a suffix re-run from fc3 must not change the cached FP32 value)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0, self.fc1, self.fc2, self.fc3, self.fc4 = (nn.Linear(8, 8) for _ in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.fc0(x))
        a = self.fc1(y.permute(0, 2, 1).transpose(1, 2).contiguous()) + self.fc2(torch.dropout(y.reshape(-1, 4, 8), 0.1, False))
        c = self.fc3(torch.sigmoid(a))
        a.add_(c)
        return self.fc4(a)


def test_groups_see_through_views_and_in_place_ops_keep_cached_values() -> None:
    s = start_session(_ViewsAndInPlace().eval(), [torch.randn(8, 4, 8)], PTQConfig(CANDS, progress=False, chunk_size=8))
    assert [g.layers for g in s.groups] == [["fc0"], ["fc1", "fc2"], ["fc3"], ["fc4"]]
    sens = s.sensitivity()
    for g in s.groups:
        for c in ((8, 8), (4, 8)):
            assert sens[g.name][c] == pytest.approx(s.output_sqnr({g.name: c}), rel=1e-9, abs=1e-9)
