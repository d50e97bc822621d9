"""Exact decoding and log-partition with a score per inner node *and its number of children*.

Node scores (:mod:`lcag.decode.exact`) see only an inner node's leaf set. Some evidence needs
the split too: an n-body decay is uniform in its phase space, whose volume grows as
``M^(2k - 4)`` with the number ``k`` of children, so the density of a tree's leaves carries a
factor ``1 / Phi_k(M)`` per inner node. ``children[S, c]`` is added when leaf set ``S`` is an
inner node with ``c + 2`` children (the last column for that many or more).

The recursion is :mod:`lcag.decode.exact`'s with the number of blocks in the state: ``A[c, S]``
/ ``P1[c, S]`` split ``S`` into ``c + 1`` blocks (the last state: that many or more), so a
node's score can depend on its block count; ``O(3^L C K)`` per event for ``K`` columns.
"""

from __future__ import annotations

import numba
import numpy as np

from lcag.decode.exact import _best_lower, chunks, fill_pairs, start_heights, subset_sums
from lcag.decode.partition import _add

__all__ = ["children_counts", "decode_exact_children", "log_partition_children"]


def decode_exact_children(
    scores: np.ndarray, nodes: np.ndarray, children: np.ndarray
) -> np.ndarray:
    """Exact maximum-score valid LCAG with node and children-count scores.

    Args:
        scores: ``(E, n, n, H)`` pair log-scores, index ``k`` = height ``k + 1``.
        nodes: ``(E, 2^n)`` node scores by leaf bit mask (root included).
        children: ``(E, 2^n, K)``: ``children[e, S, c]`` is added when ``S`` is an inner node
            with ``c + 2`` children (column ``K - 1``: ``K + 1`` or more).

    Returns:
        ``(E, n, n)`` int64.
    """
    return _run(scores, nodes, children, False)[0]


def log_partition_children(
    scores: np.ndarray, nodes: np.ndarray, children: np.ndarray
) -> np.ndarray:
    """``log sum_T exp(score(T))`` over every valid LCAG, the children-count scores included
    (arguments as :func:`decode_exact_children`). Returns ``(E,)`` float64."""
    return _run(scores, nodes, children, True)[1]


