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

Where the leaves come in a few species (:class:`lcag.evidence.composition.Species`, learnt from
the training leaves' masses), the prior also counts every (composition, mass bin) pair: a
subset of the species a particle decays into, at that particle's mass, is a node far more
often than the mass alone says. Those counts are shrunk towards the mass-only odds with a
strength chosen on the same held-out events (none, if they do not help), and they only ever
*raise* a subset's score above the mass-only one. A (composition, mass) pair that training saw
rarely or never as a node (a particle of an unseen topology decaying another way) keeps the
mass-only score: training's topologies cannot say that it is no particle. (Letting them lower
scores too cost 40 points on unseen topologies with exact masses, where a few chance
coincidences of a composition with a particle's mass outweighed the mass prior.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lcag.errors import ConfigError
from lcag.evidence.composition import Species, leaf_masses
from lcag.evidence.subsets import node_indicator, subset_masses, subset_sizes

__all__ = ["AUTO_BINS", "COMPOSITION_STRENGTHS", "MAX_PRIOR_LEAVES", "MassPrior"]

AUTO_BINS = tuple(100 * 2**k for k in range(10))  # 100 .. 51,200 log-mass bins
# shrinkage of the (composition, mass bin) counts towards the mass-only odds, in pseudo-events;
# the held-out events choose one (or none: the mass alone)
COMPOSITION_STRENGTHS = (1.0, 4.0, 16.0, 64.0)
_PRUNE = 0.05  # (composition, bin) log-odds within this of the mass-only ones are not kept
MAX_PRIOR_LEAVES = 12  # node scores hold 2^L entries per event; larger events get none
_TINY_MASS = 1e-9


@dataclass(frozen=True)
class MassPrior:
    """Log-odds of being an inner node per log-mass bin (and size, optionally).

    Attributes:
        edges: ``(B + 1,)`` increasing bin edges in ``log m``.
        log_odds: ``(S, B)``; row ``k`` holds subsets of ``k + 2`` leaves (the last row also
            every larger size).
        species: the leaf species compositions are counted by (none: mass alone).
        joint_keys: ``(K,)`` sorted int64 ``composition code * B + bin`` of the
            (composition, bin) pairs whose log-odds differ from the mass-only ones.
        joint_log_odds: ``(K,)`` their log-odds.
    """

    edges: np.ndarray
    log_odds: np.ndarray
    species: Species = field(default_factory=Species.none)
    joint_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    joint_log_odds: np.ndarray = field(default_factory=lambda: np.zeros(0))

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
        composition: bool = True,
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
            composition: also count (leaf-species composition, bin) pairs where the leaves
                come in species (module docstring); kept only if they predict the held-out
                events' nodes better than the mass alone.
        """
        if n_bins != "auto" and (isinstance(n_bins, bool) or not isinstance(n_bins, int)
                                 or n_bins < 1):  # fmt: skip
            raise ConfigError(
                f"mass_prior_bins: expected 'auto' or an integer >= 1, got {n_bins!r}"
            )
        species = Species.fit(_training_leaf_masses(events)) if composition else Species.none()
        table = _subset_table(events, max_size, species)
        if table is None:
            return cls.empty(400 if n_bins == "auto" else n_bins, max_size)
        low, high = np.quantile(table.log_mass, [0.0005, 0.9995])
        if n_bins == "auto":
            n_bins = max(AUTO_BINS, key=lambda b: table.held_out_score(low, high, b, pseudo_count))
        edges = _edges(low, high, n_bins)
        bins = _bin(edges, table.log_mass)
        nodes, others = table.counts(bins, n_bins)
        log_odds = np.log(nodes + pseudo_count) - np.log(others + pseudo_count)
        if table.codes is None:
            return cls(edges, log_odds)
        strength = table.composition_strength(bins, n_bins, pseudo_count)
        if strength is None:
            return cls(edges, log_odds)
        keys, joint = table.joint_log_odds(bins, n_bins, log_odds, strength)
        return cls(edges, log_odds, species, keys, joint)

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
        bins = _bin(self.edges, masses)
        scores = self.log_odds[rows[None, :], bins]
        if len(self.joint_keys):
            keys = self.species.subset_codes(x, mask, columns) * (len(self.edges) - 1) + bins
            found, index = _lookup(self.joint_keys, keys)
            scores[found] = np.maximum(scores[found], self.joint_log_odds[index[found]])
        full = mask.astype(np.int64) @ (np.int64(1) << np.arange(L, dtype=np.int64))
        scores[(sizes[None, :] < 2) | (bits[None, :] == full[:, None])] = 0.0
        return scores


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``keys`` is in ``sorted_keys``: found ``(bool)`` and index arrays."""
    index = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[index] == keys, index


def _training_leaf_masses(events: list[dict[str, Any]]) -> np.ndarray:
    """``(M,)`` masses of every leaf of the events."""
    if not events:
        return np.zeros(0)
    return np.concatenate([leaf_masses(np.asarray(event["x"])) for event in events])


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
        codes: ``(M,)`` int64 the subsets' composition codes (``None``: no species).
    """

    log_mass: np.ndarray
    row: np.ndarray
    is_node: np.ndarray
    held_out: np.ndarray
    n_rows: int
    codes: np.ndarray | None = None

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
        return _log_likelihood(odds, self.is_node[self.held_out])

    def _joint(
        self, bins: np.ndarray, n_bins: int, use: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per distinct (composition, bin) key of the subsets in ``use``: the sorted keys, node
        and other counts, and one subset index of each (for its mass-only row and bin)."""
        keys = self.codes * n_bins + bins
        chosen = np.arange(len(keys)) if use is None else np.flatnonzero(use)
        unique, first, inverse = np.unique(keys[chosen], return_index=True, return_inverse=True)
        nodes = np.bincount(inverse, weights=self.is_node[chosen], minlength=len(unique))
        total = np.bincount(inverse, minlength=len(unique))
        return unique, nodes, total - nodes, chosen[first]

    def composition_strength(
        self, bins: np.ndarray, n_bins: int, pseudo_count: float
    ) -> float | None:
        """The shrinkage among :data:`COMPOSITION_STRENGTHS` whose (composition, bin) log-odds,
        counted on four fifths of the events, best predict the other fifth's nodes; ``None``
        when the mass-only log-odds predict them better."""
        train = ~self.held_out
        nodes, others = self.counts(bins, n_bins, train)
        mass_odds = np.log(nodes + pseudo_count) - np.log(others + pseudo_count)
        keys, joint_nodes, joint_others, first = self._joint(bins, n_bins, train)
        held = np.flatnonzero(self.held_out)
        held_mass = mass_odds[self.row[held], bins[held]]
        found, index = _lookup(keys, self.codes[held] * n_bins + bins[held])
        truth = self.is_node[held]
        best, best_score = None, _log_likelihood(held_mass, truth)
        for strength in COMPOSITION_STRENGTHS:
            prior = mass_odds[self.row[first], bins[first]]
            joint = _shrunk_log_odds(joint_nodes, joint_others, prior, strength)
            raised = np.maximum(joint[index], held_mass)
            score = _log_likelihood(np.where(found, raised, held_mass), truth)
            if score > best_score:
                best, best_score = strength, score
        return best

    def joint_log_odds(
        self, bins: np.ndarray, n_bins: int, mass_odds: np.ndarray, strength: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The sorted (composition, bin) keys of all events and their shrunk log-odds, only
        those more than ``_PRUNE`` above the mass-only log-odds (compositions raise scores,
        never lower them: module docstring)."""
        keys, nodes, others, first = self._joint(bins, n_bins)
        prior = mass_odds[self.row[first], bins[first]]
        joint = _shrunk_log_odds(nodes, others, prior, strength)
        keep = joint - prior > _PRUNE
        return keys[keep], joint[keep]


def _shrunk_log_odds(
    nodes: np.ndarray, others: np.ndarray, prior_log_odds: np.ndarray, strength: float
) -> np.ndarray:
    """Log-odds of counts shrunk towards a prior: ``strength`` pseudo-events split as the
    prior's odds say."""
    p = 1.0 / (1.0 + np.exp(-prior_log_odds))
    return np.log(nodes + strength * p) - np.log(others + strength * (1.0 - p))


def _log_likelihood(log_odds: np.ndarray, is_node: np.ndarray) -> float:
    """Mean Bernoulli log-likelihood of ``is_node`` under ``log_odds``."""
    return float(-np.logaddexp(0.0, np.where(is_node, -log_odds, log_odds)).mean())


def _subset_table(
    events: list[dict[str, Any]], max_size: int, species: Species
) -> _SubsetTable | None:
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
        codes = species.subset_codes(x, mask)[:, proper] if species.known else None
        parts.append(
            (masses.ravel(), rows.ravel(), is_node.ravel(), held.ravel())
            + ((codes.ravel(),) if codes is not None else ())
        )
    columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
    return _SubsetTable(*columns[:4], max_size - 1, columns[4] if species.known else None)


def _edges(low: float, high: float, n_bins: int) -> np.ndarray:
    return np.linspace(low, high + 1e-9 * max(1.0, abs(high)), n_bins + 1)
