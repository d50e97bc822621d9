"""Exact decoding: the maximum-score valid LCAG by dynamic programming over leaf subsets.

``F(S, h)``, the best subtree over leaf set ``S`` rooted at height ``h``, splits ``S`` into >= 2
blocks of height < h with at least one block of height exactly ``h - 1``; fixing the block that
holds the lowest leaf of ``S`` enumerates each partition once, ``O(3^L * C)`` per event. A node
score per leaf set is added once for every inner node.
"""

from __future__ import annotations

import numba
import numpy as np

from lcag.decode.scores import subset_members

__all__ = [
    "CHUNK_FLOATS",
    "background_sums",
    "best_top",
    "chunks",
    "decode_exact",
    "fill_pairs",
    "start_heights",
    "subset_sums",
]

CHUNK_FLOATS = 1 << 23  # events are handled in chunks of this many subset-table entries


def decode_exact(
    scores: np.ndarray, nodes: np.ndarray, background: np.ndarray | None = None
) -> np.ndarray:
    """Exact maximum-score valid LCAG.

    Args:
        scores: ``(E, n, n, H)`` pair log-scores, index ``k`` = height ``k + 1``.
        nodes: ``(E, 2^n)`` node scores by leaf bit mask, added once per inner node (root
            included).
        background: ``(E, n, n)`` class-0 pair log-scores. When given, the tree may leave
            leaves out: it covers the leaf set ``T`` (``|T| >= 2``) that maximises the tree's
            score on ``T`` plus the class-0 scores of every pair with a leaf outside ``T``,
            whose pairs are 0 in the output.

    Returns:
        ``(E, n, n)`` int64. Subset sums are vectorised in numpy; the dynamic programme over
        subsets runs compiled, one event at a time.
    """
    E, n, _, H = scores.shape
    out = np.zeros((E, n, n), dtype=np.int64)
    for start, stop in chunks(E, n, H):
        _exact_kernel(
            subset_sums(scores[start:stop]),
            nodes[start:stop],
            n,
            out[start:stop],
            *background_sums(background, start, stop, n),
        )
    return out


def background_sums(
    background: np.ndarray | None, start: int, stop: int, n: int
) -> tuple[np.ndarray, bool]:
    """``W0 (E, 2^n)``, the class-0 scores summed over the pairs inside each leaf set, of
    events ``start:stop`` and whether the tree's leaf set is free (zeros and ``False``
    without ``background``)."""
    if background is None:
        return np.zeros((stop - start, 1 << n)), False
    return subset_sums(background[start:stop, :, :, None])[:, 1], True


@numba.njit(cache=True, nogil=True)
def best_top(F: np.ndarray, W0: np.ndarray, free: bool) -> tuple[int, int]:  # pragma: no cover
    """The tree's leaf set and root class: the full set, or with ``free`` the set ``S`` of
    >= 2 leaves maximising ``F[c, S] - W0[S]`` (``F (K, 2^n)``, class 0 unused)."""
    K1, full = F.shape
    top = full - 1
    best = -np.inf
    root = 1
    for S in range(full):
        if (S & (S - 1)) == 0 or (not free and S != top):
            continue
        for c in range(1, K1):
            value = F[c, S] - W0[S]
            if value > best:
                best, top, root = value, S, c
    return top, root


