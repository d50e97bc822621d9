"""Per-pair class probabilities -> the most probable *valid* LCAG.

A model predicts, for each leaf pair ``(i, j)``, probabilities ``p[i, j, c]`` over LCAG classes
``c = 0..C-1`` (class ``c >= 1`` is "the lowest common ancestor has height c"). The score of a
candidate LCAG ``M`` is the sum over unordered pairs of log-probabilities,

    score(M) = sum_{i < j} s[i, j, M[i, j]],  s[i, j, c] = (log p[i, j, c] + log p[j, i, c]) / 2,

which is the plain sum of ``log p[i, j, M[i, j]]`` when ``p`` is symmetric. Probabilities are
floored at ``eps`` before the logarithm.

**Node scores.** Pair scores cannot see whether a *set* of leaves is a particle. Every function
here takes optional ``node_scores``: ``(2^L,)`` for one event or ``(N, 2^L)`` for a batch,
indexed by a leaf set's bit mask (bit ``i`` = leaf ``i``; entries of sets that are no inner node
are ignored). A tree's score then adds the node score of each of its inner nodes, **the root
included** (the root is the same set in every tree, so its score shifts all trees alike and
changes no decision and no probability). With all node scores zero every output is the one
without them, bit for bit. ``-inf`` forbids a leaf set as a node.

**Children-count scores.** ``children_scores``: ``(2^L, K)`` or ``(N, 2^L, K)``; entry
``[S, c]`` is added when leaf set ``S`` is an inner node with ``c + 2`` children (the last
column for ``K + 1`` or more), the root included: evidence that depends on a node's split, not
only on its leaf set (an n-body decay's phase-space volume grows as ``M^(2k - 4)`` with its
``k`` children). Exact decoding only (:mod:`lcag.decode.children`, ``O(3^L C K)``): events
of at most ``exact_max_leaves`` leaves, no background.

**Probabilities of trees.** ``exp(score(T))`` over all valid trees ``T`` is a distribution
once normalised: :func:`log_partition` gives ``log Z`` by the exact recursion in log-sum-exp
form, so ``P(T) = exp(score(T) - log Z)``; :func:`top_k` gives the ``k`` best trees exactly.

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
- :func:`log_partition` and :func:`top_k` are exact (``O(3^L C)`` per event, and up to
  ``L (L - 1) / 2`` exact decodes per extra tree for ``top_k``) up to ``exact_max_leaves``
  leaves. Above it, :func:`log_partition` sums over the trees the approximate decoder chooses
  among (those whose clusters are clusters of the dendrogram; the same recursion in
  log-sum-exp form, ``O(L^3 + L C)``): a lower bound on ``log Z``, so a tree's probability
  from it is an upper bound, close when the pair scores are confident. :func:`top_k` returns
  only the decoded tree there.

Outputs are int64 ``(L, L)`` (or ``(N, L, L)``) with 0 on the diagonal and -1 on padding.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from lcag.decode.background import background_leaves, pair_sum, zero_outside
from lcag.decode.children import (
    children_counts,
    decode_exact_children,
    log_partition_children,
)
from lcag.decode.dendrogram import decode_dendrogram, log_partition_dendrogram
from lcag.decode.exact import decode_exact
from lcag.decode.partition import log_partition_exact
from lcag.decode.scores import (
    argmax_classes,
    gather_children_scores,
    gather_node_scores,
    inner_node_masks,
    pair_log_scores,
    prepare_children_scores,
    prepare_node_scores,
    prepare_scores,
)
from lcag.decode.topk import top_k_approx, top_k_exact
from lcag.errors import InvalidInputError

__all__ = [
    "EXACT_MAX_LEAVES",
    "decode",
    "decode_argmax",
    "log_partition",
    "pair_log_scores",
    "top_k",
    "tree_score",
]

Method = Literal["auto", "exact", "approx", "argmax"]
EXACT_MAX_LEAVES = 10


def decode(
    probs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    node_scores: np.ndarray | None = None,
    children_scores: np.ndarray | None = None,
    method: Method = "auto",
    exact_max_leaves: int = EXACT_MAX_LEAVES,
    background: bool = False,
    eps: float = 1e-12,
) -> np.ndarray:
    """The most probable valid LCAG for each event.

    Args:
        probs: per-pair class probabilities ``(L, L, C)``, or a batch ``(N, L, L, C)``.
            The diagonal and padded entries are ignored.
        mask: ``(N, L)`` bool, ``True`` for real leaves (batch only; default all real).
            Real leaves may sit anywhere along the leaf axis.
        node_scores: ``(2^L,)`` or ``(N, 2^L)`` scores added per inner node (module docstring).
        children_scores: ``(2^L, K)`` or ``(N, 2^L, K)`` scores added per inner node by its
            number of children (module docstring); exact decoding only.
        method: ``"auto"`` (exact up to ``exact_max_leaves`` real leaves, else approximate),
            ``"exact"``, ``"approx"`` or ``"argmax"``; see the module docstring.
        exact_max_leaves: the largest leaf count ``"auto"`` decodes exactly.
        background: class 0 means "not in the tree" (:mod:`lcag.decode.background`): the
            tree may leave leaves out, whose pairs are 0. Default: every leaf is in the tree
            and class 0 is ignored. With ``"argmax"``, class 0 competes like any other.
        eps: floor applied to probabilities before the logarithm.

    Returns:
        int64 LCAG ``(L, L)`` or ``(N, L, L)``; diagonal 0, padding -1, heights in 1..C-1
        (and 0 for the pairs of leaves left out). Except for ``"argmax"``, every event's
        matrix is a valid LCAG (on the leaves in its tree).
    """
    if method not in ("auto", "exact", "approx", "argmax"):
        raise InvalidInputError(
            f"method: expected 'auto', 'exact', 'approx' or 'argmax', got {method!r}"
        )
    if method == "argmax" and background:
        return decode_argmax(probs, mask)
    scores, mask, single = prepare_scores(probs, mask, eps, keep_class_zero=True)
    zero, scores = scores[..., 0], scores[..., 1:]
    if method == "argmax":
        out = argmax_classes(scores, mask)
        return out[0] if single else out
    N, L = mask.shape
    nodes = prepare_node_scores(node_scores, N, L, single)
    exact_limit = {"exact": L, "approx": 1}.get(method, exact_max_leaves)
    kids = prepare_children_scores(children_scores, mask, single, exact_limit, background)
    tree = mask
    if background:
        tree = mask & ~background_leaves(zero, scores, mask, mask.sum(axis=1) > exact_limit)
    out = np.full((N, L, L), -1, dtype=np.int64)
    counts = tree.sum(axis=1)
    for n_real in np.unique(counts).tolist():
        events = np.flatnonzero(counts == n_real)
        # Gather each event's real leaves to the front: (E, n, n, C-1).
        leaf_idx = np.argsort(~tree[events], axis=1, kind="stable")[:, :n_real]
        gather = events[:, None, None], leaf_idx[:, :, None], leaf_idx[:, None, :]
        sub = scores[gather]
        if n_real == 0:
            continue
        if n_real == 1:
            decoded = np.zeros((len(events), 1, 1), dtype=np.int64)
        elif kids is not None:
            decoded = decode_exact_children(
                sub,
                gather_node_scores(nodes, events, leaf_idx),
                gather_children_scores(kids, events, leaf_idx),
            )
        elif n_real <= exact_limit:
            free = zero[gather] if background else None
            decoded = decode_exact(sub, gather_node_scores(nodes, events, leaf_idx), free)
        elif nodes is None:
            decoded = decode_dendrogram(sub)
        else:
            bits = np.int64(1) << leaf_idx.astype(np.int64)
            decoded = decode_dendrogram(sub, bits, nodes[events])
        out[gather] = decoded
    out = zero_outside(out, mask)
    return out[0] if single else out


def decode_argmax(probs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Each pair's most probable class, symmetrised; ``(L, L)`` or ``(N, L, L)`` int64.

    Class 0 may win off the diagonal and the result need not be a valid LCAG: this is the
    reference that valid-tree decoding is compared against.
    """
    scores, mask, single = prepare_scores(probs, mask, 1e-12, keep_class_zero=True)
    out = argmax_classes(scores, mask, offset=0)
    return out[0] if single else out


