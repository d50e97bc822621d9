"""Exact decoding of LCAS (stage) matrices: the maximum-score stage labelling of a tree.

A valid LCAS (:mod:`lcag.stages`) is the labelling of a tree whose stages fall strictly from
parent to child, with no constraint on by how much (unlike LCAG heights, where a node of
height ``h`` has a child of height ``h - 1``). ``F(s, S)``, the best subtree over leaf set
``S`` with root stage ``s``, is ``W(s, S) + node(S)`` plus the best split of ``S`` into >= 2
blocks, each a leaf or a subtree of stage < ``s``, minus the blocks' own ``W(s, B)`` (their
inner pairs take their own stages). Fixing the block that holds the lowest leaf enumerates
each split once: ``O(3^L * K)`` per event for ``K`` stages. Every output is a valid LCAS.
"""

from __future__ import annotations

import numba
import numpy as np

from lcag.decode.background import background_leaves, zero_outside
from lcag.decode.exact import background_sums, best_top, chunks, subset_sums
from lcag.decode.scores import gather_node_scores, prepare_node_scores, prepare_scores

__all__ = ["LCAS_MAX_LEAVES", "decode_lcas", "subdominant_lcas"]

LCAS_MAX_LEAVES = 16  # 3^16 splits per stage and event: about a second compiled


def decode_lcas(
    probs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    node_scores: np.ndarray | None = None,
    background: bool = False,
    eps: float = 1e-12,
) -> np.ndarray:
    """The most probable valid LCAS for each event (exact).

    Args:
        probs: per-pair stage probabilities ``(L, L, K + 1)`` or ``(N, L, L, K + 1)``, class
            0 for the diagonal and background (ignored, as in :func:`lcag.decode`, unless
            ``background``).
        mask: ``(N, L)`` bool, ``True`` for real leaves (batch only).
        node_scores: ``(2^L,)`` or ``(N, 2^L)`` scores added once per inner node (root
            included).
        background: class 0 means "not in the tree" (:mod:`lcag.decode.background`): the
            tree may leave leaves out, whose pairs are 0.
        eps: floor applied to probabilities before the logarithm.

    Returns:
        int64 LCAS ``(L, L)`` or ``(N, L, L)``: diagonal 0, padding -1, stages 1..K (0 for
        the pairs of leaves left out).

    Events of more than :data:`LCAS_MAX_LEAVES` real leaves are decoded approximately: the
    per-pair most probable stages, lowered to their subdominant ultrametric
    (:func:`subdominant_lcas`), which is valid; node scores do not enter there.

    Raises:
        InvalidInputError: bad shapes or values.
    """
    scores, mask, single = prepare_scores(probs, mask, eps, keep_class_zero=True)
    zero, scores = scores[..., 0], scores[..., 1:]
    N, L = mask.shape
    nodes = prepare_node_scores(node_scores, N, L, single)
    tree = mask
    if background:
        large = mask.sum(axis=1) > LCAS_MAX_LEAVES
        tree = mask & ~background_leaves(zero, scores, mask, large)
    counts = tree.sum(axis=1)
    out = np.full((N, L, L), -1, dtype=np.int64)
    for n_real in np.unique(counts).tolist():
        events = np.flatnonzero(counts == n_real)
        if n_real == 0:
            continue
        leaf_idx = np.argsort(~tree[events], axis=1, kind="stable")[:, :n_real]
        gather = events[:, None, None], leaf_idx[:, :, None], leaf_idx[:, None, :]
        sub = scores[gather]
        if n_real == 1:
            decoded = np.zeros((len(events), 1, 1), dtype=np.int64)
        elif n_real > LCAS_MAX_LEAVES:
            decoded = subdominant_lcas(sub.argmax(axis=-1) + 1)
        else:
            node = gather_node_scores(nodes, events, leaf_idx)
            free = zero[gather] if background else None
            decoded = np.zeros((len(events), n_real, n_real), dtype=np.int64)
            for start, stop in chunks(len(events), n_real, sub.shape[-1]):
                _lcas_kernel(
                    subset_sums(sub[start:stop]),
                    node[start:stop],
                    n_real,
                    decoded[start:stop],
                    *background_sums(free, start, stop, n_real),
                )
        out[gather] = decoded
    out = zero_outside(out, mask)
    return out[0] if single else out


