"""Multi-head attention whose four projections are ordinary ``nn.Linear`` children.

``nn.MultiheadAttention`` never calls its projections: it hands ``in_proj_weight`` and
``out_proj.weight`` to ``F.multi_head_attention_forward`` (and ``nn.TransformerEncoderLayer``'s
fused fast path reads them too), so replacing ``out_proj`` by a quantized layer changes nothing.
:class:`QuantMultiheadAttention` computes the same function with ``q_proj``, ``k_proj``,
``v_proj`` and ``out_proj`` as modules it really calls, so conversion can quantize them like any
other Linear (weights and inputs). ``_qkv_same_embed_dim`` is False, which keeps torch's fused
paths, which would read ``in_proj_weight``, switched off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuantMultiheadAttention(nn.Module):
    """Drop-in replacement for ``nn.MultiheadAttention`` (same arguments, outputs and masks)."""

    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True, add_bias_kv: bool = False,
                 add_zero_attn: bool = False, kdim: int | None = None, vdim: int | None = None, batch_first: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, batch_first
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.head_dim = embed_dim // num_heads
        self.add_zero_attn = add_zero_attn
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias, **kw)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias, **kw)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias, **kw)
        self.bias_k = nn.Parameter(torch.zeros(1, 1, embed_dim, **kw)) if add_bias_kv else None
        self.bias_v = nn.Parameter(torch.zeros(1, 1, embed_dim, **kw)) if add_bias_kv else None

    @classmethod
    @torch.no_grad()
    def from_float(cls, mha: nn.MultiheadAttention) -> "QuantMultiheadAttention":
        """Split ``mha``'s packed input projection into three Linears (out_proj and bias_k/v are reused)."""
        w = mha.in_proj_weight
        e = mha.embed_dim
        new = cls(e, mha.num_heads, mha.dropout, mha.out_proj.bias is not None, mha.bias_k is not None, mha.add_zero_attn,
                  mha.kdim, mha.vdim, mha.batch_first, device="meta", dtype=mha.out_proj.weight.dtype)
        weights = w.split(e) if w is not None else (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.split(e) if mha.in_proj_bias is not None else (None, None, None)
        for proj, wi, bi in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
            proj.weight = nn.Parameter(wi.detach().clone(), requires_grad=wi.requires_grad)
            proj.bias = None if bi is None else nn.Parameter(bi.detach().clone(), requires_grad=bi.requires_grad)
        new.out_proj = mha.out_proj
        new.bias_k, new.bias_v = mha.bias_k, mha.bias_v
        return new.train(mha.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = True, attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        # is_causal is only a hint in torch: a causal attn_mask must be given with it (and is used here)
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        tgt, bsz, _ = query.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        mask = None if attn_mask is None else _additive(attn_mask, q.dtype)
        pad = None if key_padding_mask is None else _additive(key_padding_mask, q.dtype)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(1, bsz, -1)])
            v = torch.cat([v, self.bias_v.expand(1, bsz, -1)])  # type: ignore[union-attr]
            mask, pad = _pad_last(mask), _pad_last(pad)
        q = q.reshape(tgt, bsz * h, d).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * h, d).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * h, d).transpose(0, 1)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(bsz * h, 1, d)], dim=1)
            v = torch.cat([v, v.new_zeros(bsz * h, 1, d)], dim=1)
            mask, pad = _pad_last(mask), _pad_last(pad)
        src = k.shape[1]
        scores = torch.bmm(q * d**-0.5, k.transpose(1, 2))
        if mask is not None:
            scores = scores + (mask.unsqueeze(0) if mask.dim() == 2 else mask)
        if pad is not None:
            scores = (scores.view(bsz, h, tgt, src) + pad.view(bsz, 1, 1, src)).view(bsz * h, tgt, src)
        attn = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, self.dropout)
        out = torch.bmm(attn, v).transpose(0, 1).reshape(tgt, bsz, self.embed_dim)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = attn.view(bsz, h, tgt, src)
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, (weights.squeeze(0) if unbatched else weights)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = not allowed) as the additive float mask torch uses."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def _pad_last(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else F.pad(mask, (0, 1))


def split_attention(model: nn.Module, names: list[str] | None = None) -> dict[str, nn.MultiheadAttention]:
    """Replace every ``nn.MultiheadAttention`` of ``model`` (or those ``names``) in place; returns the replaced modules."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention) and (names is None or n in names)}
    for name, mha in found.items():
        model.set_submodule(name, QuantMultiheadAttention.from_float(mha))
    return found


__all__ = ["QuantMultiheadAttention", "split_attention"]
