"""An NRI-style graph network (Kipf et al. 2018, "Neural Relational Inference", the encoder).

Each event is a fully connected graph of its real leaves; alternating edge and node updates
pass messages node -> edge -> node, with residuals. A batch of events of different sizes is one
PyG-style graph (flat nodes, a ``batch`` vector, ``edge_index`` of all ordered pairs inside each
event), so the network itself never sees padding. At the end, each edge ``(i, j)`` is combined
with its reverse ``(j, i)`` by the symmetric :class:`~lcag.models.pair_head.PairHead` and the
logits are scattered back into a dense ``(B, C, L, L)`` tensor (0 on padding and the diagonal).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lcag.models.base import LCAGModel
from lcag.models.pair_head import PairHead

with warnings.catch_warnings():
    # torch-geometric 2.8.1 calls torch.jit.script at import, which torch >= 2.10 deprecates;
    # a third-party notice that says nothing about lcag (and fails a `filterwarnings = error`
    # test run), so it is silenced here, for this import only.
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning
    )
    from torch_geometric.nn import MessagePassing

__all__ = ["LCAGNRI", "NRIBlock", "fully_connected_graph"]


def _mlp(d_in: int, dim: int, dropout: float) -> nn.Sequential:
    """``LayerNorm -> Linear -> GELU -> Dropout -> Linear``: ``(..., d_in)`` -> ``(..., dim)``."""
    return nn.Sequential(
        nn.LayerNorm(d_in),
        nn.Linear(d_in, dim),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(dim, dim),
    )


def fully_connected_graph(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ordered pairs ``i != j`` of real leaves within each event, as one flat graph.

    Nodes are the real leaves in ``x[mask]`` order (event by event). Edge ``k`` joins source
    node ``edge_index[0, k]`` (leaf ``j``) to target node ``edge_index[1, k]`` (leaf ``i``) and
    sits at dense position ``(event, i, j) = pos[:, k]``.

    Args:
        mask: ``(B, L)`` bool, True on real leaves.

    Returns:
        ``edge_index (2, E)``, ``batch (N,)`` (event of each node), ``pos (3, E)``; an event of
        ``n`` leaves contributes ``n (n - 1)`` edges.
    """
    B, L = mask.shape
    node_id = (torch.cumsum(mask.reshape(-1), 0) - 1).view(B, L)  # flat node index per slot
    eye = torch.eye(L, dtype=torch.bool, device=mask.device)
    pairs = mask[:, :, None] & mask[:, None, :] & ~eye
    b, i, j = pairs.nonzero(as_tuple=True)
    edge_index = torch.stack([node_id[b, j], node_id[b, i]])
    batch = torch.arange(B, device=mask.device).repeat_interleave(mask.sum(1))
    return edge_index, batch, torch.stack([b, i, j])


