"""The subset head: leaf embeddings + subset kinematics -> a log-odds per leaf set.

Pair scores cannot see whether a *set* of leaves is one particle; this head scores every leaf
subset ``S`` (bit mask, bit ``i`` = leaf ``i``) as a candidate inner node of the tree, from

- the mean of its members' leaf embeddings (the backbone's context about each leaf), and
- subset-level kinematics (:func:`lcag.evidence.subset_kinematics`): its invariant mass, its
  share of the event's mass, its share of the leaves, and the mass prior's log-odds.

It is trained with binary cross-entropy against "is an inner node of the true tree" beside the
pair loss, so its logit is a log-odds that the decoder adds per inner node. With ``residual``
the last kinematic input (the mass prior) is added to the logit as it is and the network learns a
correction; its last layer starts at zero, so an untrained head *is* the mass prior.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SubsetHead"]


class SubsetHead(nn.Module):
    """Per-subset logits from pooled leaf embeddings and subset kinematics.

    ``logit[b, S] = MLP(mean_{i in S} W h_i + V k[b, S]) (+ k[b, S, -1] with residual)``.

    Args:
        dim: leaf embedding width ``D``.
        n_kinematic: subset kinematic features ``K``.
        hidden: width of the subset MLP ``H`` (the cost is ``B 2^L H^2``, so keep it small).
        dropout: dropout after the hidden layer.
        residual: add the last kinematic feature to the logit (the mass prior's log-odds).

    Shapes:
        ``leaves (B, L, D)``, ``members (S, L)`` 0/1 float, ``kinematic (B, S, K)``
        -> logits ``(B, S)``
    """

    def __init__(
        self,
        dim: int,
        n_kinematic: int,
        hidden: int = 32,
        dropout: float = 0.0,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.leaf_proj = nn.Linear(dim, hidden)
        self.kinematic_proj = nn.Linear(n_kinematic, hidden, bias=False)
        self.mlp = nn.Sequential(
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )
        if residual:  # start as the mass prior alone
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(
        self, leaves: torch.Tensor, members: torch.Tensor, kinematic: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``(B, S)``; see the class docstring for shapes."""
        size = members.sum(-1, keepdim=True).clamp(min=1.0)  # (S, 1)
        pooled = torch.einsum("sl,blh->bsh", members / size, self.leaf_proj(leaves))
        logits = self.mlp(pooled + self.kinematic_proj(kinematic))[..., 0]
        return logits + kinematic[..., -1] if self.residual else logits
