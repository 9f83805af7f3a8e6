"""Hugging Face transformers models (tiny random-init configs, no download): GPT-2's Conv1D, a Llama
with tied embeddings, BERT; the "auto" full-precision choice and integer checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bitswitch
from bitswitch.nn import QuantEmbedding, QuantLinear

transformers = pytest.importorskip("transformers")

IDS = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))


def _gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)).eval()


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).eval()


def _logits(model, bits) -> torch.Tensor:
    bitswitch.set_precision(model, bits)
    with torch.no_grad():
        return model(IDS).logits


def test_gpt2_conv1d_projections_are_quantized_and_round_trip(tmp_path: Path) -> None:
    fp = _gpt2()
    q = bitswitch.quantize(fp, bits=(8, 4), example_inputs={"input_ids": IDS})
    conv1d = [n for n, m in fp.named_modules() if type(m).__name__ == "Conv1D"]
    assert list(bitswitch.quantized_layers(q)) == conv1d and len(conv1d) == 8
    assert q.bitswitch_config.full_precision == ("lm_head",) and type(q.transformer.wte) is torch.nn.Embedding
    assert q.lm_head.weight is q.transformer.wte.weight  # the FP head stays tied
    bitswitch.calibrate(q, [{"input_ids": IDS}])  # keyword batches, as a tokenizer returns them
    q.eval()
    with torch.no_grad():
        assert torch.allclose(_logits(q, None), fp(IDS).logits, atol=1e-5)  # Conv1D's [in, out] weight transposed exactly
    bitswitch.set_precision(q, 8)
    path = bitswitch.save(q, tmp_path / "gpt2.safetensors")
    loaded = bitswitch.load(path, model=_gpt2())
    for b in (8, 4):
        assert torch.equal(_logits(q, b), _logits(loaded, b)), b


def test_llama_auto_keeps_embeddings_and_head_and_quantizes_every_projection_of_layer_0(tmp_path: Path) -> None:
    fp = _llama()
    q = bitswitch.quantize(fp, bits=(8, 4))
    assert q.bitswitch_config.full_precision == ("lm_head",)
    assert {f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")} <= set(q.bitswitch_config.quantized)
    assert q.lm_head.weight is q.model.embed_tokens.weight  # nothing untied
    fp_file = bitswitch.save(fp, tmp_path / "fp.safetensors")
    unique = sum(p.numel() for p in fp.parameters())  # parameters() counts the tied weight once
    assert fp_file.stat().st_size < 4 * unique + 16_000  # the tied weight is stored once (was 1.04x)


def test_llama_tied_head_and_embedding_share_one_quantizer_and_one_set_of_codes(tmp_path: Path) -> None:
    q = bitswitch.quantize(_llama(), bits=(8, 4, 2), weight_only=["model.embed_tokens", "lm_head"])
    assert isinstance(q.model.embed_tokens, QuantEmbedding) and isinstance(q.lm_head, QuantLinear) and q.lm_head.weight_only
    assert q.lm_head.weight is q.model.embed_tokens.weight and q.lm_head.weight_quant is q.model.embed_tokens.weight_quant
    bitswitch.calibrate(q, [IDS])
    before = q.lm_head.weight.detach().clone()
    from bitswitch.train import alrs_param_groups

    grouped = [id(p) for g in alrs_param_groups(q, 0.1) for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(list(q.parameters()))  # the shared scale once, every parameter once
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    q.train()
    q(IDS, labels=IDS).loss.backward()
    opt.step()
    assert q.lm_head.weight is q.model.embed_tokens.weight and not torch.equal(before, q.lm_head.weight)  # one tensor, updated once
    q.eval()
    path = bitswitch.save(q, tmp_path / "q.safetensors")
    loaded = bitswitch.load(path, model=_llama())
    assert loaded.lm_head.weight_int is loaded.model.embed_tokens.weight_int
    assert loaded.lm_head.weight_quant is loaded.model.embed_tokens.weight_quant
    for b in (8, 4, 2):
        assert torch.equal(_logits(q, b), _logits(loaded, b)), b
    codes = sum(m.weight_shape.numel() for m in {id(m.weight_quant): m for m in bitswitch.quantized_layers(q).values()}.values())
    norms = sum(p.numel() for n, p in q.named_parameters() if "norm" in n)
    assert path.stat().st_size < codes + 4 * norms + 24_000  # int8 codes once + norms + scales/metadata; no FP32 copy


def test_bert_auto_quantizes_layer_0_attention_and_keeps_embeddings_and_classifier() -> None:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=32)
    q = bitswitch.quantize(transformers.BertForSequenceClassification(cfg).eval(), bits=(8, 4))
    rows = {r["name"]: r for r in bitswitch.conversion_report(q)}
    assert rows["classifier"]["action"] == "fp32" and rows["bert.embeddings.word_embeddings"]["action"] == "fp32"
    for p in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
        assert rows[f"bert.encoder.layer.0.{p}"]["action"] == "quantized"
    bitswitch.calibrate(q, [{"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}])
    bitswitch.set_precision(q, 4)
    assert q.eval()(IDS).logits.shape == (2, 2)
