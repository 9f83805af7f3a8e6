"""torch.export capture with quantized layers as opaque nodes (shared by PTQ and ONNX export)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bitswitch
from bitswitch.capture import CaptureError, capture
from bitswitch.models import build


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    q = bitswitch.quantize(build("preact_resnet20"), bits=(8, 4, 2))
    bitswitch.calibrate(q, [x])
    return q.eval(), x


def test_one_node_per_quantized_layer_in_call_order(resnet):
    q, x = resnet
    c = capture(q, x)
    names = [name for _node, name in c.layer_nodes()]
    assert sorted(names) == sorted(bitswitch.quantized_layers(q))
    assert names[:2] == ["layer1.0.conv1", "layer1.0.conv2"]


@torch.no_grad()
def test_captured_graph_follows_set_precision_exactly(resnet):
    q, x = resnet
    c = capture(q, x)
    for b in (8, 4, 2):
        bitswitch.set_precision(q, b)
        assert torch.equal(c.run(x), q(x))
    bitswitch.set_precision(q, {"layer1.0.conv1": 2, "layer2.0.conv2": (8, 4)})
    assert torch.equal(c.run(x), q(x))
    bitswitch.set_precision(q, 8)


@torch.no_grad()
def test_hugging_face_causal_lm():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
    lm = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (1, 12))
    q = bitswitch.quantize(lm, bits=(8, 4), full_precision=["lm_head"])
    bitswitch.calibrate(q, [ids])
    c = capture(q, {"input_ids": ids})
    assert len(list(c.layer_nodes())) == 14  # q, k, v, o, gate, up, down per block
    bitswitch.set_precision(q, 4)
    assert torch.equal(c.run(input_ids=ids).logits, q(ids).logits)


def test_uncapturable_code_names_the_users_line():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # a branch on data: torch.export cannot capture it
                return x
            return -x

    with pytest.raises(CaptureError, match=r"test_capture.py:\d+ \(if x.sum\(\) > 0:"):
        capture(DataDependent(), torch.randn(2, 3))


def test_bad_example_inputs():
    with pytest.raises(ValueError, match="example inputs must be"):
        capture(nn.Linear(2, 2), 3.0)
