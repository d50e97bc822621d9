"""Inputs of decoding: per-pair log-scores from probabilities, node scores, and the inner
nodes of an LCAG as leaf-set bit masks (bit ``i`` = leaf ``i``)."""

from __future__ import annotations

import numpy as np

from lcag.errors import InvalidInputError

__all__ = [
    "argmax_classes",
    "gather_node_scores",
    "inner_node_masks",
    "pair_log_scores",
    "prepare_node_scores",
    "prepare_scores",
    "subset_members",
]

MAX_NODE_SCORE_LEAVES = 24  # node scores hold 2^L floats per event


def pair_log_scores(probs: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Symmetrised pair log-probabilities ``s (..., L, L, C)`` (see the module docstring)."""
    logp = np.log(np.maximum(np.asarray(probs, dtype=np.float64), eps))
    return 0.5 * (logp + np.swapaxes(logp, -2, -3))


def prepare_scores(
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


def argmax_classes(scores: np.ndarray, mask: np.ndarray, offset: int = 1) -> np.ndarray:
    L = mask.shape[1]
    out = scores.argmax(axis=-1).astype(np.int64) + offset
    out[:, np.arange(L), np.arange(L)] = 0
    out[~(mask[:, :, None] & mask[:, None, :])] = -1
    return out


def prepare_node_scores(
    node_scores: np.ndarray | None, n_events: int, n_leaves: int, single: bool
) -> np.ndarray | None:
    """Check node scores; return them as ``(N, 2^L)`` float64 (or ``None``).

    Entries may be ``-inf`` (a leaf set that must not be a node) but not NaN or ``+inf``.
    """
    if node_scores is None:
        return None
    arr = np.asarray(node_scores, dtype=np.float64)
    expected = (1 << n_leaves,) if single else (n_events, 1 << n_leaves)
    if n_leaves > MAX_NODE_SCORE_LEAVES or arr.shape != expected:
        raise InvalidInputError(
            f"node_scores: expected shape {expected} (2^L entries per event, indexed by leaf "
            f"bit mask, L <= {MAX_NODE_SCORE_LEAVES}), got {arr.shape}"
        )
    bad = np.isnan(arr) | (arr == np.inf)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(f"node_scores{list(where)} = {arr[where]}: must be < +inf")
    return arr[None] if single else arr


def prepare_children_scores(
    children_scores: np.ndarray | None,
    mask: np.ndarray,
    single: bool,
    exact_limit: int,
    background: bool,
) -> np.ndarray | None:
    """Check children-count scores; return them as ``(N, 2^L, K)`` float64 (or ``None``).

    They need exact decoding: every event at most ``exact_limit`` real leaves, no
    background. Entries may be ``-inf`` (a number of children a set must not have).
    """
    if children_scores is None:
        return None
    N, L = mask.shape
    arr = np.asarray(children_scores, dtype=np.float64)
    if arr.ndim != (2 if single else 3) or arr.shape[-2:-1] != (1 << L,) or arr.shape[-1] < 1:
        expected = "(2^L, K)" if single else "(N, 2^L, K)"
        raise InvalidInputError(
            f"children_scores: expected shape {expected} with 2^L = {1 << L}"
            f"{'' if single else f' and N = {N}'}, got {arr.shape}"
        )
    if not single and arr.shape[0] != N:
        raise InvalidInputError(f"children_scores: {arr.shape[0]} events, probs have {N}")
    bad = np.isnan(arr) | (arr == np.inf)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(f"children_scores{list(where)} = {arr[where]}: must be < +inf")
    most = int(mask.sum(axis=1).max(initial=0))
    if background or most > exact_limit:
        raise InvalidInputError(
            "children_scores: exact decoding only (no background, at most "
            f"{exact_limit} leaves per event here; an event has {most})"
        )
    return arr[None] if single else arr


def gather_children_scores(
    kids: np.ndarray, events: np.ndarray, leaf_idx: np.ndarray
) -> np.ndarray:
    """Children-count scores ``(E, 2^n, K)`` over the gathered leaves ``leaf_idx (E, n)``
    (as :func:`gather_node_scores`, column by column)."""
    return np.stack(
        [gather_node_scores(kids[..., c], events, leaf_idx) for c in range(kids.shape[-1])],
        axis=-1,
    )


def subset_members(n: int) -> np.ndarray:
    """``(2^n, n)`` 0/1 int64: row ``S`` marks the leaves in bit mask ``S``."""
    return (np.arange(1 << n)[:, None] >> np.arange(n)[None, :]) & 1


def gather_node_scores(
    nodes: np.ndarray | None, events: np.ndarray, leaf_idx: np.ndarray
) -> np.ndarray:
    """Node scores ``(E, 2^n)`` over the gathered leaves ``leaf_idx (E, n)`` of ``events``.

    Sub-mask ``s`` (bit ``k`` = the event's ``k``-th real leaf) reads the event's entry for the
    leaf set ``{leaf_idx[k] : k in s}``; zeros when there are no node scores.
    """
    E, n = leaf_idx.shape
    if nodes is None:
        return np.zeros((E, 1 << n))
    original = subset_members(n) @ (np.int64(1) << leaf_idx.astype(np.int64)).T  # (2^n, E)
    return nodes[events[:, None], original.T]


def inner_node_masks(lcag: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """The inner nodes (root included) of each event's LCAG as leaf-set bit masks.

    Args:
        lcag: ``(N, L, L)`` valid LCAGs (padding ignored; pairs of class 0 off the diagonal
            hold a leaf outside the tree).
        mask: ``(N, L)`` bool, real leaves.

    Returns:
        Per event, an int64 array of the distinct bit masks of its inner nodes: the node of
        height ``h`` above leaf ``i`` holds the leaves ``j`` with ``lcag[i, j] <= h``.
    """
    events, bits = inner_node_bits(lcag, mask)
    return [np.unique(bits[events == e]) for e in range(lcag.shape[0])]


def inner_node_bits(lcag: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inner nodes of every event as flat ``(event index, bit mask)`` arrays (a node
    appears once per leaf under it and height; repeats are harmless for indexing).

    Args:
        lcag: ``(N, L, L)`` valid LCAGs (padding ignored).
        mask: ``(N, L)`` bool, real leaves.
    """
    N, L, _ = lcag.shape
    heights = np.arange(1, max(int(lcag.max(initial=0)), 0) + 1)
    if not heights.size:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pair = mask[:, :, None] & mask[:, None, :] & (lcag > 0)  # class 0: a leaf outside the tree
    M = np.where(pair, lcag, np.iinfo(np.int64).max)
    M[:, np.arange(L), np.arange(L)] = np.where(mask, 0, np.iinfo(np.int64).max)
    below = M[:, :, None, :] <= heights[None, None, :, None]  # (N, L, H, L)
    bits = below.astype(np.int64) @ (np.int64(1) << np.arange(L, dtype=np.int64))  # (N, L, H)
    exists = (M[:, :, None, :] == heights[None, None, :, None]).any(-1) & mask[:, :, None]
    events = np.broadcast_to(np.arange(N)[:, None, None], exists.shape)
    return events[exists], bits[exists]