def subdominant_lcas(stages: np.ndarray) -> np.ndarray:
    """The largest valid LCAS below a symmetric stage matrix ``(E, n, n)`` (>= 1 off the
    diagonal): ``U[i, j]`` = the least, over paths from ``i`` to ``j``, of the path's largest
    stage (single linkage), an ultrametric; entries already consistent are kept.

    Returns:
        ``(E, n, n)`` int64 valid LCAS matrices.
    """
    u = np.maximum(stages, np.swapaxes(stages, -1, -2)).astype(np.int64)
    n = u.shape[-1]
    for k in range(n):  # minimax Floyd-Warshall
        u = np.minimum(u, np.maximum(u[:, :, k, None], u[:, None, k, :]))
    u[:, np.arange(n), np.arange(n)] = 0
    return u


@numba.njit(cache=True, nogil=True)
def _lcas_kernel(
    W: np.ndarray, nodes: np.ndarray, n: int, out: np.ndarray, W0: np.ndarray, free: bool
) -> None:  # pragma: no cover - compiled
    """Subset dynamic programme per event; writes the LCAS into ``out (E, n, n)``.

    ``below[S]``: best subtree on ``S`` of stage < s (0 for a leaf); ``G[B] = below[B] -
    W[s, B]``; ``A[S]``: best split of ``S`` into >= 1 blocks; ``F[s, S] = W[s, S] + nodes[S]``
    plus the best split into >= 2 blocks. The root is :func:`lcag.decode.exact.best_top`'s.
    """
    E, K1, full = W.shape
    neg = -np.inf
    F = np.empty((K1, full))
    below = np.empty(full)
    G = np.empty(full)
    A = np.empty(full)
    f_block = np.zeros((K1, full), dtype=np.int64)  # first block of F's best split
    a_block = np.zeros((K1, full), dtype=np.int64)  # first block of A's best split
    stack_set = np.zeros(n, dtype=np.int64)
    stack_s = np.zeros(n, dtype=np.int64)
    for e in range(E):
        for S in range(full):
            single = S != 0 and (S & (S - 1)) == 0
            F[0, S] = 0.0 if single else neg
            below[S] = F[0, S]
        for s in range(1, K1):
            if s >= 2:
                for S in range(full):
                    below[S] = max(below[S], F[s - 1, S])
            for S in range(full):
                G[S] = below[S] - W[e, s, S]
            A[0] = 0.0
            for S in range(1, full):
                F[s, S] = neg
                if (S & (S - 1)) == 0:
                    A[S] = G[S]
                    a_block[s, S] = S
                    continue
                low = S & -S
                rest = S ^ low
                best = neg
                best_b = 0
                sub = (rest - 1) & rest
                while True:  # blocks low|sub for every sub-mask of rest except rest
                    B = low | sub
                    value = G[B] + A[S ^ B]
                    if value > best:
                        best, best_b = value, B
                    if sub == 0:
                        break
                    sub = (sub - 1) & rest
                f_block[s, S] = best_b
                F[s, S] = W[e, s, S] + nodes[e, S] + best
                if G[S] >= best:
                    A[S], a_block[s, S] = G[S], S
                else:
                    A[S], a_block[s, S] = best, best_b

        top, root_s = best_top(F, W0[e], free)
        stack_set[0], stack_s[0] = top, root_s
        depth = 1
        while depth > 0:  # parents write their pairs first; blocks overwrite their own
            depth -= 1
            S, s = stack_set[depth], stack_s[depth]
            for i in range(n):
                if (S >> i) & 1:
                    for j in range(n):
                        if j != i and (S >> j) & 1:
                            out[e, i, j] = s
            B = f_block[s, S]
            rest = S ^ B
            while True:
                if B & (B - 1):
                    best_t = 1
                    for t in range(2, s):
                        if F[t, B] > F[best_t, B]:
                            best_t = t
                    stack_set[depth], stack_s[depth] = B, best_t
                    depth += 1
                if rest == 0:
                    break
                B = a_block[s, rest]
                rest = rest ^ B
