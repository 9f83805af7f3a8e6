"""A small Llama-architecture causal language model (Hugging Face ``LlamaForCausalLM``) for character-level text.

Built from a ``LlamaConfig`` with random initialisation, so the code path (RMSNorm, rotary
positions, SwiGLU MLP, tied embedding/head) is the one real Hugging Face checkpoints take. The
default size matches nanoGPT's CPU reference on tiny Shakespeare (4 layers, 4 heads, width 128,
context 64) at no more compute: the SwiGLU hidden width 336 gives 3 x 128 x 336 = 129 k MLP weights
per block against GPT's 2 x 128 x 512 = 131 k.

The model returns Hugging Face outputs (``.logits``; ``.loss`` when given ``labels``) and runs with
``use_cache=False`` by default: training and evaluation never need the KV cache, and export traces
the plain forward.
"""

from __future__ import annotations

from torch import nn

from . import register

__all__ = ["char_llama"]


@register("char_llama")
def char_llama(vocab_size: int = 82, dim: int = 128, layers: int = 4, heads: int = 4, kv_heads: int | None = None,
               hidden: int = 336, context: int = 64, tie_embeddings: bool = True, rope_theta: float = 10000.0) -> nn.Module:
    """``LlamaForCausalLM`` with ``layers`` blocks of width ``dim`` over ``vocab_size`` characters."""
    from transformers import LlamaConfig, LlamaForCausalLM  # heavy import: only language models need it

    if dim % heads:
        raise ValueError(f"dim={dim} must be divisible by heads={heads}")
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads or heads, max_position_embeddings=context,
                         tie_word_embeddings=tie_embeddings, rope_theta=rope_theta, use_cache=False,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    model.bitswitch_context = context
    return model
