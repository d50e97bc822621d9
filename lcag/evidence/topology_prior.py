"""Decoding that knows the training topologies: a bonus for trees of a catalogued shape.

A model trained on a set of decay topologies meets them again in analysis: most events are
of a decay mode it was trained on. The training topologies are catalogued
(:class:`lcag.evidence.TopologyCatalogue`, labelled by leaf species), and the tree score gets
a log prior odds ``b >= 0`` for trees of a catalogued topology:

    score_b(T) = score(T) + b * known(T).

The bonus comes from a mixture prior over trees: with prior odds ``e^beta`` the event is of a
training topology, and then its tree is any of the event's ``A`` known trees alike; else it is
any of the ``N(n)`` valid trees over its ``n`` leaves alike (:func:`tree_count`). A known tree's
prior is then ``1 + e^beta N(n) / A`` times an unknown one's:

    b = log(1 + e^beta N(n) / A),

large for large events (where a known tree among millions is strong evidence) and small for
small ones (where a few leaves of the right species form a training topology by chance).

Its maximum is exact: the better of the decoder's best tree over all valid trees and the best
of the *known* trees plus ``b``; the known trees over an event's leaves are few (each
catalogued tree of the event's leaf species, under every assignment of same-species leaves:
:meth:`~lcag.evidence.TopologyCatalogue.known_trees`) and are scored one by one. So is its
log-partition, ``log Z_b = log(Z + (e^b - 1) sum_known exp score(T))``, and with it the
probability of each tree. The log prior odds ``beta`` are chosen on the validation splits
with the node weights (known and unseen topologies alike, so that the bonus does not buy known
topologies at the unseen ones' cost) and stored in the checkpoint; ``beta = -inf`` (``b = 0``)
changes nothing. Events decoded
with background leaves (:mod:`lcag.decode.background`) get no bonus: the catalogue's trees
hold every leaf.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from lcag.decode.scores import inner_node_bits, pair_log_scores
from lcag.evidence.topologies import TopologyCatalogue

__all__ = [
    "apply_bonus",
    "bonus_log_partition",
    "known_bonus",
    "known_candidates",
    "known_scores",
    "tree_count",
]

_EPS = 1e-12  # the decoder's probability floor (lcag.decode.tree_score)


@cache
def tree_count(n: int, max_height: int) -> int:
    """The number of valid LCAGs over ``n`` labelled leaves with every height at most
    ``max_height``: rooted trees whose inner nodes have >= 2 children, of depth
    <= ``max_height`` (a node's height is one more than its highest child's; leaves 0).

    Exact (Python integers): a tree of height <= h is a set partition of the leaves into
    >= 2 blocks, each a tree of height <= h - 1; partitions are counted by the block holding
    the first leaf.
    """
    if n < 1 or max_height < 0:
        return 0
    if n == 1:
        return 1
    below = [tree_count(k, max_height - 1) for k in range(n + 1)]  # below[k]: blocks of k
    partitions = [1] + [0] * n  # partitions[m]: of m leaves into blocks of trees below
    for m in range(1, n + 1):
        partitions[m] = sum(
            math.comb(m - 1, k - 1) * below[k] * partitions[m - k] for k in range(1, m + 1)
        )
    return partitions[n] - below[n]  # not the one-block partition


def known_bonus(
    log_odds: float, n_leaves: np.ndarray, n_known: np.ndarray, max_height: int
) -> np.ndarray:
    """The bonus ``b = log(1 + e^beta N(n) / A)`` of each event's known trees ``(N,)``, from
    the log prior odds ``beta`` (``-inf``: 0), the leaf counts ``n_leaves (N,)``, the known
    trees' counts ``n_known (N,)`` (``A``; 0 where none is known: bonus 0) and the largest
    height ``max_height`` (the model's classes less one)."""
    out = np.zeros(len(n_leaves))
    if not np.isfinite(log_odds) and log_odds < 0:
        return out
    for e, (n, a) in enumerate(zip(n_leaves, n_known, strict=True)):
        if a > 0:
            log_ratio = math.log(tree_count(int(n), max_height)) - math.log(int(a))
            out[e] = np.logaddexp(0.0, log_odds + log_ratio)
    return out


def known_candidates(
    catalogue: TopologyCatalogue, x: np.ndarray, mask: np.ndarray
) -> list[np.ndarray]:
    """The trees of training topologies over each event's real leaves.

    Args:
        catalogue: the training topologies (with their trees).
        x: ``(N, L, F)`` leaves, ``px, py, pz, E`` first.
        mask: ``(N, L)`` bool, real leaves.

    Returns:
        Per event, ``(A, n, n)`` int64 LCAGs over its ``n`` real leaves, in mask order
        (``A = 0`` when none is known).
    """
    species = catalogue.species_of(np.asarray(x)[..., :4])
    return [catalogue.known_trees(species[e][mask[e]]) for e in range(len(mask))]


def known_scores(
    candidates: list[np.ndarray],
    probs: np.ndarray,
    mask: np.ndarray,
    nodes: np.ndarray | None = None,
) -> list[np.ndarray]:
    """The tree scores (:func:`lcag.decode.tree_score`) of every event's candidate trees,
    all events' candidates scored at once.

    Args:
        candidates: per event, ``(A, n, n)`` LCAGs over its real leaves.
        probs: ``(N, L, L, C)`` pair probabilities.
        mask: ``(N, L)`` bool, real leaves.
        nodes: ``(N, 2^L)`` node scores, or ``None``.

    Returns:
        Per event, ``(A,)`` float64 scores.
    """
    counts = [len(trees) for trees in candidates]
    if not sum(counts):
        return [np.zeros(0) for _ in candidates]
    L = mask.shape[1]
    owner = np.repeat(np.arange(len(candidates)), counts)  # (T,) the event of each tree
    padded = np.full((len(owner), L, L), -1, dtype=np.int64)  # (T, L, L) at the real leaves
    start = 0
    for e, trees in enumerate(candidates):
        if len(trees):
            real = np.flatnonzero(mask[e])
            padded[start : start + len(trees), real[:, None], real[None, :]] = trees
            start += len(trees)
    used = np.flatnonzero(np.bincount(owner, minlength=len(candidates)))
    s = np.zeros(probs.shape, dtype=np.float64)
    s[used] = pair_log_scores(probs[used], _EPS)
    iu, ju = np.triu_indices(L, 1)
    classes = padded[:, iu, ju]  # (T, P)
    picked = s[owner[:, None], iu[None], ju[None], np.clip(classes, 0, None)]
    total = np.where(classes >= 0, picked, 0.0).sum(axis=1)
    if nodes is not None:
        tree, bits = inner_node_bits(padded, mask[owner])
        tree, bits = np.unique(np.stack([tree, bits]), axis=1)  # each node of a tree once
        np.add.at(total, tree, nodes[owner[tree], bits])
    return np.split(total, np.cumsum(counts)[:-1])


def apply_bonus(
    decoded: np.ndarray,
    scores: np.ndarray,
    candidates: list[np.ndarray],
    candidate_scores: list[np.ndarray],
    mask: np.ndarray,
    bonus: float | np.ndarray,
) -> np.ndarray:
    """The best tree under ``score + bonus * known`` per event.

    Args:
        decoded: ``(N, L, L)`` the decoder's best trees (padding -1).
        scores: ``(N,)`` their scores.
        candidates, candidate_scores: per event the known trees ``(A, n, n)`` and their
            scores ``(A,)`` (:func:`known_candidates`, :func:`known_scores`).
        mask: ``(N, L)`` bool, real leaves.
        bonus: ``b >= 0``, one or one per event ``(N,)``; where 0 the decoded tree is
            kept.

    Returns:
        ``(N, L, L)`` int64: a known tree where its score plus ``bonus`` beats the decoded
        tree's, else the decoded tree.
    """
    b = np.broadcast_to(np.asarray(bonus, dtype=np.float64), (len(decoded),))
    if not (b > 0).any():
        return decoded
    out = np.array(decoded, copy=True)
    for e, (trees, values) in enumerate(zip(candidates, candidate_scores, strict=True)):
        if not len(trees) or b[e] <= 0:
            continue
        best = int(np.argmax(values))
        if values[best] + b[e] > scores[e]:
            real = np.flatnonzero(mask[e])
            out[e][np.ix_(real, real)] = trees[best]
    return out


def bonus_log_partition(
    log_z: np.ndarray, candidate_scores: list[np.ndarray], bonus: float | np.ndarray
) -> np.ndarray:
    """``log Z_b = log(Z + (e^b - 1) sum_known exp score)`` per event ``(N,)``, from the
    log-partition ``log_z (N,)`` and the known trees' scores; ``bonus`` one ``b >= 0`` or one
    per event ``(N,)``."""
    b = np.broadcast_to(np.asarray(bonus, dtype=np.float64), np.shape(log_z))
    out = np.array(log_z, dtype=np.float64, copy=True)
    for e, values in enumerate(candidate_scores):
        if len(values) and b[e] > 0:
            top = values.max()
            known = top + np.log(np.exp(values - top).sum())  # log sum_known exp score
            out[e] = np.logaddexp(log_z[e], np.log(np.expm1(b[e])) + known)
    return out