def chunks(E: int, n: int, H: int) -> list[tuple[int, int]]:
    """Event ranges whose subset-sum tables ``(chunk, H + 1, 2^n)`` fit the memory bound."""
    chunk = max(1, CHUNK_FLOATS // ((H + 1) << n))
    return [(start, min(start + chunk, E)) for start in range(0, E, chunk)]


def subset_sums(scores: np.ndarray) -> np.ndarray:
    """``W (E, H + 1, 2^n)``: ``W[e, h, S]`` sums ``scores (E, n, n, H)`` at height ``h`` over
    the pairs inside leaf set ``S`` (bit ``i`` of ``S`` = leaf ``i``); ``W[:, 0] = 0``."""
    E, n, _, H = scores.shape
    W = np.zeros((E, H + 1, 1 << n))
    members = subset_members(n).astype(np.float64)
    for b in range(1, n):
        low = 1 << b  # the subsets of leaves 0..b-1 gain leaf b
        row = np.tensordot(scores[:, b, :b, :], members[:low, :b], ([1], [1]))  # (E, H, low)
        W[:, 1:, low : 2 * low] = W[:, 1:, :low] + row
    return W


@numba.njit(cache=True, nogil=True)
def _exact_kernel(
    W: np.ndarray, nodes: np.ndarray, n: int, out: np.ndarray, W0: np.ndarray, free: bool
) -> None:  # pragma: no cover - compiled
    """Subset dynamic programme for each event; writes the LCAG into ``out (E, n, n)``.

    For height h: G1[B] / G0[B] = best subtree on block B of height exactly h-1 / at most
    h-2, minus W[h, B]; A[S] = best split of S into such blocks; P1[S] = the same with at
    least one block of height h-1; F[h, S] = W[h, S] + nodes[S] + best split into >= 2
    blocks with one of height h-1. Splits fix the block B holding the lowest leaf of S, so
    each is seen once. The root is :func:`best_top`'s.
    """
    E, H1, full = W.shape
    neg = -np.inf
    F = np.empty((H1, full))
    lower = np.empty(full)
    G0 = np.empty(full)
    G1 = np.empty(full)
    A = np.empty(full)
    P1 = np.empty(full)
    x_block = np.zeros((H1, full), dtype=np.int64)  # first block of F's best split
    x_exact = np.zeros((H1, full), dtype=np.bool_)  # ... has height h-1 (rest from A)
    a_block = np.zeros((H1, full), dtype=np.int64)  # first block of A's best split
    p_whole = np.zeros((H1, full), dtype=np.bool_)  # P1 is S as one block of height h-1
    stack_set = np.zeros(n, dtype=np.int64)
    stack_h = np.zeros(n, dtype=np.int64)
    for e in range(E):
        start_heights(F, lower)
        for h in range(1, H1):
            for S in range(full):
                if h >= 2:
                    lower[S] = max(lower[S], F[h - 2, S])
                G0[S] = lower[S] - W[e, h, S]
                G1[S] = F[h - 1, S] - W[e, h, S]
            A[0] = 0.0
            P1[0] = neg
            for S in range(1, full):
                F[h, S] = neg
                whole = max(G0[S], G1[S])
                if (S & (S - 1)) == 0:
                    A[S] = whole
                    P1[S] = G1[S]
                    a_block[h, S] = S
                    p_whole[h, S] = True
                    continue
                low = S & -S
                rest = S ^ low
                best_x = neg
                best_xb = 0
                best_xe = False
                best_y = neg
                best_yb = 0
                sub = (rest - 1) & rest
                while True:  # blocks low|sub for every sub-mask of rest except rest
                    B = low | sub
                    R = S ^ B
                    first = G1[B] + A[R]
                    later = G0[B] + P1[R]
                    if first > best_x:
                        best_x, best_xb, best_xe = first, B, True
                    if later > best_x:
                        best_x, best_xb, best_xe = later, B, False
                    y = max(G0[B], G1[B]) + A[R]
                    if y > best_y:
                        best_y, best_yb = y, B
                    if sub == 0:
                        break
                    sub = (sub - 1) & rest
                x_block[h, S] = best_xb
                x_exact[h, S] = best_xe
                F[h, S] = W[e, h, S] + nodes[e, S] + best_x
                if whole >= best_y:
                    A[S], a_block[h, S] = whole, S
                else:
                    A[S], a_block[h, S] = best_y, best_yb
                if G1[S] >= best_x:
                    P1[S], p_whole[h, S] = G1[S], True
                else:
                    P1[S], p_whole[h, S] = best_x, False

        # Backtrack from the best root (leaf set and height); parents are written before
        # their blocks, which then overwrite their own pairs with lower heights.
        top, root_h = best_top(F, W0[e], free)
        stack_set[0], stack_h[0] = top, root_h
        depth = 1
        while depth > 0:
            depth -= 1
            S, h = stack_set[depth], stack_h[depth]
            fill_pairs(out[e], S, h, n)
            # Walk the blocks of S at height h: X first, then A- or P1-mode for the rest.
            B = x_block[h, S]
            rest = S ^ B
            mode_a = x_exact[h, S]
            block_h = h - 1 if mode_a else _best_lower(F, B, h)
            while True:
                if B & (B - 1):
                    stack_set[depth], stack_h[depth] = B, block_h
                    depth += 1
                if rest == 0:
                    break
                if mode_a:
                    B = a_block[h, rest]
                    low_h = _best_lower(F, B, h) if h >= 2 else -1
                    g0 = F[low_h, B] if low_h >= 0 else neg
                    block_h = h - 1 if F[h - 1, B] >= g0 else low_h
                elif p_whole[h, rest]:
                    B, block_h = rest, h - 1
                else:
                    B = x_block[h, rest]
                    if x_exact[h, rest]:
                        block_h = h - 1
                        mode_a = True
                    else:
                        block_h = _best_lower(F, B, h)
                rest = rest ^ B


@numba.njit(cache=True, nogil=True, inline="always")
def fill_pairs(out: np.ndarray, S: int, h: int, n: int) -> None:  # pragma: no cover - compiled
    """Set every pair of leaves in ``S`` to height ``h`` in one event's ``out (n, n)``."""
    for i in range(n):
        if (S >> i) & 1:
            for j in range(n):
                if j != i and (S >> j) & 1:
                    out[i, j] = h


@numba.njit(cache=True, nogil=True, inline="always")
def start_heights(F: np.ndarray, lower: np.ndarray) -> None:  # pragma: no cover - compiled
    """Height 0 of the subset tables: ``F[0, S]`` is 0 for a single leaf, ``-inf`` for any
    other set; ``lower`` (the best below the current height) starts at ``-inf``."""
    for S in range(F.shape[1]):
        F[0, S] = 0.0 if (S & (S - 1)) == 0 and S != 0 else -np.inf
        lower[S] = -np.inf


@numba.njit(cache=True, nogil=True)
def _best_lower(F: np.ndarray, S: int, h: int) -> int:  # pragma: no cover - compiled
    """Height (<= h-2) of the best subtree on ``S``; 0 for a leaf; -1 when none exists."""
    if (S & (S - 1)) == 0:
        return 0
    best = -1
    for k in range(1, h - 1):
        if best < 0 or F[k, S] > F[best, S]:
            best = k
    return best
