"""Per-pair class probabilities -> the most probable *valid* LCAG.

A model predicts, for each leaf pair ``(i, j)``, probabilities ``p[i, j, c]`` over LCAG classes
``c = 0..C-1`` (class ``c >= 1`` is "the lowest common ancestor has height c"). The score of a
candidate LCAG ``M`` is the sum over unordered pairs of log-probabilities,

    score(M) = sum_{i < j} s[i, j, M[i, j]],  s[i, j, c] = (log p[i, j, c] + log p[j, i, c]) / 2,

which is the plain sum of ``log p[i, j, M[i, j]]`` when ``p`` is symmetric. Probabilities are
floored at ``eps`` before the logarithm.

Methods:

- ``exact`` (default up to ``exact_max_leaves = 10`` leaves): the maximum-score valid LCAG,
  found by dynamic programming over leaf subsets and heights. ``F(S, h)``, the best subtree
  over leaf set ``S`` rooted at height ``h``, splits ``S`` into >= 2 blocks of height < h with at
  least one block of height exactly ``h - 1``; fixing the block that holds the lowest leaf of
  ``S`` enumerates each partition once, ``O(3^L * C)`` per event, vectorised over events.
- ``approx`` (above ``exact_max_leaves``): average-linkage clustering of the expected height
  ``E[c]`` gives a binary dendrogram; a dynamic programme over that dendrogram then chooses
  which of its merges to keep as decays and at which heights, exactly maximising the score
  over every valid tree whose clusters are clusters of the dendrogram. It is exact whenever
  the true tree's clusters appear in the dendrogram (always for one-hot probabilities), costs
  ``O(L^3 + L C)`` per event, and always returns a valid LCAG.
- ``argmax``: each pair's most probable class on its own; fast, and may be invalid.

Outputs are int64 ``(L, L)`` (or ``(N, L, L)``) with 0 on the diagonal and -1 on padding.
"""

from __future__ import annotations

from typing import Literal

import numba
import numpy as np

from lcag.errors import InvalidInputError

__all__ = ["decode", "decode_argmax", "pair_log_scores", "tree_score"]

Method = Literal["auto", "exact", "approx", "argmax"]
EXACT_MAX_LEAVES = 10
_NEG = -np.inf
_CHUNK_FLOATS = 1 << 23  # exact decoding handles events in chunks of this many table entries


# ------------------------------------------------------------------------------ public API
def decode(
    probs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    method: Method = "auto",
    exact_max_leaves: int = EXACT_MAX_LEAVES,
    eps: float = 1e-12,
) -> np.ndarray:
    """The most probable valid LCAG for each event.

    Args:
        probs: per-pair class probabilities ``(L, L, C)``, or a batch ``(N, L, L, C)``.
            The diagonal and padded entries are ignored.
        mask: ``(N, L)`` bool, ``True`` for real leaves (batch only; default all real).
            Real leaves may sit anywhere along the leaf axis.
        method: ``"auto"`` (exact up to ``exact_max_leaves`` real leaves, else approximate),
            ``"exact"``, ``"approx"`` or ``"argmax"``; see the module docstring.
        exact_max_leaves: the largest leaf count ``"auto"`` decodes exactly.
        eps: floor applied to probabilities before the logarithm.

    Returns:
        int64 LCAG ``(L, L)`` or ``(N, L, L)``; diagonal 0, padding -1, heights in 1..C-1.
        Except for ``"argmax"``, every event's matrix is a valid LCAG.
    """
    if method not in ("auto", "exact", "approx", "argmax"):
        raise InvalidInputError(
            f"method: expected 'auto', 'exact', 'approx' or 'argmax', got {method!r}"
        )
    scores, mask, single = _prepare(probs, mask, eps)
    if method == "argmax":
        out = _argmax(scores, mask)
        return out[0] if single else out
    N, L = mask.shape
    out = np.full((N, L, L), -1, dtype=np.int64)
    counts = mask.sum(axis=1)
    for n_real in np.unique(counts).tolist():
        events = np.flatnonzero(counts == n_real)
        # Gather each event's real leaves to the front: (E, n, n, C-1).
        leaf_idx = np.argsort(~mask[events], axis=1, kind="stable")[:, :n_real]
        sub = scores[events[:, None, None], leaf_idx[:, :, None], leaf_idx[:, None, :]]
        if n_real == 0:
            continue
        if n_real == 1:
            decoded = np.zeros((len(events), 1, 1), dtype=np.int64)
        elif method == "exact" or (method == "auto" and n_real <= exact_max_leaves):
            decoded = _decode_exact(sub)
        else:
            decoded = _decode_dendrogram(sub)
        out[events[:, None, None], leaf_idx[:, :, None], leaf_idx[:, None, :]] = decoded
    return out[0] if single else out


