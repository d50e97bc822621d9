"""A mass prior: the log-odds that a leaf subset is an inner node, given its mass and size.

Learnt from training trees alone, with no mass list typed in: every proper subset (two or more
leaves, not all of them) of every training event is binned by ``log m`` and by size, and
counted as a node of the true tree or not. The log-odds per bin,

    log((nodes + a) / (others + a)),   a = 0.5 (a pseudo-count),

absorb the decay table's masses, their widths and the detector's resolution as they are in the
data. Added to the decoder's score for every inner node (times a weight chosen on validation),
they favour trees whose particles have masses that real particles have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lcag.decode.scores import inner_node_masks
from lcag.evidence.subsets import subset_masses, subset_sizes

__all__ = ["MAX_PRIOR_LEAVES", "MassPrior"]

MAX_PRIOR_LEAVES = 12  # node scores hold 2^L entries per event; larger events get none
_TINY_MASS = 1e-9


@dataclass(frozen=True)
class MassPrior:
    """Log-odds of being an inner node per log-mass bin (and size, optionally).

    Attributes:
        edges: ``(B + 1,)`` increasing bin edges in ``log m``.
        log_odds: ``(S, B)``; row ``k`` holds subsets of ``k + 2`` leaves (the last row also
            every larger size).
    """

    edges: np.ndarray
    log_odds: np.ndarray

    @property
    def fitted(self) -> bool:
        return bool(np.any(self.log_odds != 0))

    @classmethod
    def empty(cls, n_bins: int = 400, max_size: int = 2) -> MassPrior:
        """An unfitted prior (every score 0) of the given shape."""
        return cls(np.linspace(0.0, 1.0, n_bins + 1), np.zeros((max_size - 1, n_bins)))

    @classmethod
    def fit(
        cls,
        events: list[dict[str, Any]],
        n_bins: int = 400,
        max_size: int = 2,
        pseudo_count: float = 0.5,
    ) -> MassPrior:
        """Count node and non-node subsets of training events.

        Args:
            events: dicts with ``x (n, 4)`` leaves and ``target (n, n)`` the true LCAG
                (diagonal ignored), as :class:`lcag.data.LCAGDataset` gives them.
            n_bins: log-mass bins, spread over the 0.05 %..99.95 % range of subset masses.
            max_size: subsets of this many leaves or more share the last row. The default, 2,
                ignores size: a particle of unseen topologies may decay into another number
                of leaves than in training.
            pseudo_count: added to both counts of every bin.
        """
        groups: dict[int, list[dict[str, Any]]] = {}
        for event in events:
            n = len(event["x"])
            if 3 <= n <= MAX_PRIOR_LEAVES:  # two leaves have no proper subset of two or more
                groups.setdefault(n, []).append(event)
        per_group = []
        for n, members in sorted(groups.items()):
            x = np.stack([e["x"] for e in members]).astype(np.float64)
            lcag = np.stack([e["target"] for e in members]).astype(np.int64)
            mask = np.ones(x.shape[:2], dtype=bool)
            lcag[:, np.arange(n), np.arange(n)] = 0
            masses = np.log(np.maximum(subset_masses(x, mask), _TINY_MASS))
            is_node = np.zeros(masses.shape, dtype=bool)
            for k, inner in enumerate(inner_node_masks(lcag, mask)):
                is_node[k, inner] = True
            sizes = subset_sizes(n)
            proper = (sizes >= 2) & (sizes < n)
            per_group.append((masses[:, proper], sizes[proper], is_node[:, proper]))
        if not per_group:
            return cls.empty(n_bins, max_size)
        every = np.concatenate([m.ravel() for m, _, _ in per_group])
        low, high = np.quantile(every, [0.0005, 0.9995])
        edges = np.linspace(low, high + 1e-9 * max(1.0, abs(high)), n_bins + 1)
        nodes = np.zeros((max_size - 1, n_bins))
        others = np.zeros((max_size - 1, n_bins))
        for masses, sizes, is_node in per_group:
            rows = np.broadcast_to(np.minimum(sizes, max_size) - 2, masses.shape)
            bins = _bin(edges, masses)
            np.add.at(nodes, (rows[is_node], bins[is_node]), 1.0)
            np.add.at(others, (rows[~is_node], bins[~is_node]), 1.0)
        log_odds = np.log(nodes + pseudo_count) - np.log(others + pseudo_count)
        return cls(edges, log_odds)

    def node_scores(
        self, x: np.ndarray, mask: np.ndarray, masses: np.ndarray | None = None
    ) -> np.ndarray:
        """Log-odds of every leaf subset of every event.

        Args:
            x: ``(N, L, 4)`` leaves ``(px, py, pz, E)``, ``L <= MAX_PRIOR_LEAVES``.
            mask: ``(N, L)`` bool, real leaves.
            masses: ``(N, 2^L)`` the subsets' invariant masses, if already at hand.

        Returns:
            ``(N, 2^L)`` float64 node scores for :func:`lcag.decode.decode`: 0 for single
            leaves and for the set of all real leaves (the root is in every tree).
        """
        N, L, _ = x.shape
        masses = subset_masses(x, mask) if masses is None else masses
        masses = np.log(np.maximum(masses, _TINY_MASS))
        sizes = subset_sizes(L)
        rows = np.clip(sizes, 2, self.log_odds.shape[0] + 1) - 2
        scores = self.log_odds[rows[None, :], _bin(self.edges, masses)]
        scores[:, sizes < 2] = 0.0
        full = mask.astype(np.int64) @ (np.int64(1) << np.arange(L, dtype=np.int64))
        scores[np.arange(N), full] = 0.0
        return scores


def _bin(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin index of each value, the outermost bins taking what lies beyond them."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