def tree_score(
    lcag: np.ndarray,
    probs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    node_scores: np.ndarray | None = None,
    children_scores: np.ndarray | None = None,
    eps: float = 1e-12,
) -> float | np.ndarray:
    """The score of given LCAG(s): the sum over real pairs ``i < j`` of pair log-scores, plus
    the node score of every inner node (root included) when ``node_scores`` are given.

    Args:
        lcag: ``(L, L)`` or ``(N, L, L)`` integer classes (padding may hold any value); with
            node scores they must be valid LCAGs.
        probs: ``(L, L, C)`` or ``(N, L, L, C)``.
        mask: ``(N, L)`` bool, ``True`` for real leaves.
        node_scores: ``(2^L,)`` or ``(N, 2^L)`` (module docstring).
        children_scores: ``(2^L, K)`` or ``(N, 2^L, K)`` (module docstring).

    Returns:
        A float, or ``(N,)`` float64 for a batch.
    """
    scores, mask, single = prepare_scores(probs, mask, eps, keep_class_zero=True)
    M = np.asarray(lcag).reshape(scores.shape[:3])
    L = M.shape[-1]
    upper = np.triu(np.ones((L, L), dtype=bool), 1)[None] & mask[:, :, None] & mask[:, None, :]
    classes = np.clip(M, 0, scores.shape[-1] - 1)
    picked = np.take_along_axis(scores, classes[..., None], axis=-1)[..., 0]
    total = np.where(upper, picked, 0.0).sum(axis=(1, 2))
    nodes = prepare_node_scores(node_scores, len(M), L, single)
    if nodes is not None:
        for e, inner in enumerate(inner_node_masks(M, mask)):
            total[e] += nodes[e, inner].sum()
    kids = prepare_children_scores(children_scores, mask, single, L, False)
    if kids is not None:
        for e in range(len(M)):
            real = np.flatnonzero(mask[e])
            if len(real) < 2:
                continue
            for local, count in children_counts(M[e][np.ix_(real, real)]):
                bits = sum(1 << int(real[k]) for k in range(len(real)) if (local >> k) & 1)
                total[e] += kids[e, bits, min(count - 2, kids.shape[2] - 1)]
    return float(total[0]) if single else total


