"""Which decay topologies training saw: a catalogue of labelled tree shapes.

A reconstructed tree is *of a known topology* when its shape, with each leaf labelled by its
species, is that of some training tree. For a trained model the difference matters: on the
topologies it was trained on its trees are mostly right and its scores sharp; on others the
pair scores, which learnt the training topologies, are often confidently wrong. So the tree
probabilities are calibrated separately for the two (:mod:`lcag.evidence.calibration`), and
every reconstruction says which it is (``Reconstruction.known_topology``).

A tree's key is a 64-bit BLAKE2b digest of its canonical form: a leaf is its species index,
an inner node the sorted list of its children's forms. Leaf order, and the order of children,
do not change it. Species are the discrete leaf masses of the training leaves
(:class:`lcag.evidence.composition.Species`); where the masses are continuous, every leaf is
of one species and the key is the unlabelled shape. Background leaves (LCAG 0 with every other
leaf) are not part of the tree and are left out.

The catalogue also keeps one tree per key (its LCAG and leaf species), so that the trees of
the training topologies over an event's leaves can be listed (:meth:`TopologyCatalogue.
known_trees`): every assignment of the event's leaves to a catalogued tree's leaves of the same
species, distinct LCAGs once. :mod:`lcag.evidence.topology_prior` decodes with them.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from lcag.evidence.composition import Species, leaf_masses

__all__ = ["TopologyCatalogue", "tree_key", "tree_keys"]

_EVENTS_PER_TOPOLOGY = 3  # training events keyed per topology id (the rest add nothing)
_SPECIES_TOLERANCE = 2e-3  # |log(1 + m) - species| below this: a leaf of that species
MAX_ASSIGNMENTS = 40_320  # leaf assignments listed per catalogued tree (8!); more: not listed


def _canonical(lcag: np.ndarray, labels: np.ndarray, members: list[int]) -> str:
    """The canonical form of the subtree over ``members`` (leaf indices of one inner node)."""
    if len(members) == 1:
        return str(int(labels[members[0]]))
    block = lcag[np.ix_(members, members)]
    height = block.max()
    children: list[list[int]] = []
    left = list(members)
    while left:  # in a valid LCAG, i and k share a child exactly when lcag[i, k] < height
        first = left.pop(0)
        child = [first] + [k for k in left if lcag[first, k] < height]
        left = [k for k in left if lcag[first, k] >= height]
        children.append(child)
    if len(children) == 1:  # not a valid LCAG (a node with one child): keep what there is
        return "(" + ",".join(sorted(str(int(labels[m])) for m in members)) + ")"
    return "(" + ",".join(sorted(_canonical(lcag, labels, c) for c in children)) + ")"


def tree_key(lcag: np.ndarray, labels: np.ndarray) -> int:
    """The key of one tree: ``lcag (L, L)`` over its real leaves, ``labels (L,)`` their
    species; background leaves (0 with every other leaf) left out."""
    lcag = np.asarray(lcag)
    off = lcag.copy()
    np.fill_diagonal(off, 0)
    members = [i for i in range(len(lcag)) if len(lcag) == 1 or off[i].max() > 0]
    form = _canonical(off, np.asarray(labels), members) if members else "()"
    digest = hashlib.blake2b(form.encode(), digest_size=8).digest()
    return int(np.frombuffer(digest, dtype="<i8")[0])


def tree_keys(lcag: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keys ``(N,)`` int64 of trees ``lcag (N, L, L)`` with leaf species ``labels (N, L)``;
    ``mask (N, L)`` marks the real leaves."""
    out = np.empty(len(lcag), dtype=np.int64)
    for k in range(len(lcag)):
        real = np.flatnonzero(mask[k])
        out[k] = tree_key(lcag[k][np.ix_(real, real)], labels[k][real])
    return out