def decode_argmax(probs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Each pair's most probable class, symmetrised; ``(L, L)`` or ``(N, L, L)`` int64.

    Class 0 may win off the diagonal and the result need not be a valid LCAG: this is the
    reference that valid-tree decoding is compared against.
    """
    scores, mask, single = _prepare(probs, mask, 1e-12, keep_class_zero=True)
    out = _argmax(scores, mask, offset=0)
    return out[0] if single else out


def pair_log_scores(probs: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Symmetrised pair log-probabilities ``s (..., L, L, C)`` (see the module docstring)."""
    logp = np.log(np.maximum(np.asarray(probs, dtype=np.float64), eps))
    return 0.5 * (logp + np.swapaxes(logp, -2, -3))


def tree_score(
    lcag: np.ndarray, probs: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-12
) -> float | np.ndarray:
    """The score of given LCAG(s) under ``probs``: sum over real pairs ``i < j``.

    Args:
        lcag: ``(L, L)`` or ``(N, L, L)`` integer classes (padding may hold any value).
        probs: ``(L, L, C)`` or ``(N, L, L, C)``.
        mask: ``(N, L)`` bool, ``True`` for real leaves.

    Returns:
        A float, or ``(N,)`` float64 for a batch.
    """
    scores, mask, single = _prepare(probs, mask, eps, keep_class_zero=True)
    M = np.asarray(lcag).reshape(scores.shape[:3])
    L = M.shape[-1]
    upper = np.triu(np.ones((L, L), dtype=bool), 1)[None] & mask[:, :, None] & mask[:, None, :]
    classes = np.clip(M, 0, scores.shape[-1] - 1)
    picked = np.take_along_axis(scores, classes[..., None], axis=-1)[..., 0]
    total = np.where(upper, picked, 0.0).sum(axis=(1, 2))
    return float(total[0]) if single else total


# -------------------------------------------------------------------------- input handling
def _prepare(
    probs: np.ndarray, mask: np.ndarray | None, eps: float, keep_class_zero: bool = False
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate; return scores ``(N, L, L, C')``, mask ``(N, L)`` and whether input was single.

    Without ``keep_class_zero`` the scores drop class 0, so index ``k`` is height ``k + 1``.
    """
    arr = np.asarray(probs)
    single = arr.ndim == 3
    if arr.ndim not in (3, 4) or arr.shape[-3] != arr.shape[-2]:
        raise InvalidInputError(f"probs: expected shape (L, L, C) or (N, L, L, C), got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInputError(f"probs: expected a numeric array, got dtype {arr.dtype}")
    if arr.shape[-1] < 2:
        raise InvalidInputError(
            f"probs: {arr.shape[-1]} class(es); need class 0 plus at least one height (C >= 2)"
        )
    batch = arr[None] if single else arr
    N, L = batch.shape[:2]
    if mask is None:
        mask_arr = np.ones((N, L), dtype=bool)
    else:
        if single:
            raise InvalidInputError("mask: only for a batch (N, L, L, C); a single event has none")
        mask_arr = np.asarray(mask)
        if mask_arr.shape != (N, L) or mask_arr.dtype != bool:
            raise InvalidInputError(
                f"mask: expected bool shape ({N}, {L}), got {mask_arr.dtype} {mask_arr.shape}"
            )
    pairs = mask_arr[:, :, None] & mask_arr[:, None, :] & ~np.eye(L, dtype=bool)
    bad = pairs[..., None] & ~(np.isfinite(batch) & (batch >= 0))
    if bad.any():
        n, i, j, c = (int(x) for x in np.argwhere(bad)[0])
        where = f"[{i}, {j}, {c}]" if single else f"[{n}, {i}, {j}, {c}]"
        raise InvalidInputError(
            f"probs{where} = {batch[n, i, j, c]}: probabilities must be finite and >= 0"
        )
    scores = np.where(pairs[..., None], pair_log_scores(batch, eps), 0.0)  # drop ignored entries
    return (scores if keep_class_zero else scores[..., 1:]), mask_arr, single


def _argmax(scores: np.ndarray, mask: np.ndarray, offset: int = 1) -> np.ndarray:
    L = mask.shape[1]
    out = scores.argmax(axis=-1).astype(np.int64) + offset
    out[:, np.arange(L), np.arange(L)] = 0
    out[~(mask[:, :, None] & mask[:, None, :])] = -1
    return out


# ------------------------------------------------------------------------ exact (subsets)
def _decode_exact(scores: np.ndarray) -> np.ndarray:
    """Exact maximum-score valid LCAG; ``scores (E, n, n, H)`` (index k = height k+1).

    Returns ``(E, n, n)`` int64. Subset sums are vectorised in numpy; the dynamic programme
    over subsets runs compiled, one event at a time.
    """
    E, n, _, H = scores.shape
    out = np.zeros((E, n, n), dtype=np.int64)
    chunk = max(1, _CHUNK_FLOATS // ((H + 1) << n))  # bounds the subset-sum table's memory
    for start in range(0, E, chunk):
        stop = start + chunk
        _exact_kernel(_subset_sums(scores[start:stop]), n, out[start:stop])
    return out


def _subset_sums(scores: np.ndarray) -> np.ndarray:
    """``W (E, H + 1, 2^n)``: ``W[e, h, S]`` sums ``scores (E, n, n, H)`` at height ``h`` over
    the pairs inside leaf set ``S`` (bit ``i`` of ``S`` = leaf ``i``); ``W[:, 0] = 0``."""
    E, n, _, H = scores.shape
    W = np.zeros((E, H + 1, 1 << n))
    members = ((np.arange(1 << n)[:, None] >> np.arange(n)[None, :]) & 1).astype(np.float64)
    for b in range(1, n):
        low = 1 << b  # the subsets of leaves 0..b-1 gain leaf b
        row = np.tensordot(scores[:, b, :b, :], members[:low, :b], ([1], [1]))  # (E, H, low)
        W[:, 1:, low : 2 * low] = W[:, 1:, :low] + row
    return W


@numba.njit(cache=True, nogil=True)
def _exact_kernel(W: np.ndarray, n: int, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Subset dynamic programme for each event; writes the LCAG into ``out (E, n, n)``.

    For height h: G1[B] / G0[B] = best subtree on block B of height exactly h-1 / at most
    h-2, minus W[h, B]; A[S] = best split of S into such blocks; P1[S] = the same with at
    least one block of height h-1; F[h, S] = W[h, S] + best split into >= 2 blocks with one of
    height h-1. Splits fix the block B holding the lowest leaf of S, so each is seen once.
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
        for S in range(full):
            F[0, S] = 0.0 if (S & (S - 1)) == 0 and S != 0 else neg
            lower[S] = neg
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
                F[h, S] = W[e, h, S] + best_x
                if whole >= best_y:
                    A[S], a_block[h, S] = whole, S
                else:
                    A[S], a_block[h, S] = best_y, best_yb
                if G1[S] >= best_x:
                    P1[S], p_whole[h, S] = G1[S], True
                else:
                    P1[S], p_whole[h, S] = best_x, False

        # Backtrack from the best root height; parents are written before their blocks,
        # which then overwrite their own pairs with lower heights.
        top = full - 1
        root_h = 1
        for h in range(2, H1):
            if F[h, top] > F[root_h, top]:
                root_h = h
        depth = 0
        stack_set[0], stack_h[0] = top, root_h
        depth = 1
        while depth > 0:
            depth -= 1
            S, h = stack_set[depth], stack_h[depth]
            for i in range(n):
                if (S >> i) & 1:
                    for j in range(n):
                        if j != i and (S >> j) & 1:
                            out[e, i, j] = h
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


# -------------------------------------------------------------------- approx (dendrogram)
def _decode_dendrogram(scores: np.ndarray) -> np.ndarray:
    """Best valid LCAG among contractions of an average-linkage dendrogram.

    ``scores (E, n, n, H)``, index ``k`` = height ``k + 1``; returns ``(E, n, n)`` int64.
    """
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
        slot_node[events, a] = n + t

    # DP, index h = 0..H (0 unused for inner nodes). For a subtree u inside an ancestor of
    # height Hp: E1[u, Hp] = best with some direct child of height Hp - 1, E0 = all lower.
    nodes = 2 * n - 1
    E0 = np.full((E, nodes, H + 1), _NEG)
    E1 = np.full((E, nodes, H + 1), _NEG)
    K = np.full((E, nodes - n, H + 1), _NEG)  # inner node kept at height h
    E1[:, :n, 1] = 0.0
    E0[:, :n, 2:] = 0.0
    padded_cross = np.concatenate([np.full((E, n - 1, 1), _NEG), cross], axis=2)
    for t in range(n - 1):
        a, b = children[:, t, 0], children[:, t, 1]
        e0a, e1a, e0b, e1b = E0[events, a], E1[events, a], E0[events, b], E1[events, b]
        alla, allb = np.maximum(e0a, e1a), np.maximum(e0b, e1b)
        k = padded_cross[:, t] + np.maximum(e1a + allb, alla + e1b)
        k[:, 0] = _NEG
        K[:, t] = k
        kept_lower = np.full((E, H + 1), _NEG)  # max_{h <= Hp-2} K[h]
        kept_lower[:, 2:] = np.maximum.accumulate(k, axis=1)[:, : H - 1]
        kept_below = np.full((E, H + 1), _NEG)  # K[Hp - 1]
        kept_below[:, 1:] = k[:, :-1]
        E1[:, n + t] = np.maximum(k, kept_below)
        E0[:, n + t] = np.maximum(padded_cross[:, t] + e0a + e0b, kept_lower)
    root_height = K[:, -1].argmax(axis=1)

    out = np.zeros((E, n, n), dtype=np.int64)
    for e in range(E):
        _backtrack_dendrogram(
            e, n, H, children[e], K[e], E0[e], E1[e], padded_cross[e], int(root_height[e]), out[e]
        )
    return out


def _backtrack_dendrogram(
    e: int,
    n: int,
    H: int,
    children: np.ndarray,
    K: np.ndarray,
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
            if K[t, hp] >= (K[t, hp - 1] if hp >= 1 else _NEG):
                state = "K"  # contracted into the ancestor: pairs across get height hp
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
        # state "K": node's cross pairs at hp, children inside height hp, one exact.
        M[np.ix_(leaves[a], leaves[b])] = hp
        M[np.ix_(leaves[b], leaves[a])] = hp
        alla = max(E0[a, hp], E1[a, hp])
        allb = max(E0[b, hp], E1[b, hp])
        if E1[a, hp] + allb >= alla + E1[b, hp]:
            stack += [(a, hp, "E1"), (b, hp, "E0" if E0[b, hp] >= E1[b, hp] else "E1")]
        else:
            stack += [(a, hp, "E0" if E0[a, hp] >= E1[a, hp] else "E1"), (b, hp, "E1")]
