"""Hypothesis strategies for decay trees and LCAG matrices, and the rounding tolerances that
comparisons of decoded trees and their scores allow."""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
from hypothesis import strategies as st

from lcag import DecayTree, is_valid_lcag, tree_score
from lcag.matrix import tree_to_lcas

EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7
EPS64 = float(np.finfo(np.float64).eps)  # 2.2e-16
MAX_LOG_SCORE = -float(np.log(1e-12))  # 27.6: probabilities are floored at 1e-12 before the log
LOGIT_ATOL = 1e-5
"""How far one event's float32 logits may move when the batch around it changes shape (or the
kernels the CPU dispatches to change): torch.testing's float32 atol. Logits here are O(1..10),
eps32 1.2e-7 relative per rounding, a few dozen roundings deep: a few 1e-6 at most (measured:
1.9e-6 between batches of 16 and one batch of 86 events)."""

PROB_RTOL = 2 * LOGIT_ATOL + 4 * EPS32
"""Relative change of a softmax probability when its logits move by ``LOGIT_ATOL``: at most
``2 LOGIT_ATOL`` (log-softmax), plus the float32 softmax's own rounding (exp, sum, divide)."""


def n_pairs(n_leaves: int) -> int:
    return n_leaves * (n_leaves - 1) // 2


def float64_score_tolerance(n_leaves: int) -> float:
    """Rounding between two float64 sums of the same tree's pair scores in different orders
    (the decoder's subset sums, :func:`tree_score`): at most ``k^2 eps64 max|s|`` for ``k``
    pairs, ``|s| <= 27.6``; 5e-11 at 14 leaves."""
    return max(n_pairs(n_leaves), 1) ** 2 * EPS64 * MAX_LOG_SCORE


def float32_score_tolerance(n_leaves: int) -> float:
    """How far a tree's score (a float64 sum of log-probabilities over ``k`` pairs) moves when
    the float32 logits behind it move by ``LOGIT_ATOL``: log-softmax moves each
    log-probability by at most ``2 max|d logit|``, plus eps32 for rounding the probability to
    float32; 5.6e-4 at 8 leaves."""
    k = n_pairs(n_leaves)
    return k * (2 * LOGIT_ATOL + EPS32) + float64_score_tolerance(n_leaves)


def assert_same_tree_or_tied(
    got: np.ndarray,
    expected: np.ndarray,
    probs: np.ndarray,
    score_rounding: float,
    *,
    node_scores: np.ndarray | None = None,
) -> None:
    """``got == expected``, or else a tie. Decoding picks the best-scoring tree, so inputs
    equal up to rounding give the same tree unless two trees score within that rounding of
    each other; then either tree is a right answer. ``score_rounding`` bounds how far any
    tree's score differs between the two computations; each tree is the best under its own,
    so under ``probs`` (and ``node_scores``, if both were decoded with them) their scores
    differ by at most twice that."""
    got, expected = np.asarray(got), np.asarray(expected)
    if np.array_equal(got, expected):
        return
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert is_valid_lcag(got), got
    gap = abs(
        float(tree_score(got, probs, node_scores=node_scores))
        - float(tree_score(expected, probs, node_scores=node_scores))
    )
    assert gap <= 2 * score_rounding, (
        f"different trees whose scores differ by {gap:.3g} > 2 x {score_rounding:.3g}:\n"
        f"{got}\n{expected}"
    )


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


# ---------------------------------------------------------------- brute-force references
def set_partitions(items: tuple) -> list[list[tuple]]:
    """Every partition of ``items`` into blocks (brute-force references)."""
    if not items:
        return [[]]
    first, rest = items[0], items[1:]
    out = []
    for partition in set_partitions(rest):
        for k in range(len(partition)):
            out.append([*partition[:k], (first, *partition[k]), *partition[k + 1 :]])
        out.append([(first,), *partition])
    return out


def all_shapes(items: tuple) -> list:
    """Every tree over ``items`` as nested tuples, no single-child nodes."""
    if len(items) == 1:
        return [items[0]]
    shapes = []
    for partition in set_partitions(items):
        if len(partition) >= 2:
            shapes += itertools.product(*(all_shapes(block) for block in partition))
    return shapes


def labelled_lcas(tree: DecayTree, labels: dict[int, int]) -> np.ndarray:
    """The LCAS of ``tree`` with stage ``labels[node]`` on every inner node."""
    return tree_to_lcas(tree, lambda node: labels[node])


@cache
def all_valid_lcas(n_leaves: int, n_stages: int) -> frozenset[bytes]:
    """Every stage labelling (stages 1..K, strictly falling downwards) of every tree."""
    found = set()
    for shape in all_shapes(tuple(range(n_leaves))):
        tree = DecayTree.from_nested(shape)
        inner = list(tree.inner_nodes)
        for stages in itertools.product(range(1, n_stages + 1), repeat=len(inner)):
            labels = dict(zip(inner, stages, strict=True))
            if all(labels[tree.parent(v)] > labels[v] for v in inner if tree.parent(v) >= 0):
                found.add(labelled_lcas(tree, labels).astype(np.int64).tobytes())
    return frozenset(found)
