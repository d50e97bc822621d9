"""Parent arrays of a batch of LCAGs, vectorised over events: no :class:`DecayTree` per event.

The nodes are numbered as :func:`lcag.matrix.lcag_to_tree` numbers them (leaves first, in leaf
order, then inner nodes by height and, within a height, by their smallest leaf), so
``parents_from_lcag(M[None])[0][0, :n]`` equals ``lcag_to_tree(M).parents``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["parents_from_lcag"]


def parents_from_lcag(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The decay trees of valid LCAGs with the same number of leaves, as parent arrays.

    Args:
        matrices: ``(N, L, L)`` integer, each a valid LCAG (as decoding returns; not checked).

    Returns:
        ``parents (N, 2L - 1)`` int32, node ``k``'s parent (``-1`` for the root and after the
        event's last node), and ``n_nodes (N,)`` int32, the number of nodes of each tree.
    """
    M = np.asarray(matrices)
    N, L = M.shape[0], M.shape[-1]
    size = max(2 * L - 1, L)
    parents = np.full((N, size), -1, dtype=np.int32)
    n_nodes = np.full(N, L, dtype=np.int32)
    if N == 0 or L < 2:
        return parents, n_nodes
    leaf = np.arange(L)
    node_of = np.broadcast_to(leaf, (N, L)).copy()  # a cluster's smallest leaf -> its node
    previous = node_of.copy()  # each leaf's cluster (its smallest leaf) one level down
    for h in range(1, int(M.max()) + 1):
        cluster = np.argmax(M <= h, axis=2)  # (N, L) the smallest leaf joined with i at <= h
        was_rep = previous == leaf  # the clusters one level down, by their smallest leaf
        # a cluster at height h is a new node when it joins two or more clusters from below
        parts = (was_rep[:, :, None] & (cluster[:, :, None] == leaf)).sum(axis=1)  # (N, rep)
        new = parts >= 2
        ids = n_nodes[:, None] + np.cumsum(new, axis=1, dtype=np.int32) - 1
        event, part = np.nonzero(was_rep & np.take_along_axis(new, cluster, axis=1))
        parents[event, node_of[event, part]] = ids[event, cluster[event, part]]
        node_of = np.where(new, ids, node_of)
        n_nodes += new.sum(axis=1, dtype=np.int32)
        previous = cluster
    return parents, n_nodes
