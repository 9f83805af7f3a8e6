"""A small pre-norm transformer encoder whose every matmul with weights is an ``nn.Linear``.

It exists to show that the quantizers, the cost model and post-training mixed precision are not
CNN-only: separate ``q``/``k``/``v`` projections share one input (one quantizer group), the
attention output goes through reshapes (data movement) into ``proj``, and two residual additions
per block feed the next LayerNorm.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from . import register

__all__ = ["TransformerBlock", "TinyTransformer", "tiny_transformer"]


class TransformerBlock(nn.Module):
    """``x + proj(attn(q(ln1 x), k(ln1 x), v(ln1 x)))``, then ``x + fc2(gelu(fc1(ln2 x)))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.ln1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (B, H, T, d)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln1(x)
        att = F.scaled_dot_product_attention(self._split(self.q(h)), self._split(self.k(h)), self._split(self.v(h)))
        x = x + self.proj(att.transpose(1, 2).flatten(2))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """Token embedding (Linear) -> ``depth`` blocks -> LayerNorm -> mean over tokens -> Linear head.

    Input: ``(batch, tokens, in_features)`` float features (e.g. flattened patches).
    """

    def __init__(self, in_features: int = 16, dim: int = 64, depth: int = 2, heads: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, dim)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.blocks(self.embed(x)))
        return self.head(x.mean(1))


@register("tiny_transformer")
def tiny_transformer(in_features: int = 16, dim: int = 64, depth: int = 2, heads: int = 4, num_classes: int = 10) -> TinyTransformer:
    """Pre-norm transformer encoder of ``nn.Linear`` layers (~100 K parameters at the defaults)."""
    return TinyTransformer(in_features, dim, depth, heads, num_classes)
