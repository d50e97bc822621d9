"""Decay trees <-> LCAG / LCAS matrices.

``LCAG[i, j]`` is the height of the lowest common ancestor of leaves ``i`` and ``j`` (leaves at
height 0, an inner node one above its tallest child). A matrix is a valid LCAG exactly when it
is a symmetric integer ultrametric with a zero diagonal, off-diagonal entries >= 1, and every
ancestor of height ``h >= 2`` has a child of height ``h - 1``. Such a matrix and its tree
determine each other.

Single matrices are ``(L, L)``; batches are ``(N, L, L)`` with an optional leaf mask
``(N, L)`` (``True`` for real leaves). Batched validity checks are vectorised over events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from lcag.errors import InvalidInputError, InvalidLCAGError
from lcag.tree import DecayTree

__all__ = [
    "canonical_form",
    "canonical_order",
    "is_valid_lcag",
    "lcag_to_tree",
    "lcag_to_trees",
    "permute",
    "tree_to_lcag",
    "tree_to_lcas",
    "trees_to_lcag",
    "validate_lcag",
]

_E = InvalidLCAGError
_CHUNK_ELEMENTS = 1 << 22  # ultrametric check works on (chunk, L, L, L) blocks of this size


# --------------------------------------------------------------------------- tree -> matrix
def tree_to_lcag(tree: DecayTree) -> np.ndarray:
    """The LCAG matrix ``(L, L)`` int64 of ``tree``: height of each pair's lowest ancestor."""
    return _pairwise_by_ancestor(tree, lambda node: int(tree.heights[node]))


def tree_to_lcas(
    tree: DecayTree,
    stage_of: Callable[[int], int] | Mapping[str | int, int],
) -> np.ndarray:
    """The LCAS matrix ``(L, L)`` int64: each pair labelled by its common ancestor's stage.

    Args:
        tree: the decay tree.
        stage_of: the stage (a class label >= 1) of an inner node: a callable taking the node
            index, or a mapping keyed by particle name (tried first) or PDG id.

    Raises:
        InvalidInputError: a stage is missing from the mapping or is below 1.
    """
    if isinstance(stage_of, Mapping):
        mapping = stage_of

        def lookup(node: int) -> int:
            name = tree.names[node] if tree.names is not None else None
            pdg = int(tree.pdg_ids[node]) if tree.pdg_ids is not None else None
            for key in (name, pdg):
                if key is not None and key in mapping:
                    return int(mapping[key])
            raise InvalidInputError(
                f"stage_of: no stage for node {node} (name {name!r}, pdg id {pdg})"
            )

        stage = lookup
    else:
        stage = stage_of

    def checked(node: int) -> int:
        value = int(stage(node))
        if value < 1:
            raise InvalidInputError(f"stage_of: node {node} has stage {value}; stages start at 1")
        return value

    return _pairwise_by_ancestor(tree, checked)


def trees_to_lcag(trees: Sequence[DecayTree]) -> tuple[np.ndarray, np.ndarray]:
    """Stack the LCAGs of several trees, padded to the largest leaf count.

    Returns:
        ``matrices (N, L, L)`` int64 with ``-1`` on padded rows and columns, and
        ``mask (N, L)`` bool, ``True`` for real leaves.
    """
    if not trees:
        raise InvalidInputError("trees: expected at least one tree")
    size = max(t.n_leaves for t in trees)
    out = np.full((len(trees), size, size), -1, dtype=np.int64)
    mask = np.zeros((len(trees), size), dtype=bool)
    for k, tree in enumerate(trees):
        n = tree.n_leaves
        out[k, :n, :n] = tree_to_lcag(tree)
        mask[k, :n] = True
    return out, mask


