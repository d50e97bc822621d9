"""Leaves outside the tree: class 0 off the diagonal as "not in the decay" (background).

With ``background=True`` the decoders of :mod:`lcag.decode` and :mod:`lcag.decode.stages`
choose the tree's leaf set ``T`` (at least two leaves) as well as the tree: every pair with a
leaf outside ``T`` takes class 0, so a tree's score is its pair scores on ``T`` plus the
class-0 scores of the other pairs. Up to the exact limits the choice of ``T`` is exact (the
subset dynamic programmes already hold the best tree on every leaf set). Above them,
:func:`background_leaves` sets the leaves that favour class 0 aside first and the remaining
leaves are decoded as usual.
"""

from __future__ import annotations

import numpy as np

__all__ = ["background_leaves", "pair_sum", "zero_outside"]


def background_leaves(
    zero: np.ndarray, scores: np.ndarray, mask: np.ndarray, large: np.ndarray
) -> np.ndarray:
    """The leaves set aside before approximate decoding.

    A real leaf of a ``large`` event is background when its pairs' class-0 scores sum higher
    than their best other class's; when fewer than two leaves would remain, none is.

    Args:
        zero: ``(N, L, L)`` class-0 pair log-scores.
        scores: ``(N, L, L, C')`` the other classes' pair log-scores.
        mask: ``(N, L)`` bool, real leaves.
        large: ``(N,)`` bool, the events to treat.

    Returns:
        ``(N, L)`` bool, ``True`` for leaves set aside.
    """
    pairs = mask[:, :, None] & mask[:, None, :]
    margin = np.where(pairs, zero - scores.max(axis=-1, initial=-np.inf), 0.0).sum(axis=2)
    out = (margin > 0) & mask & large[:, None]
    too_few = (mask & ~out).sum(axis=1) < 2
    out[too_few] = False
    return out


def zero_outside(out: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``out (N, L, L)`` with the undecoded pairs of real leaves (``-1``) set to class 0."""
    pairs = mask[:, :, None] & mask[:, None, :]
    out[pairs & (out < 0)] = 0
    return out


def pair_sum(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(N,)``: ``values (N, L, L)`` summed over the unordered pairs ``i < j`` of real leaves."""
    L = mask.shape[1]
    upper = np.triu(np.ones((L, L), dtype=bool), 1)[None] & mask[:, :, None] & mask[:, None, :]
    return np.where(upper, values, 0.0).sum(axis=(1, 2))