def _run(
    scores: np.ndarray, nodes: np.ndarray, children: np.ndarray, total: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The kernel over memory-bounded chunks of events: LCAGs ``(E, n, n)`` (max) and
    log-partitions ``(E,)`` (``total``)."""
    E, n, _, H = scores.shape
    out = np.zeros((E, n, n), dtype=np.int64)
    log_z = np.zeros(E)
    for start, stop in chunks(E, n, H):
        log_z[start:stop] = _children_kernel(
            subset_sums(scores[start:stop]),
            nodes[start:stop],
            np.ascontiguousarray(children[start:stop], dtype=np.float64),
            n,
            out[start:stop],
            total,
        )
    return out, log_z


def children_counts(lcag: np.ndarray) -> list[tuple[int, int]]:
    """``[(leaf bit mask, number of children), ...]`` of every inner node of one valid LCAG
    ``(n, n)``, the root included, ascending by bit mask.

    The node of height ``h`` above leaf ``i`` holds the leaves ``j`` with ``lcag[i, j] <= h``;
    its children are the classes of ``lcag[a, b] <= h - 1`` among them (pairs in different
    children meet at the node itself).
    """
    M = np.ascontiguousarray(lcag, dtype=np.int64)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] > 62:
        raise ValueError(f"children_counts: an (n, n) LCAG with n <= 62, got {M.shape}")
    sets, counts = _children_counts(M)
    return [(int(S), int(c)) for S, c in zip(sets, counts, strict=True)]


@numba.njit(cache=True, nogil=True)
def _children_counts(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """Inner nodes' bit masks ``(m,)`` ascending and their numbers of children ``(m,)``."""
    n = M.shape[0]
    top = 0
    for i in range(n):
        for j in range(n):
            top = max(top, M[i, j])
    sets = np.zeros(n * max(top, 1), dtype=np.int64)
    counts = np.zeros(n * max(top, 1), dtype=np.int64)
    m = 0
    for i in range(n):
        for h in range(1, top + 1):
            S = np.int64(0)
            exists = False
            for j in range(n):
                if M[i, j] <= h:
                    S |= np.int64(1) << j
                if j != i and M[i, j] == h:
                    exists = True
            if not exists:
                continue
            seen = False
            for q in range(m):
                if sets[q] == S:
                    seen = True
                    break
            if seen:
                continue
            blocks = 0
            for a in range(n):
                if not (S >> a) & 1:
                    continue
                first = True
                for b in range(a):
                    if (S >> b) & 1 and M[a, b] <= h - 1:
                        first = False
                        break
                if first:
                    blocks += 1
            sets[m] = S
            counts[m] = blocks
            m += 1
    order = np.argsort(sets[:m])
    return sets[:m][order], counts[:m][order]


@numba.njit(cache=True, nogil=True, inline="always")
def _join(a: float, b: float, total: bool) -> float:  # pragma: no cover - compiled
    """``max(a, b)``, or with ``total`` the log-partition's ``log(exp(a) + exp(b))``."""
    if total:
        return _add(a, b)
    return a if a >= b else b


@numba.njit(cache=True, nogil=True)
def _children_kernel(
    W: np.ndarray, nodes: np.ndarray, kids: np.ndarray, n: int, out: np.ndarray, total: bool
) -> np.ndarray:  # pragma: no cover - compiled
    """The subset programme with block counts; writes LCAGs into ``out`` (max) or returns
    the log-partitions (``total``).

    State ``c`` of ``A``/``P1``/``X`` counts ``c + 1`` blocks, the last state ``J - 1``
    meaning ``J`` or more (``J = K + 1``). ``X[c]`` is a split into ``c + 1 >= 2`` blocks with
    one of height h-1; ``F[h, S] = W + nodes + max_c (X[c] + kids[S, c - 1])``.
    """
    E, H1, full = W.shape
    K = kids.shape[2]
    J = K + 1
    neg = -np.inf
    F = np.empty((H1, full))
    lower = np.empty(full)
    G0 = np.empty(full)
    G1 = np.empty(full)
    A = np.empty((J, full))
    P1 = np.empty((J, full))
    X = np.empty(J)
    Y = np.empty(J)
    xb = np.zeros(J, dtype=np.int64)
    xe = np.zeros(J, dtype=np.bool_)
    xp = np.zeros(J, dtype=np.int64)
    yb = np.zeros(J, dtype=np.int64)
    yp = np.zeros(J, dtype=np.int64)
    x_block = np.zeros((H1, J, full), dtype=np.int64)
    x_exact = np.zeros((H1, J, full), dtype=np.bool_)
    x_prev = np.zeros((H1, J, full), dtype=np.int64)
    a_block = np.zeros((H1, J, full), dtype=np.int64)
    a_prev = np.zeros((H1, J, full), dtype=np.int64)
    f_count = np.zeros((H1, full), dtype=np.int64)
    log_z = np.zeros(E)
    stack_set = np.zeros(n, dtype=np.int64)
    stack_h = np.zeros(n, dtype=np.int64)
    for e in range(E):
        start_heights(F, lower)
        for h in range(1, H1):
            for S in range(full):
                if h >= 2:
                    lower[S] = _join(lower[S], F[h - 2, S], total)
                G0[S] = lower[S] - W[e, h, S]
                G1[S] = F[h - 1, S] - W[e, h, S]
            for c in range(J):
                A[c, 0] = 0.0 if c == 0 else neg
                P1[c, 0] = neg
            A[0, 0] = neg  # the empty set is no block
            for S in range(1, full):
                F[h, S] = neg
                whole = _join(G0[S], G1[S], total)
                A[0, S] = whole
                P1[0, S] = G1[S]
                for c in range(1, J):
                    A[c, S] = neg
                    P1[c, S] = neg
                if (S & (S - 1)) == 0:
                    continue
                for c in range(J):
                    X[c] = neg
                    Y[c] = neg
                low = S & -S
                rest = S ^ low
                sub = (rest - 1) & rest
                while True:  # first block low|sub, the rest R non-empty
                    B = low | sub
                    R = S ^ B
                    wb = _join(G0[B], G1[B], total)
                    for c in range(1, J):
                        for prev in (c - 1, c):
                            if prev == c and c != J - 1:
                                continue
                            first = G1[B] + A[prev, R]
                            later = G0[B] + P1[prev, R]
                            if total:
                                X[c] = _join(X[c], _join(first, later, True), True)
                                Y[c] = _join(Y[c], wb + A[prev, R], True)
                                continue
                            if first > X[c]:
                                X[c], xb[c], xe[c], xp[c] = first, B, True, prev
                            if later > X[c]:
                                X[c], xb[c], xe[c], xp[c] = later, B, False, prev
                            if wb + A[prev, R] > Y[c]:
                                Y[c], yb[c], yp[c] = wb + A[prev, R], B, prev
                    if sub == 0:
                        break
                    sub = (sub - 1) & rest
                best = neg
                for c in range(1, J):
                    A[c, S] = Y[c]
                    P1[c, S] = X[c]
                    x_block[h, c, S], x_exact[h, c, S], x_prev[h, c, S] = xb[c], xe[c], xp[c]
                    a_block[h, c, S], a_prev[h, c, S] = yb[c], yp[c]
                    value = X[c] + kids[e, S, c - 1]
                    if total:
                        best = _join(best, value, True)
                    elif value > best:
                        best, f_count[h, S] = value, c
                F[h, S] = W[e, h, S] + nodes[e, S] + best
        top = full - 1
        if total:
            acc = neg
            for h in range(1, H1):
                acc = _join(acc, F[h, top], True)
            log_z[e] = acc
            continue
        root_h = 1
        for h in range(2, H1):
            if F[h, top] > F[root_h, top]:
                root_h = h
        if F[root_h, top] == neg:  # no tree scores above -inf: every one is as good
            fill_pairs(out[e], top, 1, n)
            continue
        # Backtrack: each stack entry is an inner node (set, height); its blocks are walked
        # from F's X split, then in A- or P1-mode, with the count state of the rest.
        stack_set[0], stack_h[0] = top, root_h
        depth = 1
        while depth > 0:
            depth -= 1
            S, h = stack_set[depth], stack_h[depth]
            fill_pairs(out[e], S, h, n)
            c = f_count[h, S]
            B = x_block[h, c, S]
            mode_a = x_exact[h, c, S]
            block_h = h - 1 if mode_a else _best_lower(F, B, h)
            c = x_prev[h, c, S]
            rest = S ^ B
            while True:
                if B & (B - 1):
                    stack_set[depth], stack_h[depth] = B, block_h
                    depth += 1
                if rest == 0:
                    break
                if mode_a:
                    if c == 0:
                        B = rest
                    else:
                        B = a_block[h, c, rest]
                        c = a_prev[h, c, rest]
                    low_h = _best_lower(F, B, h) if h >= 2 else -1
                    g0 = F[low_h, B] if low_h >= 0 else neg
                    block_h = h - 1 if F[h - 1, B] >= g0 else low_h
                elif c == 0:
                    B, block_h = rest, h - 1
                else:
                    B = x_block[h, c, rest]
                    if x_exact[h, c, rest]:
                        block_h = h - 1
                        mode_a = True
                    else:
                        block_h = _best_lower(F, B, h)
                    c = x_prev[h, c, rest]
                rest = rest ^ B
    return log_z