def _pairwise_by_ancestor(tree: DecayTree, value: Callable[[int], int]) -> np.ndarray:
    """Fill ``(L, L)`` with ``value(lca(i, j))``; each pair is written exactly once."""
    n_leaves = tree.n_leaves
    out = np.zeros((n_leaves, n_leaves), dtype=np.int64)
    below: dict[int, np.ndarray] = {leaf: np.array([leaf]) for leaf in tree.leaves}
    for node in reversed(list(tree.preorder())):
        if node < n_leaves:
            continue
        groups = [below.pop(child) for child in tree.children(node)]
        node_value = value(node)
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                out[np.ix_(groups[a], groups[b])] = node_value
                out[np.ix_(groups[b], groups[a])] = node_value
        below[node] = np.concatenate(groups)
    return out


# --------------------------------------------------------------------------- validation
def validate_lcag(matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Check that ``matrix (L, L)`` is a valid LCAG and return it as int64.

    Raises:
        InvalidLCAGError: naming the first offending row or pair and the reason; the
            ``reason`` attribute is one of the ``InvalidLCAGError`` constants, checked in
            this order: not square, non-integer, non-zero diagonal, off-diagonal below 1,
            asymmetric, not an ultrametric, level gap.
    """
    arr = np.asarray(matrix)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise _E(_E.NOT_SQUARE, (), f"got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise _E(_E.NON_INTEGER, (), f"got dtype {arr.dtype}")
    for reason, where_map in _violation_maps(arr[None], np.ones((1, arr.shape[0]), dtype=bool)):
        hits = np.argwhere(where_map[0])
        if hits.size:
            raise _describe(reason, arr, tuple(int(x) for x in hits[0]))
    return arr.astype(np.int64)


def is_valid_lcag(
    matrix: np.ndarray | Sequence[Sequence[float]], mask: np.ndarray | None = None
) -> bool | np.ndarray:
    """Whether ``matrix`` is a valid LCAG.

    Args:
        matrix: ``(L, L)``, or a batch ``(N, L, L)``.
        mask: for a batch, ``(N, L)`` bool marking real leaves (default: all real). Padded
            rows and columns are ignored.

    Returns:
        A bool for one matrix, an ``(N,)`` bool array for a batch (vectorised over events).
    """
    arr = np.asarray(matrix)
    if arr.ndim == 2:
        try:
            validate_lcag(arr)
        except InvalidLCAGError:
            return False
        return True
    batch, mask = _check_batch(arr, mask)
    valid = mask.any(axis=1)
    for _, where_map in _violation_maps(batch, mask):
        valid &= ~where_map.reshape(len(batch), -1).any(axis=1)
    return valid


def _violation_maps(M: np.ndarray, mask: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Per-reason boolean maps ``(N, L, L)`` of offending entries, in reporting order.

    Each map is only meaningful where the earlier reasons found nothing, which is how
    :func:`validate_lcag` reads them; a batch is valid where all maps are empty.
    """
    N, L, _ = M.shape
    pair = mask[:, :, None] & mask[:, None, :]
    eye = np.eye(L, dtype=bool)[None]
    off = pair & ~eye
    values = M.astype(np.float64)
    maps: list[tuple[str, np.ndarray]] = []

    finite = np.isfinite(values)
    integral = finite & (values == np.round(np.where(finite, values, 0)))
    maps.append((_E.NON_INTEGER, pair & ~integral))
    maps.append((_E.NON_ZERO_DIAGONAL, pair & eye & (values != 0)))
    maps.append((_E.NON_POSITIVE, off & (values < 1)))
    maps.append((_E.ASYMMETRIC, pair & (values != np.swapaxes(values, 1, 2))))

    # Ultrametric: M[i, j] <= min_k max(M[i, k], M[k, j]), k over real leaves.
    padded = np.where(pair, values, np.inf)
    minimax = np.empty_like(padded)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, L**3))
    for start in range(0, N, chunk):
        block = padded[start : start + chunk]
        minimax[start : start + chunk] = np.maximum(block[:, :, :, None], block[:, None, :, :]).min(
            axis=2
        )
    maps.append((_E.NOT_ULTRAMETRIC, off & (values > minimax)))

    # Level gap: the ancestor of leaf i at height h >= 2 needs a leaf k below it (M[i,k] <= h)
    # whose row holds h - 1, i.e. a pair joined exactly one level lower.
    ints = np.where(pair & finite, np.clip(values, -1, L), -1).astype(np.int64)
    top = min(int(ints.max(initial=0)), L - 1)
    gap = off & (ints > L - 1)  # L leaves reach at most height L - 1
    if top >= 2:
        in_row = np.zeros((N, L, top + 1), dtype=bool)  # in_row[n, k, v]: row k holds value v
        np.put_along_axis(in_row, np.clip(ints, 0, top), True, axis=2)
        ok = np.ones((N, L, top + 1), dtype=bool)
        for h in range(2, top + 1):
            below = pair & (ints <= h)
            ok[:, :, h] = (below & in_row[:, None, :, h - 1]).any(axis=2)
        gap |= off & (ints >= 2) & ~np.take_along_axis(ok, np.clip(ints, 0, top), axis=2)
    maps.append((_E.LEVEL_GAP, gap))
    return maps


