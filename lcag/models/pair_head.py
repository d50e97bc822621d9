"""The shared pair head: node (or edge) embeddings -> per-pair class logits ``(B, C, L, L)``.

The pair representation is symmetric *by construction*: for embeddings ``a`` of ``(i, j)`` and
``b`` of ``(j, i)`` it concatenates ``a + b`` and ``a * b`` (both commutative) and feeds that to
an MLP. Swapping ``i`` and ``j`` gives the very same input, so the logits are symmetric without
averaging ``logits`` and ``logits.T`` afterwards: no wasted capacity on an asymmetric part that
averaging would throw away, and the symmetry also holds during training, not just at the output.
The sum carries what the two have together, the product how they agree, feature by feature
(a plain concatenation ``[a, b]`` would be ordered, hence asymmetric).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PairHead"]


class PairHead(nn.Module):
    """Per-pair class logits from node embeddings, symmetric by construction.

    ``logits[:, :, i, j] = MLP([h_i + h_j, h_i * h_j])``.

    Args:
        dim: embedding width ``D``.
        n_classes: number of classes ``C``.
        hidden: hidden width of the MLP (default ``dim``).
        dropout: dropout after the hidden layer.

    Shapes:
        - **forward:** ``h (B, L, D)`` -> ``(B, C, L, L)``
        - **from_pairs:** ``e (B, L, L, D)`` -> ``(B, C, L, L)``
    """

    def __init__(
        self, dim: int, n_classes: int, hidden: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        hidden = hidden or dim
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def symmetric(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., C)`` = ``MLP([a + b, a * b])``; ``a``, ``b`` broadcast to ``(..., D)``."""
        return self.mlp(torch.cat(torch.broadcast_tensors(a + b, a * b), dim=-1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, L, L)`` from node embeddings ``h (B, L, D)``."""
        return self.symmetric(h[:, :, None, :], h[:, None, :, :]).permute(0, 3, 1, 2)

    def from_pairs(self, e: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, L, L)`` from directed pair embeddings ``e (B, L, L, D)``.

        Combines ``e[:, i, j]`` with ``e[:, j, i]``, so the logits are symmetric even when ``e``
        is not (the NRI model's directed edges).
        """
        return self.symmetric(e, e.transpose(1, 2)).permute(0, 3, 1, 2)
