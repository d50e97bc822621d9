"""The k most probable valid trees of one event by Lawler's partitioning on pairs.

A valid LCAG is one tree, so the trees are split by their matrix entries: after the best tree
``M`` of a subspace, the rest of the subspace is the disjoint union over unfixed pairs ``q``
(in a fixed order) of "pairs before ``q`` as in ``M``, pair ``q`` not ``M[q]``". Each part is
one constrained decode, and a heap yields the trees best first. A forbidden class gets a
score below twice the largest score magnitude any tree can reach: low enough that every
allowed tree beats every tree using it, yet finite and small enough that the decoder's subset
sums (which subtract sums of scores) keep their precision. Cost: up to ``L (L - 1) / 2``
decodes per tree returned, batched.

- :func:`top_k_exact` decodes each part exactly (:mod:`lcag.decode.exact`, or with
  children-count scores :mod:`lcag.decode.children`): the ``k`` best trees of all.
- :func:`top_k_approx` decodes each part with the approximate decoder
  (:mod:`lcag.decode.dendrogram`, whose dendrogram follows each part's constraints): distinct
  valid trees, the approximate decoder's tree among them, each the best that decoder finds in
  its part (a part where it finds none obeying the constraints is dropped), sorted by score
  (a part's tree may outscore the decoder's). For events above the exact decoder's reach.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from lcag.decode.children import _children_counts, decode_exact_children
from lcag.decode.dendrogram import decode_dendrogram
from lcag.decode.exact import decode_exact

__all__ = ["top_k_approx", "top_k_exact"]


def top_k_exact(
    scores: np.ndarray, nodes: np.ndarray, k: int, children: np.ndarray | None = None
) -> list[tuple[np.ndarray, float]]:
    """The ``k`` best valid LCAGs of one event with their scores, best first.

    Args:
        scores: ``(n, n, H)`` pair log-scores, index ``c`` = height ``c + 1``, symmetric.
        nodes: ``(2^n,)`` node scores by leaf bit mask (root included).
        k: how many trees (fewer when fewer valid trees exist).
        children: ``(2^n, K)`` children-count scores (:mod:`lcag.decode.children`).

    Returns:
        ``[(lcag (n, n) int64, score), ...]``.
    """
    n = scores.shape[0]
    finite_nodes = nodes[np.isfinite(nodes)]
    reach = np.abs(scores).sum() + n * (np.abs(finite_nodes).max(initial=0.0))
    if children is not None:
        reach += n * np.abs(children[np.isfinite(children)]).max(initial=0.0)

    def node_terms(M: np.ndarray) -> float:
        inner, count = _children_counts(np.ascontiguousarray(M, dtype=np.int64))
        total = nodes[inner].sum()
        if children is not None:
            total += children[inner, np.minimum(count - 2, children.shape[1] - 1)].sum()
        return float(total)

    def decode_batch(s: np.ndarray) -> np.ndarray:
        node_batch = np.broadcast_to(nodes, (len(s), len(nodes))).copy()
        if children is None:
            return decode_exact(s, node_batch)
        return decode_exact_children(s, node_batch, np.broadcast_to(children, (len(s),
                                     *children.shape)))  # fmt: skip

    return _partitioned(scores, k, reach, decode_batch, node_terms)


def top_k_approx(
    scores: np.ndarray, k: int, nodes: np.ndarray | None = None, bits: np.ndarray | None = None
) -> list[tuple[np.ndarray, float]]:
    """``k`` distinct valid LCAGs of one event by the approximate decoder, sorted by score
    (module docstring).

    Args:
        scores: ``(n, n, H)`` pair log-scores, index ``c`` = height ``c + 1``, symmetric.
        nodes: ``(2^L,)`` the event's node scores by leaf bit mask, or ``None``.
        bits: ``(n,)`` int64, the bit of each of the ``n`` leaves in ``nodes``' indexing
            (needed with ``nodes``).

    Returns:
        ``[(lcag (n, n) int64, score), ...]``.
    """
    n = scores.shape[0]
    reach = np.abs(scores).sum()
    if nodes is not None:
        bits = np.asarray(bits, dtype=np.int64)
        reach += n * np.abs(nodes[np.isfinite(nodes)]).max(initial=0.0)
    members = (np.int64(1) << np.arange(n, dtype=np.int64))[None, :]

    def node_terms(M: np.ndarray) -> float:
        if nodes is None:
            return 0.0
        inner, _ = _children_counts(np.ascontiguousarray(M, dtype=np.int64))
        original = ((inner[:, None] & members) != 0) @ bits
        return float(nodes[original].sum())

    def decode_batch(s: np.ndarray) -> np.ndarray:
        if nodes is None:
            return decode_dendrogram(s)
        return decode_dendrogram(
            s, np.broadcast_to(bits, (len(s), n)), np.broadcast_to(nodes, (len(s), len(nodes)))
        )

    found = _partitioned(scores, k, reach, decode_batch, node_terms)
    return sorted(found, key=lambda tree: -tree[1])


def _partitioned(
    scores: np.ndarray,
    k: int,
    reach: float,
    decode_batch: Callable[[np.ndarray], np.ndarray],
    node_terms: Callable[[np.ndarray], float],
) -> list[tuple[np.ndarray, float]]:
    """Lawler's partitioning (module docstring) with ``decode_batch`` (``(B, n, n, H)`` scores
    to ``(B, n, n)`` trees) solving each part; ``node_terms(M)`` is a tree's score beyond its
    pairs, ``reach`` a bound on any tree's score magnitude."""
    n = scores.shape[0]
    iu, ju = np.triu_indices(n, 1)
    forbid = -(2.0 * reach + 1.0)

    def score_of(M: np.ndarray, s: np.ndarray) -> float:
        return float(s[iu, ju, M[iu, ju] - 1].sum()) + node_terms(M)

    def constrained(prefix: np.ndarray, m: int, banned: frozenset[int]) -> np.ndarray:
        s = scores.copy()
        for q in range(m):  # pairs before m fixed to prefix's classes
            keep = s[iu[q], ju[q], prefix[q] - 1]
            s[iu[q], ju[q]] = s[ju[q], iu[q]] = forbid
            s[iu[q], ju[q], prefix[q] - 1] = s[ju[q], iu[q], prefix[q] - 1] = keep
        for c in banned:
            s[iu[m], ju[m], c - 1] = s[ju[m], iu[m], c - 1] = forbid
        return s

    first = decode_batch(scores[None])[0]
    heap: list[tuple[float, int, np.ndarray, int, frozenset[int]]] = []
    counter = 0
    heapq.heappush(heap, (-score_of(first, scores), counter, first, 0, frozenset()))
    found: list[tuple[np.ndarray, float]] = []
    while heap and len(found) < k:
        negative, _, M, m, banned = heapq.heappop(heap)
        found.append((M, -negative))
        if len(found) == k:
            break
        values = M[iu, ju]
        parts = [
            (q, frozenset({*banned, int(values[q])}) if q == m else frozenset({int(values[q])}))
            for q in range(m, len(iu))
        ]
        if not parts:
            continue
        subs = np.stack([constrained(values, q, ban) for q, ban in parts])
        decoded = decode_batch(subs)
        for (q, ban), s, D in zip(parts, subs, decoded, strict=True):
            if score_of(D, s) <= forbid / 2:
                continue  # no valid tree in this part (or none the decoder finds)
            counter += 1
            heapq.heappush(heap, (-score_of(D, scores), counter, D, q, ban))
    return found
