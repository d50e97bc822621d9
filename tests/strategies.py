"""Hypothesis strategies for decay trees and LCAG matrices."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lcag import DecayTree


@st.composite
def decay_trees(
    draw: st.DrawFn,
    min_leaves: int = 2,
    max_leaves: int = 14,
    max_depth: int = 8,
    max_children: int = 6,
) -> DecayTree:
    """Random decay trees: 2..6 children per inner node, depth 2..8, leaves shuffled."""
    n_leaves = draw(st.integers(min_leaves, max_leaves))
    smallest_depth = 1
    while max_children ** (smallest_depth - 1) < n_leaves:
        smallest_depth += 1
    depth_limit = draw(st.integers(max(2, smallest_depth), max_depth))

    def grow(n: int, levels: int):
        if n == 1:
            return "leaf"
        cap = max_children ** (levels - 2)  # leaves one child subtree can hold
        m = draw(st.integers(max(2, -(-n // cap)), min(max_children, n)))
        sizes, remaining = [], n - m
        for k in range(m):
            later = m - k - 1
            extra = draw(
                st.integers(max(0, remaining - later * (cap - 1)), min(cap - 1, remaining))
            )
            sizes.append(1 + extra)
            remaining -= extra
        return tuple(grow(size, levels - 1) for size in sizes)

    shape = DecayTree.from_nested(grow(n_leaves, depth_limit))
    order = draw(st.permutations(range(n_leaves)))
    return DecayTree(shape.permute_leaves(np.array(order)).parents)


def one_hot_probs(matrix: np.ndarray, n_classes: int, floor: float = 1e-3) -> np.ndarray:
    """``(L, L, C)`` probabilities concentrated on ``matrix``'s classes."""
    L = matrix.shape[0]
    probs = np.full((L, L, n_classes), floor)
    probs[np.arange(L)[:, None], np.arange(L)[None, :], matrix] = 1.0
    return probs / probs.sum(-1, keepdims=True)
