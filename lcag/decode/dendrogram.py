"""Approximate decoding above the exact limit: the best valid LCAG among the contractions of
an average-linkage dendrogram of the expected pair heights.

Average-linkage clustering of ``E[c]`` gives a binary dendrogram; a dynamic programme over it
chooses which merges to keep as decays and at which heights, exactly maximising the score
(pair scores plus the node scores of the kept merges) over every valid tree whose clusters are
clusters of the dendrogram. ``O(L^3 + L C)`` per event, always valid.
"""

from __future__ import annotations

import numpy as np

__all__ = ["decode_dendrogram", "log_partition_dendrogram"]

_NEG = -np.inf


def _cluster(
    scores: np.ndarray, node_bits: np.ndarray | None, nodes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average-linkage merges of each event: ``children (E, n-1, 2)`` (dendrogram node ids,
    leaves ``0..n-1``, merge ``t`` is node ``n + t``), the summed pair scores across each
    merge ``cross (E, n-1, H + 1)`` (index = height, 0 unused) and each merge's node score
    ``node_bonus (E, n-1)``."""
    E, n, _, H = scores.shape
    events = np.arange(E)
    # Expected height under the (renormalised) pair distribution, the clustering distance.
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    dist = (weights * np.arange(1, H + 1)).sum(-1) / weights.sum(-1)
    dist[:, np.arange(n), np.arange(n)] = np.inf
    size = np.ones((E, n))
    slot_node = np.tile(np.arange(n), (E, 1))  # which dendrogram node each slot holds
    cluster_scores = scores.copy()  # (E, slot, slot, H): summed pair scores between clusters
    children = np.zeros((E, n - 1, 2), dtype=np.int64)
    cross = np.zeros((E, n - 1, H))
    bits = None if nodes is None else np.concatenate([node_bits, np.zeros((E, n - 1), np.int64)], 1)
    node_bonus = np.zeros((E, n - 1))
    for t in range(n - 1):
        flat = dist.reshape(E, -1).argmin(axis=1)
        a, b = np.minimum(flat // n, flat % n), np.maximum(flat // n, flat % n)
        children[:, t, 0] = slot_node[events, a]
        children[:, t, 1] = slot_node[events, b]
        cross[:, t] = cluster_scores[events, a, b]
        total = size[events, a] + size[events, b]
        merged = dist[events, a] * size[events, a, None] + dist[events, b] * size[events, b, None]
        merged /= total[:, None]
        dist[events, a] = merged
        dist[events, :, a] = merged
        dist[events, b] = np.inf
        dist[events, :, b] = np.inf
        dist[events, a, a] = np.inf
        size[events, a] = total
        cluster_scores[events, a] += cluster_scores[events, b]
        cluster_scores[events, :, a] += cluster_scores[events, :, b]
        if bits is not None:
            bits[:, n + t] = bits[events, children[:, t, 0]] | bits[events, children[:, t, 1]]
            node_bonus[:, t] = nodes[events, bits[:, n + t]]
        slot_node[events, a] = n + t

    padded_cross = np.concatenate([np.full((E, n - 1, 1), _NEG), cross], axis=2)
    return children, padded_cross, node_bonus


def _recursion(
    children: np.ndarray, cross: np.ndarray, node_bonus: np.ndarray, H: int, plus: np.ufunc
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The dynamic programme over the merges, in the semiring ``(plus, +)``: ``np.maximum``
    for the best tree, ``np.logaddexp`` for the log-partition (every case split is disjoint,
    so each tree is counted once).

    Index ``h = 0..H`` (0 unused for inner nodes). For a subtree ``u`` inside an ancestor of
    height ``Hp``: ``E1[u, Hp]`` has some direct child of height ``Hp - 1``, ``E0`` has all
    lower; ``K[t, h]`` is merge ``t`` kept as a node at height ``h`` (with its node score),
    ``Kc[t, h]`` the same merge contracted into an ancestor of height ``h``.

    Returns:
        ``K, Kc (E, n-1, H + 1)`` and ``E0, E1 (E, 2n-1, H + 1)``.
    """
    E, m, _ = children.shape
    n = m + 1
    events = np.arange(E)
    E0 = np.full((E, 2 * n - 1, H + 1), _NEG)
    E1 = np.full((E, 2 * n - 1, H + 1), _NEG)
    K = np.full((E, n - 1, H + 1), _NEG)
    Kc = np.full((E, n - 1, H + 1), _NEG)
    E1[:, :n, 1] = 0.0
    E0[:, :n, 2:] = 0.0
    for t in range(n - 1):
        a, b = children[:, t, 0], children[:, t, 1]
        e0a, e1a, e0b, e1b = E0[events, a], E1[events, a], E0[events, b], E1[events, b]
        contracted = cross[:, t] + plus(e1a + plus(e0b, e1b), e0a + e1b)  # a exact, or b
        contracted[:, 0] = _NEG
        k = contracted + node_bonus[:, t, None]  # kept: a node, with its node score
        K[:, t], Kc[:, t] = k, contracted
        kept_lower = np.full((E, H + 1), _NEG)  # over h <= Hp - 2 of k[h]
        kept_lower[:, 2:] = plus.accumulate(k, axis=1)[:, : H - 1]
        kept_below = np.full((E, H + 1), _NEG)  # k[Hp - 1]
        kept_below[:, 1:] = k[:, :-1]
        E1[:, n + t] = plus(contracted, kept_below)
        E0[:, n + t] = plus(cross[:, t] + e0a + e0b, kept_lower)
    return K, Kc, E0, E1


def decode_dendrogram(
    scores: np.ndarray, node_bits: np.ndarray | None = None, nodes: np.ndarray | None = None
) -> np.ndarray:
    """Best valid LCAG among contractions of an average-linkage dendrogram.

    Args:
        scores: ``(E, n, n, H)`` pair log-scores, index ``k`` = height ``k + 1``.
        node_bits: ``(E, n)`` int64, the bit of each gathered leaf in ``nodes``' indexing.
        nodes: ``(N, 2^L)`` node scores by leaf bit mask, added for each kept merge (and the
            root); rows are this call's events in order.

    Returns:
        ``(E, n, n)`` int64.
    """
    E, n, _, H = scores.shape
    children, padded_cross, node_bonus = _cluster(scores, node_bits, nodes)
    K, Kc, E0, E1 = _recursion(children, padded_cross, node_bonus, H, np.maximum)
    root_height = K[:, -1].argmax(axis=1)

    out = np.zeros((E, n, n), dtype=np.int64)
    for e in range(E):
        _backtrack_dendrogram(
            e, n, children[e], K[e], Kc[e], E0[e], E1[e], padded_cross[e], int(root_height[e]),
            out[e],
        )  # fmt: skip
    return out


def _backtrack_dendrogram(
    e: int,
    n: int,
    children: np.ndarray,
    K: np.ndarray,
    Kc: np.ndarray,
    E0: np.ndarray,
    E1: np.ndarray,
    cross: np.ndarray,
    root_h: int,
    M: np.ndarray,
) -> None:
    """Assign each dendrogram merge its height (kept or inherited) and fill ``M (n, n)``."""
    leaves: dict[int, list[int]] = {i: [i] for i in range(n)}
    for t in range(n - 1):
        leaves[n + t] = leaves[int(children[t, 0])] + leaves[int(children[t, 1])]

    # (node, Hp, state): state "K" = kept at height Hp; "E1"/"E0" = inside an ancestor of
    # height Hp, needing (E1) or forbidding (E0) a direct child of height Hp - 1.
    stack = [(2 * n - 2, root_h, "K")]
    while stack:
        node, hp, state = stack.pop()
        if node < n:
            continue
        t = node - n
        a, b = int(children[t, 0]), int(children[t, 1])
        if state == "E1":
            if Kc[t, hp] >= (K[t, hp - 1] if hp >= 1 else _NEG):
                state = "C"  # contracted into the ancestor: pairs across get height hp
            else:
                hp, state = hp - 1, "K"
        elif state == "E0":
            contracted = cross[t, hp] + E0[a, hp] + E0[b, hp]
            lower = K[t, : hp - 1]
            if lower.size and lower.max() > contracted:
                hp, state = int(lower.argmax()), "K"
            else:
                M[np.ix_(leaves[a], leaves[b])] = hp
                M[np.ix_(leaves[b], leaves[a])] = hp
                stack += [(a, hp, "E0"), (b, hp, "E0")]
                continue
        # state "K" (kept) or "C" (contracted): node's cross pairs at hp, children inside
        # height hp, one of them exactly hp - 1.
        M[np.ix_(leaves[a], leaves[b])] = hp
        M[np.ix_(leaves[b], leaves[a])] = hp
        alla = max(E0[a, hp], E1[a, hp])
        allb = max(E0[b, hp], E1[b, hp])
        if E1[a, hp] + allb >= alla + E1[b, hp]:
            stack += [(a, hp, "E1"), (b, hp, "E0" if E0[b, hp] >= E1[b, hp] else "E1")]
        else:
            stack += [(a, hp, "E0" if E0[a, hp] >= E1[a, hp] else "E1"), (b, hp, "E1")]


def log_partition_dendrogram(
    scores: np.ndarray, node_bits: np.ndarray | None = None, nodes: np.ndarray | None = None
) -> np.ndarray:
    """``log sum_T exp(score(T))`` over the valid LCAGs ``T`` whose clusters are clusters of the
    average-linkage dendrogram (the trees :func:`decode_dendrogram` chooses among): its
    recursion in log-sum-exp form, each tree counted once (a merge is kept as a node at its
    own height, or contracted into the nearest kept ancestor; "at least one child of height
    ``h - 1``" is split into disjoint cases). A lower bound on the log-partition over all
    trees, equal to it when every tree of non-negligible weight is in the dendrogram.

    Args: as :func:`decode_dendrogram`.

    Returns:
        ``(E,)`` float64.
    """
    H = scores.shape[-1]
    children, cross, node_bonus = _cluster(scores, node_bits, nodes)
    K = _recursion(children, cross, node_bonus, H, np.logaddexp)[0]
    return np.logaddexp.reduce(K[:, -1, 1:], axis=1)  # the root is kept, at any height