def log_partition(
    probs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    node_scores: np.ndarray | None = None,
    children_scores: np.ndarray | None = None,
    exact_max_leaves: int = EXACT_MAX_LEAVES,
    background: bool = False,
    eps: float = 1e-12,
) -> float | np.ndarray:
    """``log Z = log sum_T exp(score(T))`` over every valid LCAG ``T`` with heights ``1..C-1``.

    ``tree_score(T) - log_partition`` is the log-probability of ``T`` among all valid trees.

    Args:
        probs: ``(L, L, C)`` or ``(N, L, L, C)``.
        mask: ``(N, L)`` bool, ``True`` for real leaves.
        node_scores: ``(2^L,)`` or ``(N, 2^L)`` (module docstring).
        children_scores: ``(2^L, K)`` or ``(N, 2^L, K)`` (module docstring); exact only.
        exact_max_leaves: events with more real leaves get the log-partition over the
            approximate decoder's trees (module docstring), a lower bound.
        background: the sum runs over every tree on every leaf set of at least two leaves
            (the others' pairs class 0), as :func:`decode` with ``background`` chooses among;
            above ``exact_max_leaves``, over the trees on the leaves it keeps.
        eps: floor applied to probabilities before the logarithm.

    Returns:
        A float, or ``(N,)`` float64 for a batch (0 for events of at most one leaf).
    """
    scores, mask, single = prepare_scores(probs, mask, eps, keep_class_zero=True)
    zero, scores = scores[..., 0], scores[..., 1:]
    N, L = mask.shape
    nodes = prepare_node_scores(node_scores, N, L, single)
    kids = prepare_children_scores(children_scores, mask, single, exact_max_leaves, background)
    out = np.zeros(N)
    tree = mask
    if background:
        tree = mask & ~background_leaves(zero, scores, mask, mask.sum(axis=1) > exact_max_leaves)
        out += pair_sum(zero, mask) - pair_sum(zero, tree)  # pairs with a leaf set aside
    counts = tree.sum(axis=1)
    for n_real in np.unique(counts).tolist():
        events = np.flatnonzero(counts == n_real)
        if n_real < 2:
            continue
        leaf_idx = np.argsort(~tree[events], axis=1, kind="stable")[:, :n_real]
        gather = events[:, None, None], leaf_idx[:, :, None], leaf_idx[:, None, :]
        sub = scores[gather]
        if kids is not None:
            out[events] += log_partition_children(
                sub,
                gather_node_scores(nodes, events, leaf_idx),
                gather_children_scores(kids, events, leaf_idx),
            )
        elif n_real <= exact_max_leaves:
            free = zero[gather] if background else None
            out[events] += log_partition_exact(
                sub, gather_node_scores(nodes, events, leaf_idx), free
            )
        elif nodes is None:
            out[events] += log_partition_dendrogram(sub)
        else:
            bits = np.int64(1) << leaf_idx.astype(np.int64)
            out[events] += log_partition_dendrogram(sub, bits, nodes[events])
    return float(out[0]) if single else out


