"""A Transformer encoder over the leaves, followed by the symmetric pair head.

Read top to bottom: attention, block, model. The leaves form a set, so there is no positional
encoding: permuting the leaves permutes the logits. Padded leaves are removed from attention by
an additive ``-inf`` on their keys; padded queries still attend to the real keys, so they stay
finite and are simply ignored downstream.

Pair features (e.g. the invariant mass of each leaf pair) enter as an attention bias, as in
Particle Transformer (Qu et al. 2022): one small MLP maps ``(B, L, L, P)`` to
``(B, L, L, depth * heads)`` *once*, and layer ``k`` adds its own ``heads`` slice to the
attention scores. So every layer and head gets its own bias at the cost of one pass over the
pairs, rather than one MLP per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lcag.models.base import LCAGModel
from lcag.models.pair_head import PairHead

__all__ = ["LCAGTransformer"]


class SelfAttention(nn.Module):
    """Multi-head self-attention with an additive float mask (key padding + pair bias).

    Shapes:
        ``h (B, L, D)``, ``bias (B, heads, L, L)`` or ``(B, 1, L, L)`` -> ``(B, L, D)``
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim = {dim} is not divisible by heads = {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, D = h.shape
        # (B, L, 3D) -> three times (B, heads, L, D / heads)
        q, k, v = self.qkv(h).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(B, L, D)  # re-assemble the heads side by side
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: ``h + attn(LN(h))``, then ``h + MLP(LN(h))``."""

    def __init__(self, dim: int, heads: int, ffn_factor: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, ffn_factor * dim),
            nn.GELU(),
            nn.Linear(ffn_factor * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``h (B, L, D)``, ``bias (B, heads|1, L, L)`` -> ``(B, L, D)``."""
        h = h + self.attn(self.ln1(h), bias)
        return h + self.mlp(self.ln2(h))


class LCAGTransformer(LCAGModel):
    """Transformer encoder over the leaves + symmetric pair head.

    Args:
        n_features: leaf features ``F`` per leaf.
        n_classes: LCAG classes ``C``.
        dim: embedding width ``D`` (divisible by ``heads``).
        depth: number of Transformer blocks.
        heads: attention heads.
        ffn_factor: hidden width of the blocks' MLP, in units of ``dim``.
        dropout: dropout in attention, MLPs and the pair head.
        n_pair_features: pair features ``P`` turned into attention biases (0: none).

    Shapes:
        ``x (B, L, F)``, ``mask (B, L)`` bool, ``pair (B, L, L, P)`` or None
        -> logits ``(B, C, L, L)``
    """

    def __init__(
        self,
        n_features: int = 4,
        n_classes: int = 8,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        ffn_factor: int = 4,
        dropout: float = 0.0,
        n_pair_features: int = 0,
    ) -> None:
        super().__init__()
        self.depth, self.heads = depth, heads
        self.embed = nn.Sequential(nn.Linear(n_features, dim), nn.GELU(), nn.Linear(dim, dim))
        self.pair_bias = None
        if n_pair_features > 0:
            self.pair_bias = nn.Sequential(
                nn.Linear(n_pair_features, dim), nn.GELU(), nn.Linear(dim, depth * heads)
            )
        self.blocks = nn.ModuleList(Block(dim, heads, ffn_factor, dropout) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.head = PairHead(dim, n_classes, dropout=dropout)

    def forward_with_leaves(
        self, x: torch.Tensor, mask: torch.Tensor, pair: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, C, L, L)`` and leaf embeddings ``(B, L, D)`` from ``x (B, L, F)``,
        ``mask (B, L)``, ``pair (B, L, L, P)``."""
        self.check_inputs(x, mask, pair)
        B, L = mask.shape
        # whatever sits in the padding (even NaN) cannot reach the real leaves
        h = self.embed(torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype)))

        # additive attention mask: -inf on padded keys, (B, 1, 1, L)
        key_bias = torch.zeros(B, 1, 1, L, dtype=h.dtype, device=h.device)
        key_bias = key_bias.masked_fill(~mask[:, None, None, :], float("-inf"))
        biases: list[torch.Tensor] = [key_bias] * self.depth
        if self.pair_bias is not None:
            assert pair is not None
            pair_mask = (mask[:, :, None] & mask[:, None, :])[..., None]
            pair = torch.where(pair_mask, pair, torch.zeros((), dtype=pair.dtype))
            # (B, L, L, P) -> (B, L, L, depth * heads) -> (depth, B, heads, L, L)
            pb = self.pair_bias(pair).view(B, L, L, self.depth, self.heads).permute(3, 0, 4, 1, 2)
            biases = [key_bias + pb[k] for k in range(self.depth)]

        for block, bias in zip(self.blocks, biases, strict=True):
            h = block(h, bias)
        h = self.ln_f(h)
        return self.head(h), torch.where(mask[..., None], h, torch.zeros((), dtype=h.dtype))
