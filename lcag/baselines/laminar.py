"""The best laminar family of leaf subsets (a valid decay tree) for per-subset scores.

Subsets are bit masks (bit ``i`` = leaf ``i``). Given a score per subset, the family of
nested-or-disjoint subsets with the largest summed score is found exactly by dynamic
programming over subsets (``O(3^n)``, compiled), for the whole event as the root and, at the
same cost, for every subset as the root (the tree of an event with leaves outside it).
"""

from __future__ import annotations

import numba
import numpy as np

from lcag.tree import DecayTree

__all__ = ["chosen_sets", "laminar_search", "tree_from_choices"]


@numba.njit(cache=True)
def laminar_search(gain: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """Best laminar family: for every set ``S``, the first block of its best partition.

    ``G[U]`` = best split of ``U`` into blocks (a single leaf scores 0, a candidate set
    ``gain + F``), ``F[S]`` = the same with at least two blocks (``S`` as an inner node).

    Args:
        gain: ``(2^n,)`` the score of each subset as an inner node below the root.

    Returns:
        ``choices (2, 2^n)``: the block holding the lowest leaf in the best split of each set
        with ``S`` as an inner node (row 0) and in any split (row 1); and ``F (2^n,)``, the
        best summed score of the nodes below ``S`` with ``S`` as an inner node.
    """
    size = 1 << n
    G = np.full(size, -np.inf)
    F = np.full(size, -np.inf)
    first_g = np.zeros(size, dtype=np.int64)
    first_f = np.zeros(size, dtype=np.int64)
    G[0] = 0.0
    for S in range(1, size):
        low = S & -S
        rest = S ^ low
        best_f, best_fb = -np.inf, 0
        sub = rest
        while True:
            B = low | sub
            part = 0.0 if B == low else gain[B] + F[B]
            if B != S:
                value = part + G[S ^ B]
                if value > best_f:
                    best_f, best_fb = value, B
            if sub == 0:
                break
            sub = (sub - 1) & rest
        F[S], first_f[S] = best_f, best_fb
        whole = 0.0 if S == low else gain[S] + F[S]
        if whole >= best_f:
            G[S], first_g[S] = whole, S
        else:
            G[S], first_g[S] = best_f, best_fb
    # first_f for inner nodes (root and chosen sets), first_g for the rest of a split
    out = np.empty((2, size), dtype=np.int64)
    out[0] = first_f
    out[1] = first_g
    return out, F


def _blocks(choices: np.ndarray, S: int) -> list[int]:
    """The children (leaf bit masks) of the inner node ``S`` in the best family."""
    first_f, first_g = choices
    B, rest = int(first_f[S]), S ^ int(first_f[S])
    blocks = [B]
    while rest:
        block = int(first_g[rest])
        blocks.append(block)
        rest ^= block
    return blocks


def tree_from_choices(choices: np.ndarray, root: int) -> tuple[DecayTree, np.ndarray]:
    """The best tree on the leaves of ``root`` (a bit mask of at least two leaves).

    Returns:
        the tree, and ``leaves (k,)``: its leaf ``j`` is event leaf ``leaves[j]``.
    """
    leaves = np.flatnonzero([(root >> i) & 1 for i in range(root.bit_length())])
    position = {1 << int(leaf): j for j, leaf in enumerate(leaves)}
    parents = [-1] * len(leaves)
    stack = [(root, -1)]  # (set, parent node id)
    while stack:
        S, parent = stack.pop()
        node = len(parents)
        parents.append(parent)
        for block in _blocks(choices, S):
            if block & (block - 1):
                stack.append((block, node))
            else:
                parents[position[block]] = node
    return DecayTree(parents), leaves


def chosen_sets(choices: np.ndarray, root: int) -> frozenset[int]:
    """The inner nodes (leaf bit masks) of the best family below ``root``, ``root`` aside."""
    found: list[int] = []
    stack = [root]
    while stack:
        for block in _blocks(choices, stack.pop()):
            if block & (block - 1):
                found.append(block)
                stack.append(block)
    return frozenset(found)