def top_k(
    probs: np.ndarray,
    k: int,
    mask: np.ndarray | None = None,
    *,
    node_scores: np.ndarray | None = None,
    children_scores: np.ndarray | None = None,
    exact_max_leaves: int = EXACT_MAX_LEAVES,
    background: bool = False,
    eps: float = 1e-12,
) -> list[tuple[np.ndarray, float]] | list[list[tuple[np.ndarray, float]]]:
    """The ``k`` highest-scoring valid LCAGs of each event, best first, with their scores.

    Exact up to ``exact_max_leaves`` real leaves (Lawler's partitioning, see
    :mod:`lcag.decode.topk`). Above it the same partitioning with the approximate decoder in
    each part (:func:`lcag.decode.topk.top_k_approx`): distinct valid trees, sorted by score,
    the decoded tree among them, not guaranteed the ``k`` best. With ``background`` only the
    decoded tree. Fewer than ``k`` trees come back when fewer valid trees exist (one for two
    leaves).

    Args:
        probs: ``(L, L, C)`` or ``(N, L, L, C)``.
        k: trees per event, >= 1.
        mask: ``(N, L)`` bool, ``True`` for real leaves.
        node_scores: ``(2^L,)`` or ``(N, 2^L)`` (module docstring).
        children_scores: ``(2^L, K)`` or ``(N, 2^L, K)`` (module docstring); exact only.
        background: as for :func:`decode`; only the decoded tree comes back then.

    Returns:
        For one event a list of ``(lcag (L, L) int64, score)``; for a batch one such list per
        event (padding -1 in each matrix).
    """
    if int(k) < 1:
        raise InvalidInputError(f"k: expected at least 1, got {k}")
    scores, mask, single = prepare_scores(probs, mask, eps)
    N, L = mask.shape
    nodes = prepare_node_scores(node_scores, N, L, single)
    kids = prepare_children_scores(children_scores, mask, single, exact_max_leaves, background)
    results: list[list[tuple[np.ndarray, float]]] = []
    for e in range(N):
        real = np.flatnonzero(mask[e])
        n = len(real)
        if n > exact_max_leaves and n >= 3 and not background:
            bits = np.int64(1) << real.astype(np.int64)
            event_scores = scores[e][np.ix_(real, real)]
            trees = top_k_approx(event_scores, int(k), None if nodes is None else nodes[e], bits)
            results.append([(_expand(M, real, L), score) for M, score in trees])
            continue
        sub_nodes = gather_node_scores(nodes, np.array([e]), real[None])[0]
        if n > exact_max_leaves or n < 2 or background:
            batch = None if single else mask[e : e + 1]
            one = decode(probs if single else probs[e : e + 1], batch, method="auto",
                         node_scores=None if nodes is None else nodes[e : e + 1],
                         exact_max_leaves=exact_max_leaves, background=background,
                         eps=eps)  # fmt: skip
            one = one if single else one[0]
            score = tree_score(one, probs if single else probs[e], node_scores=(
                None if nodes is None else nodes[e]), eps=eps)  # fmt: skip
            results.append([(one, float(score))])
            continue
        sub_kids = None
        if kids is not None:
            sub_kids = gather_children_scores(kids, np.array([e]), real[None])[0]
        trees = top_k_exact(scores[e][np.ix_(real, real)], sub_nodes, int(k), sub_kids)
        results.append([(_expand(M, real, L), score) for M, score in trees])
    return results[0] if single else results


def _expand(lcag: np.ndarray, real: np.ndarray, L: int) -> np.ndarray:
    """``(L, L)`` int64: an LCAG over the ``real`` leaves placed among ``L`` (padding -1)."""
    full = np.full((L, L), -1, dtype=np.int64)
    full[np.ix_(real, real)] = lcag
    return full
