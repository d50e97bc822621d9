"""The exported graph: raw leaf features and the mask in, per-pair class probabilities out.

    graph = ExportGraph.from_checkpoint("runs/tiny_transformer/checkpoints/best.ckpt")
    probs = graph(x, mask)          # x (B, L, F) float32 raw (px, py, pz, E, ...), mask (B, L)

It does what :meth:`lcag.Reconstructor.probabilities` does, in one ``nn.Module`` that traces:
the pair features from the raw 4-momenta (:func:`lcag.features.pair_features`), the
normalisation with the training statistics held as buffers (:func:`lcag.features.normalise`),
the model, and a softmax over classes. Node evidence (the subset head, the mass prior) is not
part of it: it scores all ``2^L`` leaf subsets, an axis no fixed graph has.

The NRI model (:class:`lcag.models.LCAGNRI`) runs its message passing on a flat graph of the
real leaves built with ``nonzero`` and boolean-mask indexing, and torch-geometric's
aggregation takes the node count as a Python integer: traced, both freeze the event sizes of the
example input. :class:`DenseNRI` computes the same function on dense ``(B, L, L, D)`` edges with
the mask applied where the flat graph leaves pairs out (the diagonal and padding), using the
model's own parameters; ``tests/export`` checks that it equals the model to 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from lcag.features import check_pair_features, model_inputs
from lcag.models.base import LCAGModel
from lcag.models.nri import LCAGNRI

__all__ = ["DenseNRI", "ExportGraph", "traceable"]


class DenseNRI(nn.Module):
    """:class:`~lcag.models.LCAGNRI`'s forward pass on dense edges, for tracing.

    Edge ``(i, j)`` of event ``b`` sits at ``e[b, i, j]`` for every ``i, j``; pairs that the
    flat graph has no edge for (``i == j``, padding) are computed too but masked out of the
    mean over neighbours and set to 0 before the pair head, as the flat graph's scatter does.
    Shares the model's parameters (no copy).

    Shapes:
        ``x (B, L, F)`` normalised, ``mask (B, L)`` bool, ``pair (B, L, L, P)`` or None
        -> logits ``(B, C, L, L)`` and leaf embeddings ``(B, L, D)`` (padding 0)
    """

    def __init__(self, model: LCAGNRI) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, pair: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(B, C, L, L)``."""
        return self.forward_with_leaves(x, mask, pair)[0]

    def forward_with_leaves(
        self, x: torch.Tensor, mask: torch.Tensor, pair: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, C, L, L)`` and leaf embeddings ``(B, L, D)``."""
        m = self.model
        m.check_inputs(x, mask, pair)
        index = torch.cumsum(torch.ones_like(mask[0], dtype=torch.int64), 0)  # 1..L, traced
        off_diagonal = index[:, None] != index[None, :]
        edges = mask[:, :, None] & mask[:, None, :] & off_diagonal  # (B, L, L): the flat graph
        zero = torch.zeros((), dtype=x.dtype)
        h = m.embed(torch.where(mask[..., None], x, zero))  # (B, L, D)
        if pair is not None:
            e = m.edge_init(torch.where(edges[..., None], pair, zero))
        else:  # edge (i, j): [h_i (target), h_j (source)]
            e = m.edge_init(torch.cat(torch.broadcast_tensors(h[:, :, None], h[:, None]), -1))
        count = edges.sum(2, keepdim=True).clamp(min=1).to(x.dtype)  # neighbours of each i
        for block in m.blocks:
            h_bar = block.norm_h(h)
            a, b = block.lin_i(h_bar), block.lin_j(h_bar)
            e = e + block.edge_out(a[:, :, None] + b[:, None] + block.lin_e(block.norm_e(e)))
            mean = torch.where(edges[..., None], e, zero).sum(2) / count  # (B, L, D)
            h = h + block.node_mlp(mean)
        e = torch.where(edges[..., None], m.ln_f(e), zero)
        leaves = torch.where(mask[..., None], h, zero)
        return m.head.from_pairs(e), leaves


def traceable(model: LCAGModel) -> nn.Module:
    """The model in a form that traces with dynamic batch and leaf axes: :class:`DenseNRI`
    for the NRI model, the model itself otherwise (the Transformer traces as it is)."""
    return DenseNRI(model) if isinstance(model, LCAGNRI) else model


class ExportGraph(nn.Module):
    """Raw leaf features + mask -> per-pair class probabilities, self-contained.

    Args:
        model: the trained network.
        feature_mean, feature_std: ``(F,)`` normalisation from training (kept as buffers).
        pair_features: the pair features the model was trained with.

    Shapes:
        ``x (B, L, F)`` float32 raw features (``px, py, pz, E`` first), ``mask (B, L)`` bool
        -> ``probs (B, L, L, C)`` float32, the softmax over classes of each leaf pair (rows of
        padded leaves and the diagonal are there but meaningless, as in
        :meth:`lcag.Reconstructor.probabilities`).
    """

    def __init__(
        self,
        model: LCAGModel,
        feature_mean: torch.Tensor,
        feature_std: torch.Tensor,
        pair_features: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.backbone = traceable(model)
        self.n_features = int(model.init_args.get("n_features", 4))
        self.n_classes = int(model.init_args["n_classes"])
        self.pair_names = check_pair_features(pair_features)
        self.register_buffer("feature_mean", torch.as_tensor(feature_mean, dtype=torch.float32))
        self.register_buffer("feature_std", torch.as_tensor(feature_std, dtype=torch.float32))

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ExportGraph:
        """The graph of a checkpoint written by ``lcag fit``, in eval mode on the CPU.

        Raises:
            CheckpointError: the file is missing, truncated, corrupt or holds no lcag model.
        """
        from lcag.inference import Reconstructor

        reco = Reconstructor.from_checkpoint(path)
        graph = cls(reco.model, reco.feature_mean, reco.feature_std, reco.pair_names)
        return graph.eval()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``probs (B, L, L, C)`` from raw ``x (B, L, F)`` and ``mask (B, L)``."""
        normalised, pair = model_inputs(
            x, mask, self.feature_mean, self.feature_std, self.pair_names
        )
        logits = self.backbone(normalised, mask, pair)
        return logits.float().softmax(dim=1).permute(0, 2, 3, 1)

    def example_inputs(
        self, batch: int = 3, leaves: int = 7, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Plausible raw inputs ``x (batch, leaves, F)`` (``E >= |p|``, momenta on the training
        scale) and a ``mask`` with padding in every event but the first, for tracing and
        checks. Sizes other than 1 keep the tracer from taking an axis for a broadcast one."""
        generator = torch.Generator().manual_seed(seed)
        scale = self.feature_std[:3].clamp(min=1e-3)
        x = torch.randn(batch, leaves, self.n_features, generator=generator)
        p = x[..., :3] * scale
        mass = torch.rand(batch, leaves, generator=generator) * scale.mean()
        x[..., :3], x[..., 3] = p, torch.sqrt((p**2).sum(-1) + mass**2)
        n_real = (leaves - torch.arange(batch)).clamp(min=min(2, leaves))
        mask = torch.arange(leaves)[None, :] < n_real[:, None]
        return x, mask