class NRIBlock(MessagePassing):
    r"""One NRI round: edge update from both end nodes, then node update from the mean edge.

    .. math::
        \mathbf{e}_{ij} &\leftarrow \mathbf{e}_{ij} + \mathrm{MLP}_e([\bar{\mathbf{h}}_i,
            \bar{\mathbf{h}}_j, \bar{\mathbf{e}}_{ij}]) \\
        \mathbf{h}_i &\leftarrow \mathbf{h}_i
            + \mathrm{MLP}_h\big(\tfrac{1}{|\mathcal{N}(i)|}
              \textstyle\sum_{j \in \mathcal{N}(i)} \mathbf{e}_{ij}\big)

    with :math:`\bar{\cdot}` a LayerNorm (pre-norm residual form of Kipf et al.'s
    node -> edge -> node encoder). The first layer of :math:`\mathrm{MLP}_e` is split by input,
    ``W [h_i, h_j, e] = W_i h_i + W_j h_j + W_e e``, so the node parts are computed once per
    node rather than once per edge: half the edge cost, the same function. A node without
    neighbours (an event with one leaf) gets a zero mean.

    Args:
        dim: node and edge width ``D``.
        dropout: dropout inside both MLPs.

    Shapes:
        - **input:** node features ``(N, D)``, edge indices ``(2, E)``, edge features
          ``(E, D)``
        - **output:** node features ``(N, D)``, edge features ``(E, D)``
    """

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__(aggr="mean")
        self.norm_h = nn.LayerNorm(dim)
        self.norm_e = nn.LayerNorm(dim)
        self.lin_i = nn.Linear(dim, dim)  # W_i, W_j, W_e: the first layer of MLP_e
        self.lin_j = nn.Linear(dim, dim, bias=False)
        self.lin_e = nn.Linear(dim, dim, bias=False)
        self.edge_out = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.node_mlp = _mlp(dim, dim, dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(
        self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``h (N, D)``, ``edge_index (2, E)``, ``e (E, D)`` -> updated ``(h, e)``."""
        h_bar = self.norm_h(h)
        e = e + self.edge_updater(edge_index, a=self.lin_i(h_bar), b=self.lin_j(h_bar), e=e)
        h = h + self.node_mlp(self.propagate(edge_index, e=e, size=(h.size(0), h.size(0))))
        return h, e

    def edge_update(self, a_i: torch.Tensor, b_j: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``MLP_e`` of edge ``(E, D)``: ``a_i = W_i h_i`` (target), ``b_j = W_j h_j`` (source)."""
        return self.edge_out(a_i + b_j + self.lin_e(self.norm_e(e)))

    def message(self, e: torch.Tensor) -> torch.Tensor:
        """The message from ``j`` to ``i`` is the edge itself, ``(E, D)``."""
        return e


class LCAGNRI(LCAGModel):
    """NRI-style GNN on the fully connected graph of each event's leaves + symmetric pair head.

    Args:
        n_features: leaf features ``F`` per leaf.
        n_classes: LCAG classes ``C``.
        dim: node and edge width ``D``.
        depth: number of :class:`NRIBlock` rounds.
        dropout: dropout inside the MLPs and the pair head.
        n_pair_features: pair features ``P``; when > 0 they give the initial edges (a Linear),
            otherwise an MLP of the two end nodes' embeddings does.

    Shapes:
        ``x (B, L, F)``, ``mask (B, L)`` bool, ``pair (B, L, L, P)`` or None
        -> logits ``(B, C, L, L)``
    """

    def __init__(
        self,
        n_features: int = 4,
        n_classes: int = 8,
        dim: int = 64,
        depth: int = 3,
        dropout: float = 0.0,
        n_pair_features: int = 0,
    ) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(n_features, dim), nn.GELU(), nn.Linear(dim, dim))
        if n_pair_features > 0:
            self.edge_init: nn.Module = nn.Linear(n_pair_features, dim)
        else:
            self.edge_init = _mlp(2 * dim, dim, dropout)
        self.blocks = nn.ModuleList(NRIBlock(dim, dropout) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.head = PairHead(dim, n_classes, dropout=dropout)

    def forward_with_leaves(
        self, x: torch.Tensor, mask: torch.Tensor, pair: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, C, L, L)`` and leaf embeddings ``(B, L, D)`` from ``x (B, L, F)``,
        ``mask (B, L)``, ``pair (B, L, L, P)``."""
        self.check_inputs(x, mask, pair)
        B, L = mask.shape
        edge_index, _, (b, i, j) = fully_connected_graph(mask)
        h = self.embed(x[mask])  # (N, D): real leaves only
        if pair is not None:
            e = self.edge_init(pair[b, i, j])  # (E, D)
        else:
            e = self.edge_init(torch.cat([h[edge_index[1]], h[edge_index[0]]], dim=-1))
        for block in self.blocks:
            h, e = block(h, edge_index, e)
        e = self.ln_f(e)
        dense = e.new_zeros(B, L, L, e.shape[-1])  # padding and diagonal stay 0
        dense[b, i, j] = e
        leaves = h.new_zeros(B, L, h.shape[-1])
        leaves[mask] = h
        return self.head.from_pairs(dense), leaves