def _describe(reason: str, M: np.ndarray, where: tuple[int, int]) -> InvalidLCAGError:
    i, j = where
    value = M[i, j]
    if reason == _E.NON_ZERO_DIAGONAL:
        return _E(reason, (i,), f"row {i}: M[{i}, {i}] = {value}, expected 0")
    if reason == _E.ASYMMETRIC:
        detail = f"pair ({i}, {j}): M[{i}, {j}] = {value} but M[{j}, {i}] = {M[j, i]}"
        return _E(reason, (i, j), detail)
    if reason == _E.NOT_ULTRAMETRIC:
        k = int(np.argmin(np.maximum(M[i, :], M[:, j])))
        return _E(
            reason,
            (i, j),
            f"pair ({i}, {j}): M[{i}, {j}] = {value} exceeds max(M[{i}, {k}], M[{k}, {j}]) = "
            f"max({M[i, k]}, {M[k, j]})",
        )
    if reason == _E.LEVEL_GAP:
        members = np.flatnonzero(M[i] <= value).tolist()
        return _E(
            reason,
            (i, j),
            f"pair ({i}, {j}): their ancestor at level {value} (leaves {members}) has no child "
            f"at level {int(value) - 1}",
        )
    what = {_E.NON_INTEGER: "is not an integer", _E.NON_POSITIVE: "is below 1"}[reason]
    return _E(reason, (i, j), f"pair ({i}, {j}): M[{i}, {j}] = {value} {what}")


# --------------------------------------------------------------------------- matrix -> tree
def lcag_to_tree(matrix: np.ndarray | Sequence[Sequence[float]]) -> DecayTree:
    """The decay tree ``tree_to_lcag`` maps to ``matrix (L, L)``.

    Inner nodes are numbered by height, then by their smallest leaf.

    Raises:
        InvalidLCAGError: ``matrix`` is not a valid LCAG (see :func:`validate_lcag`).
    """
    M = validate_lcag(matrix)
    n_leaves = M.shape[0]
    parents: list[int] = [-1] * n_leaves
    node_of = {leaf: leaf for leaf in range(n_leaves)}  # cluster (its smallest leaf) -> node
    previous = np.arange(n_leaves)
    for h in range(1, int(M.max()) + 1):
        cluster = np.argmax(M <= h, axis=1)  # smallest leaf joined with i at or below h
        for rep in np.unique(cluster).tolist():
            parts = np.unique(previous[cluster == rep]).tolist()
            if len(parts) < 2:
                continue
            new = len(parents)
            parents.append(-1)
            for part in parts:
                parents[node_of[part]] = new
            node_of[rep] = new
        previous = cluster
    return DecayTree(parents)


