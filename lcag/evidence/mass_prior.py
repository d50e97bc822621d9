"""A mass prior: the log-odds that a leaf subset is an inner node, given its mass and size.

Learnt from training trees alone, with no mass list typed in: every proper subset (two or more
leaves, not all of them) of every training event is binned by ``log m`` and by size, and
counted as a node of the true tree or not. The log-odds per bin,

    log((nodes + a) / (others + a)),   a = 0.5 (a pseudo-count),

absorb the decay table's masses, their widths and the detector's resolution as they are in the
data. The number of bins is chosen on held-out training events (exact masses want fine bins,
resolution and widths coarser ones). Added to the decoder's score for every inner node (times a
weight chosen on validation), they favour trees whose particles have masses that real particles
have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lcag.errors import ConfigError
from lcag.evidence.subsets import node_indicator, subset_masses, subset_sizes

__all__ = ["AUTO_BINS", "MAX_PRIOR_LEAVES", "MassPrior"]

AUTO_BINS = tuple(100 * 2**k for k in range(10))  # 100 .. 51,200 log-mass bins
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
        n_bins: int | Literal["auto"] = "auto",
        max_size: int = 2,
        pseudo_count: float = 0.5,
    ) -> MassPrior:
        """Count node and non-node subsets of training events.

        Args:
            events: dicts with ``x (n, 4)`` leaves and ``target (n, n)`` the true LCAG
                (diagonal ignored), as :class:`lcag.data.LCAGDataset` gives them.
            n_bins: log-mass bins, spread over the 0.05 %..99.95 % range of subset masses;
                ``"auto"`` chooses among :data:`AUTO_BINS` the one whose log-odds best predict
                (log-likelihood per subset) the nodes of every fifth event, counted from the
                other four, then counts all events with it. Exact masses want fine bins (the
                paper's protocol chooses tens of thousands), resolution and widths coarse ones.
            max_size: subsets of this many leaves or more share the last row. The default, 2,
                ignores size: a particle of unseen topologies may decay into another number
                of leaves than in training.
            pseudo_count: added to both counts of every bin.
        """
        if n_bins != "auto" and (isinstance(n_bins, bool) or not isinstance(n_bins, int)
                                 or n_bins < 1):  # fmt: skip
            raise ConfigError(
                f"mass_prior_bins: expected 'auto' or an integer >= 1, got {n_bins!r}"
            )
        table = _subset_table(events, max_size)
        if table is None:
            return cls.empty(400 if n_bins == "auto" else n_bins, max_size)
        low, high = np.quantile(table.log_mass, [0.0005, 0.9995])
        if n_bins == "auto":
            n_bins = max(AUTO_BINS, key=lambda b: table.held_out_score(low, high, b, pseudo_count))
        edges = _edges(low, high, n_bins)
        nodes, others = table.counts(_bin(edges, table.log_mass), n_bins)
        return cls(edges, np.log(nodes + pseudo_count) - np.log(others + pseudo_count))

    def node_scores(
        self,
        x: np.ndarray,
        mask: np.ndarray,
        masses: np.ndarray | None = None,
        columns: np.ndarray | None = None,
    ) -> np.ndarray:
        """Log-odds of every leaf subset of every event (or of the subsets in ``columns``).

        Args:
            x: ``(N, L, 4)`` leaves ``(px, py, pz, E)``, ``L <= MAX_PRIOR_LEAVES``.
            mask: ``(N, L)`` bool, real leaves.
            masses: ``(N, 2^L)`` (``(N, K)`` with ``columns``) the subsets' invariant masses,
                if already at hand.
            columns: ``(K,)`` bit masks: only these subsets.

        Returns:
            ``(N, 2^L)`` (or ``(N, K)``) float64 node scores for :func:`lcag.decode.decode`: 0
            for single leaves and for the set of all real leaves (the root is in every tree).
        """
        L = x.shape[1]
        bits = np.arange(1 << L) if columns is None else np.asarray(columns)
        masses = subset_masses(x, mask, columns) if masses is None else masses
        masses = np.log(np.maximum(masses, _TINY_MASS))
        sizes = subset_sizes(L)[bits]
        rows = np.clip(sizes, 2, self.log_odds.shape[0] + 1) - 2
        scores = self.log_odds[rows[None, :], _bin(self.edges, masses)]
        full = mask.astype(np.int64) @ (np.int64(1) << np.arange(L, dtype=np.int64))
        scores[(sizes[None, :] < 2) | (bits[None, :] == full[:, None])] = 0.0
        return scores


def _bin(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin index of each value, the outermost bins taking what lies beyond them."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


@dataclass(frozen=True)
class _SubsetTable:
    """Every proper subset (two or more leaves, not all) of the training events, flat.

    Attributes:
        log_mass: ``(M,)`` the subsets' ``log m``.
        row: ``(M,)`` the prior's row of each (size - 2, capped).
        is_node: ``(M,)`` whether it is an inner node of its event's true tree.
        held_out: ``(M,)`` whether its event is one of every fifth (for choosing the bins).
        n_rows: rows of the prior.
    """

    log_mass: np.ndarray
    row: np.ndarray
    is_node: np.ndarray
    held_out: np.ndarray
    n_rows: int

    def counts(
        self, bins: np.ndarray, n_bins: int, use: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nodes and other subsets per (row, bin), ``(rows, n_bins)`` each."""
        key = self.row * n_bins + bins
        size = self.n_rows * n_bins
        node = self.is_node if use is None else self.is_node & use
        other = ~self.is_node if use is None else ~self.is_node & use
        return (
            np.bincount(key[node], minlength=size).reshape(self.n_rows, n_bins).astype(float),
            np.bincount(key[other], minlength=size).reshape(self.n_rows, n_bins).astype(float),
        )

    def held_out_score(self, low: float, high: float, n_bins: int, pseudo_count: float) -> float:
        """Mean Bernoulli log-likelihood of "is a node" on the held-out events under the log-odds
        counted from the others, with ``n_bins`` bins over ``[low, high]``."""
        width = (high - low) / n_bins
        bins = np.clip(((self.log_mass - low) / width).astype(np.int64), 0, n_bins - 1)
        nodes, others = self.counts(bins, n_bins, ~self.held_out)
        log_odds = np.log(nodes + pseudo_count) - np.log(others + pseudo_count)
        odds = log_odds[self.row[self.held_out], bins[self.held_out]]
        signed = np.where(self.is_node[self.held_out], -odds, odds)
        return float(-np.logaddexp(0.0, signed).mean())


def _subset_table(events: list[dict[str, Any]], max_size: int) -> _SubsetTable | None:
    """The proper subsets of the events of 3..MAX_PRIOR_LEAVES leaves (``None`` if none)."""
    groups: dict[int, list[int]] = {}
    for k, event in enumerate(events):
        n = len(event["x"])
        if 3 <= n <= MAX_PRIOR_LEAVES:  # two leaves have no proper subset of two or more
            groups.setdefault(n, []).append(k)
    if not groups:
        return None
    parts = []
    for n, members in sorted(groups.items()):
        x = np.stack([events[k]["x"] for k in members]).astype(np.float64)
        lcag = np.stack([events[k]["target"] for k in members]).astype(np.int64)
        mask = np.ones(x.shape[:2], dtype=bool)
        lcag[:, np.arange(n), np.arange(n)] = 0
        sizes = subset_sizes(n)
        proper = (sizes >= 2) & (sizes < n)
        masses = np.log(np.maximum(subset_masses(x, mask)[:, proper], _TINY_MASS))
        is_node = node_indicator(lcag, mask)[:, proper]
        rows = np.broadcast_to(np.minimum(sizes[proper], max_size) - 2, masses.shape)
        held = np.broadcast_to((np.asarray(members) % 5 == 0)[:, None], masses.shape)
        parts.append((masses.ravel(), rows.ravel(), is_node.ravel(), held.ravel()))
    return _SubsetTable(
        *(np.concatenate(column) for column in zip(*parts, strict=True)), max_size - 1
    )


def _edges(low: float, high: float, n_bins: int) -> np.ndarray:
    return np.linspace(low, high + 1e-9 * max(1.0, abs(high)), n_bins + 1)
