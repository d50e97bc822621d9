"""The log-partition over all valid trees: exact decoding's recursion with log-sum-exp for max.

``Z(S, h)`` sums ``exp(score)`` over every subtree on leaf set ``S`` rooted at height ``h``, with
the same split as :mod:`lcag.decode.exact` (the block holding the lowest leaf of ``S`` first,
at least one block of height exactly ``h - 1``), so each tree is counted once. Terms more than
``PRUNE`` below the running sum are skipped: each is below float64 rounding of the total.
"""

from __future__ import annotations

import numba
import numpy as np

from lcag.decode.exact import background_sums, chunks, start_heights, subset_sums

__all__ = ["PRUNE", "log_partition_exact"]

PRUNE = 40.0  # e^-40 = 4e-18: a skipped term changes the sum by less than its rounding


def log_partition_exact(
    scores: np.ndarray, nodes: np.ndarray, background: np.ndarray | None = None
) -> np.ndarray:
    """``log sum_T exp(score(T))`` over every valid LCAG ``T`` with heights ``1..H``.

    Args:
        scores: ``(E, n, n, H)`` pair log-scores, index ``k`` = height ``k + 1``.
        nodes: ``(E, 2^n)`` node scores by leaf bit mask (root included).
        background: ``(E, n, n)`` class-0 pair log-scores: when given, the sum runs over
            the trees on every leaf set of >= 2 leaves, the pairs outside taking class 0
            (as :func:`lcag.decode.exact.decode_exact` chooses).

    Returns:
        ``(E,)`` float64.
    """
    E, n, _, H = scores.shape
    out = np.zeros(E)
    for start, stop in chunks(E, n, H):
        _partition_kernel(
            subset_sums(scores[start:stop]),
            nodes[start:stop],
            n,
            out[start:stop],
            *background_sums(background, start, stop, n),
        )
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _add(a: float, b: float) -> float:  # pragma: no cover - compiled
    """``log(exp(a) + exp(b))``, skipping a term more than ``PRUNE`` below the other."""
    if a < b:
        a, b = b, a
    if b == -np.inf or b < a - PRUNE:
        return a
    return a + np.log1p(np.exp(b - a))


@numba.njit(cache=True, nogil=True)
def _partition_kernel(
    W: np.ndarray, nodes: np.ndarray, n: int, out: np.ndarray, W0: np.ndarray, free: bool
) -> None:  # pragma: no cover - compiled
    """The max-product kernel of :mod:`lcag.decode.exact` in the log-sum-exp semiring.

    For height h: G1[B] / G0[B] = log-sum over subtrees on block B of height exactly h-1 /
    at most h-2, minus W[h, B]; A[S] = over all splits of S into such blocks; P1[S] = the same
    with at least one block of height h-1; F[h, S] = W[h, S] + nodes[S] + over splits into
    >= 2 blocks with one of height h-1. The root set is the whole event, or with ``free``
    every set of >= 2 leaves, its outside pairs taking their class-0 scores ``W0``.
    """
    E, H1, full = W.shape
    neg = -np.inf
    F = np.empty((H1, full))
    lower = np.empty(full)
    G0 = np.empty(full)
    G1 = np.empty(full)
    A = np.empty(full)
    P1 = np.empty(full)
    for e in range(E):
        start_heights(F, lower)
        for h in range(1, H1):
            for S in range(full):
                if h >= 2:
                    lower[S] = _add(lower[S], F[h - 2, S])
                G0[S] = lower[S] - W[e, h, S]
                G1[S] = F[h - 1, S] - W[e, h, S]
            A[0] = 0.0
            P1[0] = neg
            for S in range(1, full):
                F[h, S] = neg
                whole = _add(G0[S], G1[S])
                if (S & (S - 1)) == 0:
                    A[S] = whole
                    P1[S] = G1[S]
                    continue
                low = S & -S
                rest = S ^ low
                x = neg  # >= 2 blocks, one of height h-1
                y = neg  # >= 2 blocks, any heights below h
                sub = (rest - 1) & rest
                while True:
                    B = low | sub
                    R = S ^ B
                    x = _add(x, _add(G1[B] + A[R], G0[B] + P1[R]))
                    y = _add(y, _add(G0[B], G1[B]) + A[R])
                    if sub == 0:
                        break
                    sub = (sub - 1) & rest
                F[h, S] = W[e, h, S] + nodes[e, S] + x
                A[S] = _add(whole, y)
                P1[S] = _add(G1[S], x)
        total = neg  # the root: the whole event, or with ``free`` any set of >= 2 leaves
        for S in range(3 if free else full - 1, full):
            if S & (S - 1):
                for h in range(1, H1):
                    total = _add(total, F[h, S] - W0[e, S])
        out[e] = total + W0[e, full - 1]
