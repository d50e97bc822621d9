"""The negative log-likelihood of the true tree among all valid trees, differentiable in torch.

A tree's score is the sum over leaf pairs of the log-probability of the pair's LCAG class plus a
node score per inner node (root included), as in :mod:`lcag.decode`. Its probability is
``exp(score(T) - log Z)`` with ``log Z`` the log-sum-exp over every valid tree: the recursion of
:mod:`lcag.decode.partition` (there compiled, one event and one subset at a time), here
vectorised over events and over all subsets of one size at once, so autograd gives the gradient
(the pair-class and node marginals). ``O(3^L C)`` per event, like decoding.

Subsets of size ``k`` split into a block ``B`` holding their lowest leaf and a rest ``R``; there
are ``2^(k-1) - 1`` such splits for every subset of that size, so each size is one gather.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["log_partition_torch", "tree_nll", "true_tree_score"]

NEG = -1.0e5  # stands for -inf: finite, so log-sum-exp and its gradient stay defined


@lru_cache(maxsize=32)
def _splits(n: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """Per subset size ``k = 2..n``: the subsets ``S (m,)``, their blocks ``B (m, 2^(k-1)-1)``
    holding the lowest leaf of ``S`` (``B`` a proper subset of ``S``) and rests ``R = S - B``."""
    sizes = np.array([bin(s).count("1") for s in range(1 << n)])
    out = []
    for k in range(2, n + 1):
        subsets = np.flatnonzero(sizes == k)
        blocks = np.empty((len(subsets), (1 << (k - 1)) - 1), dtype=np.int64)
        for row, S in enumerate(subsets):
            low = S & -S
            rest = S ^ low
            subs = [sub for sub in range(rest + 1) if sub & rest == sub and sub != rest]
            blocks[row] = [low | sub for sub in subs]
        out.append((subsets, blocks, subsets[:, None] ^ blocks))
    return tuple(out)


@lru_cache(maxsize=32)
def _pair_members(n: int) -> np.ndarray:
    """``(2^n, n, n)`` float: entry ``[S, i, j]`` is 1 when ``i < j`` are both in ``S``."""
    members = (np.arange(1 << n)[:, None] >> np.arange(n)[None, :]) & 1
    upper = np.triu(np.ones((n, n)), k=1)
    return (members[:, :, None] * members[:, None, :] * upper).astype(np.float32)


def _lse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.logaddexp(a, b)


def log_partition_torch(scores: torch.Tensor, nodes: torch.Tensor | None = None) -> torch.Tensor:
    """``log Z``: the log-sum-exp of the tree score over every valid LCAG, per event.

    Args:
        scores: ``(E, n, n, H)`` pair log-scores, index ``k`` = height ``k + 1`` (symmetric;
            the upper triangle is read).
        nodes: ``(E, 2^n)`` node scores by leaf bit mask (root included), or ``None``.

    Returns:
        ``(E,)``, differentiable in both inputs. Equals :func:`lcag.decode.log_partition`.
    """
    E, n, _, H = scores.shape
    full = 1 << n
    if n == 1:
        return scores.new_zeros(E)
    members = torch.from_numpy(_pair_members(n)).to(scores)
    W = torch.einsum("sij,eijh->ehs", members, scores)  # (E, H, 2^n), height h+1 at index h
    node = scores.new_zeros(E, full) if nodes is None else nodes.to(scores)
    dev = scores.device
    singles = torch.tensor([1 << i for i in range(n)], device=dev)
    empty_set = torch.zeros(1, dtype=torch.long, device=dev)
    leaf = torch.full((E, full), NEG, dtype=scores.dtype, device=dev)
    leaf[:, singles] = 0.0
    splits = [
        (torch.from_numpy(S).to(dev), torch.from_numpy(B).to(dev).flatten(), torch.from_numpy(R))
        for S, B, R in _splits(n)
    ]
    splits = [(S, B, R.to(dev).flatten(), len(S), R.shape[1]) for S, B, R in splits]
    F_prev2 = None  # F[h - 2]
    F_prev = leaf  # F[h - 1]; F[0] is the leaves
    lower = torch.full_like(leaf, NEG)  # log-sum-exp of F[h'] over h' <= h - 2
    total = torch.full((E,), NEG, dtype=scores.dtype, device=dev)
    is_single = leaf == 0.0
    for h in range(1, H + 1):
        if F_prev2 is not None:
            lower = _lse(lower, F_prev2)
        Wh = W[:, h - 1]
        G0 = lower - Wh
        G1 = F_prev - Wh
        whole = _lse(G0, G1)
        A = torch.where(is_single, whole, NEG).index_fill(1, empty_set, 0.0)
        P1 = torch.where(is_single, G1, NEG)
        F = torch.full_like(leaf, NEG)
        for subsets, blocks, rests, m, c in splits:
            a_rest = A.index_select(1, rests).view(E, m, c)
            p_rest = P1.index_select(1, rests).view(E, m, c)
            g1 = G1.index_select(1, blocks).view(E, m, c)
            g0 = G0.index_select(1, blocks).view(E, m, c)
            wb = whole.index_select(1, blocks).view(E, m, c)
            x = torch.logsumexp(_lse(g1 + a_rest, g0 + p_rest), dim=-1)
            y = torch.logsumexp(wb + a_rest, dim=-1)
            F = F.index_copy(1, subsets, Wh[:, subsets] + node[:, subsets] + x)
            A = A.index_copy(1, subsets, _lse(whole[:, subsets], y))
            P1 = P1.index_copy(1, subsets, _lse(G1[:, subsets], x))
        total = _lse(total, F[:, full - 1])
        F_prev2, F_prev = F_prev, F
    return total


def true_tree_score(
    scores: torch.Tensor, lcag: torch.Tensor, nodes: torch.Tensor | None, is_node: torch.Tensor
) -> torch.Tensor:
    """The score of each event's true tree, ``(E,)``.

    Args:
        scores: ``(E, n, n, H)`` pair log-scores (height ``k + 1`` at index ``k``).
        lcag: ``(E, n, n)`` the true LCAGs (diagonal ignored).
        nodes: ``(E, 2^n)`` node scores, or ``None``.
        is_node: ``(E, 2^n)`` bool, the true tree's inner nodes (root included).
    """
    n, H = scores.shape[1], scores.shape[3]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=scores.device), diagonal=1)
    heights = (lcag.clamp(min=1) - 1).clamp(max=H - 1)
    picked = scores.gather(-1, heights[..., None])[..., 0]  # (E, n, n)
    pairs = (picked * upper).sum((1, 2))
    if nodes is None:
        return pairs
    return pairs + (nodes * is_node.to(nodes)).sum(1)


def tree_nll(
    log_probs: torch.Tensor,
    lcag: torch.Tensor,
    is_node: torch.Tensor,
    nodes: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log Z - score(true tree)`` per event, ``(E,)``: the true tree's negative
    log-likelihood among all valid trees.

    Args:
        log_probs: ``(E, C, n, n)`` per-pair class log-probabilities (class ``c`` = height
            ``c``; class 0 is never a tree's pair and is left out, as decoding does).
        lcag: ``(E, n, n)`` true LCAGs, every leaf real.
        is_node: ``(E, 2^n)`` bool, the true tree's inner nodes (root included).
        nodes: ``(E, 2^n)`` node scores (e.g. a subset head's logits), or ``None``.
    """
    scores = log_probs[:, 1:].permute(0, 2, 3, 1)
    scores = 0.5 * (scores + scores.transpose(1, 2))
    return log_partition_torch(scores, nodes) - true_tree_score(scores, lcag, nodes, is_node)
