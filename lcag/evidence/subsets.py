"""Kinematics of every leaf subset of an event, indexed by bit mask (bit ``i`` = leaf ``i``)."""

from __future__ import annotations

import numpy as np

from lcag.decode.scores import subset_members

__all__ = ["subset_masses", "subset_sizes"]


def subset_sizes(n_leaves: int) -> np.ndarray:
    """``(2^L,)`` int64: how many leaves each bit mask holds."""
    return subset_members(n_leaves).sum(axis=1)


def subset_masses(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Invariant mass of every leaf subset.

    Args:
        x: ``(N, L, 4)`` leaves ``(px, py, pz, E)``.
        mask: ``(N, L)`` bool, real leaves (padded leaves add nothing to a subset).

    Returns:
        ``(N, 2^L)`` float64, ``sqrt(max(E^2 - |p|^2, 0))`` of the summed 4-momenta.
    """
    L = x.shape[1]
    leaves = np.where(mask[..., None], np.asarray(x, dtype=np.float64), 0.0)
    members = subset_members(L).astype(np.float64)  # (2^L, L)
    total = np.einsum("sl,nlf->nsf", members, leaves)  # (N, 2^L, 4)
    m2 = total[..., 3] ** 2 - (total[..., :3] ** 2).sum(-1)
    return np.sqrt(np.maximum(m2, 0.0))