@dataclass(frozen=True)
class TopologyCatalogue:
    """The labelled tree shapes of the training split.

    Attributes:
        species: ``(S,)`` sorted ``log(1 + m)`` of the leaf species (empty: one species).
        keys: ``(K,)`` sorted distinct :func:`tree_key` of the training trees (empty: no
            catalogue, e.g. a checkpoint written before it existed; every tree then counts
            as known).
        trees: ``(K, n, n)`` int8, a tree of each key (its LCAG over its real leaves, -1
            padding up to the largest ``n``); ``(0, 0, 0)`` when not kept (checkpoints
            written before, then :meth:`known_trees` lists none).
        tree_species: ``(K, n)`` int8, the species index of each of those leaves (-1
            padding).
    """

    species: np.ndarray
    keys: np.ndarray
    trees: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.int8))
    tree_species: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int8))

    @classmethod
    def empty(cls) -> TopologyCatalogue:
        return cls(np.zeros(0), np.zeros(0, dtype=np.int64))

    @property
    def fitted(self) -> bool:
        return len(self.keys) > 0

    @classmethod
    def fit(cls, events: Sequence[dict[str, Any]]) -> TopologyCatalogue:
        """The catalogue of training ``events`` (dicts with ``x (L, F)``, ``target (L, L)``
        and, optionally, ``topology``: then only a few events of each topology are keyed)."""
        if not events:
            return cls.empty()
        masses = np.concatenate([leaf_masses(e["x"]) for e in events])
        species = Species.fit(masses).log_masses
        seen: dict[int, int] = {}
        trees: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for e in events:
            topology = int(e.get("topology", -1))
            if topology >= 0:
                if seen.get(topology, 0) >= _EVENTS_PER_TOPOLOGY:
                    continue
                seen[topology] = seen.get(topology, 0) + 1
            lcag = np.array(e["target"], dtype=np.int64)
            np.fill_diagonal(lcag, 0)
            labels = _species_of(species, leaf_masses(e["x"]))
            key = tree_key(lcag, labels)
            if key not in trees:
                real = _real_leaves(lcag)
                trees[key] = (lcag[np.ix_(real, real)], labels[real])
        keys = np.array(sorted(trees), dtype=np.int64)
        width = max((len(trees[k][1]) for k in trees), default=0)
        stored = np.full((len(keys), width, width), -1, dtype=np.int8)
        stored_species = np.full((len(keys), width), -1, dtype=np.int8)
        for k, key in enumerate(keys.tolist()):
            lcag, labels = trees[key]
            stored[k, : len(labels), : len(labels)] = lcag
            stored_species[k, : len(labels)] = labels
        return cls(species, keys, stored, stored_species)

    def species_of(self, x: np.ndarray) -> np.ndarray:
        """The species index of every leaf, ``(N, L)`` from ``x (N, L, 4+)`` (``S`` for a
        leaf of no known species)."""
        return _species_of(self.species, leaf_masses(x))

    def contains(self, lcag: np.ndarray, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Whether each tree ``lcag (N, L, L)`` over leaves ``x (N, L, 4+)``, ``mask (N, L)``
        is of a training topology, ``(N,)`` bool (all ``True`` without a catalogue)."""
        if not self.fitted:
            return np.ones(len(lcag), dtype=bool)
        keys = tree_keys(np.asarray(lcag), self.species_of(x), np.asarray(mask, dtype=bool))
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[at] == keys

    @cached_property
    def _by_composition(self) -> dict[tuple[int, ...], list[int]]:
        """Catalogued trees by their sorted leaf species."""
        index: dict[tuple[int, ...], list[int]] = {}
        for k, labels in enumerate(self.tree_species):
            index.setdefault(tuple(sorted(int(s) for s in labels if s >= 0)), []).append(k)
        return index

    def known_trees(self, species: np.ndarray) -> np.ndarray:
        """Every distinct tree of a training topology over leaves of species ``species (n,)``
        (:meth:`species_of`), as LCAGs ``(A, n, n)`` int64 (``A = 0``: none).

        A catalogued tree with the same leaf species is one such tree per assignment of the
        event's leaves to its leaves of the same species; trees needing more than
        ``MAX_ASSIGNMENTS`` assignments (many leaves of one species) are not listed. The set
        depends on the leaf order only through the species, so it is built once per species
        multiset (over the leaves in sorted species order) and reordered for each event.
        """
        species = np.asarray(species, dtype=np.int64)
        n = len(species)
        trees = self._known_in_sorted_order(tuple(sorted(species.tolist())))
        if not len(trees):
            return np.zeros((0, n, n), dtype=np.int64)
        position = np.empty(n, dtype=np.int64)  # event leaf -> its place in sorted order
        position[np.argsort(species, kind="stable")] = np.arange(n)
        return trees[:, position[:, None], position[None, :]]

    @cached_property
    def _known_cache(self) -> dict[tuple[int, ...], np.ndarray]:
        return {}

    def _known_in_sorted_order(self, composition: tuple[int, ...]) -> np.ndarray:
        """:meth:`known_trees` over leaves of species ``composition`` (sorted), cached."""
        cached = self._known_cache.get(composition)
        if cached is not None:
            return cached
        species = np.array(composition, dtype=np.int64)
        n = len(species)
        found = [
            _assignments(self.trees[k, :n, :n].astype(np.int64), self.tree_species[k, :n], species)
            for k in self._by_composition.get(composition, ())
        ]
        found = [trees for trees in found if trees is not None]
        out = np.zeros((0, n, n), dtype=np.int64)
        if found:
            flat = np.unique(np.concatenate(found).reshape(-1, n * n), axis=0)
            out = flat.reshape(-1, n, n)
        self._known_cache[composition] = out
        return out


def _real_leaves(lcag: np.ndarray) -> np.ndarray:
    """Leaves of ``lcag (L, L)`` (diagonal 0) in the tree: those with a nonzero entry."""
    if len(lcag) == 1:
        return np.zeros(1, dtype=np.int64)
    return np.flatnonzero(lcag.max(axis=1) > 0)


def _assignments(tree: np.ndarray, tree_species: np.ndarray, species: np.ndarray):
    """The LCAGs ``(A, n, n)`` of ``tree (n, n)`` (leaf species ``tree_species (n,)``) over
    leaves of species ``species (n,)``, one per species-preserving assignment, or ``None``
    when there are more than ``MAX_ASSIGNMENTS``."""
    groups = [
        (np.flatnonzero(species == s), np.flatnonzero(tree_species == s))
        for s in np.unique(species)
    ]
    if math.prod(math.factorial(len(leaves)) for leaves, _ in groups) > MAX_ASSIGNMENTS:
        return None
    n = len(species)
    position = np.zeros((1, n), dtype=np.int64)  # position[a, i]: the tree leaf of leaf i
    for leaves, places in groups:
        orders = np.array(list(itertools.permutations(places.tolist())), dtype=np.int64)
        grown = np.repeat(position, len(orders), axis=0)
        grown[:, leaves] = np.tile(orders, (len(position), 1))
        position = grown
    return tree[position[:, :, None], position[:, None, :]]


def _species_of(species: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Species index ``(...)`` of leaves of mass ``masses (...)`` (``len(species)`` if none)."""
    if len(species) == 0:
        return np.zeros(masses.shape, dtype=np.int64)
    values = np.log1p(masses)
    nearest = np.clip(np.searchsorted(species, values), 1, len(species)) - 1
    upper = np.minimum(nearest + 1, len(species) - 1)
    closer = np.abs(species[upper] - values) < np.abs(species[nearest] - values)
    index = np.where(closer, upper, nearest)
    return np.where(np.abs(species[index] - values) < _SPECIES_TOLERANCE, index, len(species))