def lcag_to_trees(matrices: np.ndarray, mask: np.ndarray | None = None) -> list[DecayTree]:
    """:func:`lcag_to_tree` for each event of a batch ``(N, L, L)`` with mask ``(N, L)``.

    Raises:
        InvalidLCAGError: for the first invalid event; the message names it.
    """
    batch, mask = _check_batch(np.asarray(matrices), mask)
    trees = []
    for n in range(len(batch)):
        real = np.flatnonzero(mask[n])
        try:
            trees.append(lcag_to_tree(batch[n][np.ix_(real, real)]))
        except InvalidLCAGError as exc:
            raise InvalidLCAGError(exc.reason, exc.where, f"event {n}: {exc.args[0]}") from None
    return trees


# ------------------------------------------------------------------------ leaf permutations
def permute(matrix: np.ndarray, order: np.ndarray | Sequence[int]) -> np.ndarray:
    """Reorder leaves: the result's leaf ``k`` is the input's leaf ``order[k]``.

    Args:
        matrix: ``(L, L)`` or ``(N, L, L)`` (any pairwise matrix, LCAG or LCAS).
        order: ``(L,)`` applied to every event, or ``(N, L)`` one permutation per event (an
            ``(L, L)`` matrix is then shared by all ``N`` events).

    Returns:
        The permuted matrix, same shape: ``out[..., a, b] = matrix[..., order[a], order[b]]``.
    """
    M = np.asarray(matrix)
    idx = np.asarray(order)
    L = M.shape[-1]
    if M.ndim not in (2, 3) or M.shape[-2] != L:
        raise InvalidInputError(f"matrix: expected (L, L) or (N, L, L), got shape {M.shape}")
    if (
        idx.shape[-1:] != (L,)
        or idx.ndim > 2
        or (idx.ndim == 2 and M.ndim == 3 and len(idx) != len(M))
        or not np.issubdtype(idx.dtype, np.integer)
    ):
        raise InvalidInputError(
            f"order: expected integer shape ({L},) or (N, {L}) for matrix {M.shape}, "
            f"got {idx.shape} {idx.dtype}"
        )
    if not np.array_equal(np.sort(idx, axis=-1), np.broadcast_to(np.arange(L), idx.shape)):
        raise InvalidInputError(f"order: not a permutation of 0..{L - 1}")
    if idx.ndim == 1:
        return M[..., idx[:, None], idx[None, :]]
    if M.ndim == 2:  # one matrix for every event: a single gather, no (N, L, L) copy first
        return M[idx[:, :, None], idx[:, None, :]]
    rows = np.take_along_axis(M, idx[:, :, None], axis=1)
    return np.take_along_axis(rows, idx[:, None, :], axis=2)


def canonical_order(matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """A leaf order ``(L,)`` after which isomorphic trees have identical LCAGs.

    Leaves are listed depth-first, children sorted by a shape key, so
    ``permute(M, canonical_order(M))`` depends only on the tree's shape.
    """
    tree = lcag_to_tree(matrix)
    key: dict[int, str] = {}
    for node in reversed(list(tree.preorder())):
        kids = sorted(key[c] for c in tree.children(node))
        key[node] = "(" + "".join(kids) + ")"
    order: list[int] = []
    stack = [tree.root]
    while stack:
        node = stack.pop()
        if tree.is_leaf(node):
            order.append(node)
        stack.extend(sorted(tree.children(node), key=lambda c: key[c], reverse=True))
    return np.asarray(order, dtype=np.int64)


def canonical_form(matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """``matrix (L, L)`` with its leaves in :func:`canonical_order`."""
    M = validate_lcag(matrix)
    return permute(M, canonical_order(M))


def _check_batch(arr: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise InvalidInputError(f"matrices: expected shape (N, L, L), got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InvalidInputError(f"matrices: expected a numeric array, got dtype {arr.dtype}")
    if mask is None:
        return arr, np.ones(arr.shape[:2], dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != arr.shape[:2] or mask.dtype != bool:
        raise InvalidInputError(
            f"mask: expected bool shape {arr.shape[:2]}, got {mask.dtype} {mask.shape}"
        )
    return arr, mask
