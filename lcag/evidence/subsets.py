"""Kinematics of every leaf subset of an event, indexed by bit mask (bit ``i`` = leaf ``i``)."""

from __future__ import annotations

import numpy as np

from lcag.decode.scores import inner_node_bits, subset_members

__all__ = [
    "SUBSET_KINEMATICS",
    "candidate_subsets",
    "event_masses",
    "node_indicator",
    "subset_kinematics",
    "subset_masses",
    "subset_sizes",
]


def subset_sizes(n_leaves: int) -> np.ndarray:
    """``(2^L,)`` int64: how many leaves each bit mask holds."""
    return subset_members(n_leaves).sum(axis=1)


def subset_masses(x: np.ndarray, mask: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Invariant mass of every leaf subset (or of the subsets in ``columns``).

    Args:
        x: ``(N, L, 4)`` leaves ``(px, py, pz, E)``.
        mask: ``(N, L)`` bool, real leaves (padded leaves add nothing to a subset).
        columns: ``(K,)`` bit masks: only these subsets.

    Returns:
        ``(N, 2^L)`` (or ``(N, K)``) float64, ``sqrt(max(E^2 - |p|^2, 0))`` of the summed
        4-momenta.
    """
    N, L = mask.shape
    leaves = np.where(mask[..., None], np.asarray(x, dtype=np.float64)[..., :4], 0.0)
    members = subset_members(L).astype(np.float64)  # (2^L, L)
    if columns is not None:
        members = members[np.asarray(columns)]
    # one BLAS product for the whole batch: (S, L) @ (L, N * 4) -> (S, N, 4)
    total = (members @ leaves.transpose(1, 0, 2).reshape(L, N * 4)).reshape(-1, N, 4)
    e, px, py, pz = total[..., 3], total[..., 0], total[..., 1], total[..., 2]
    return np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, 0.0)).T


def event_masses(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(N,)`` invariant mass of all real leaves of each event together."""
    total = np.where(mask[..., None], np.asarray(x, dtype=np.float64)[..., :4], 0.0).sum(1)
    return np.sqrt(np.maximum(total[:, 3] ** 2 - (total[:, :3] ** 2).sum(-1), 0.0))


def candidate_subsets(mask: np.ndarray) -> np.ndarray:
    """Which bit masks can be an inner node below the root: ``(N, 2^L)`` bool.

    Args:
        mask: ``(N, L)`` bool, real leaves.

    Returns:
        True for the subsets of an event's real leaves with two or more leaves, except the
        set of all of them (the root, in every tree).
    """
    L = mask.shape[1]
    bits = np.arange(1 << L, dtype=np.int64)
    real = mask.astype(np.int64) @ (np.int64(1) << np.arange(L, dtype=np.int64))  # (N,)
    inside = (bits[None, :] & ~real[:, None]) == 0
    return inside & (subset_sizes(L)[None, :] >= 2) & (bits[None, :] != real[:, None])


def node_indicator(lcag: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Which bit masks are inner nodes (root included) of each event's tree: ``(N, 2^L)``.

    Args:
        lcag: ``(N, L, L)`` valid LCAGs (padding and diagonal ignored).
        mask: ``(N, L)`` bool, real leaves.
    """
    N, L = mask.shape
    out = np.zeros((N, 1 << L), dtype=bool)
    events, bits = inner_node_bits(np.asarray(lcag, dtype=np.int64), mask)
    out[events, bits] = True
    return out


SUBSET_KINEMATICS = ("log1p_mass", "mass_share", "leaf_share", "prior_log_odds")


def subset_kinematics(
    x: np.ndarray,
    mask: np.ndarray,
    prior_log_odds: np.ndarray | None = None,
    masses: np.ndarray | None = None,
    columns: np.ndarray | None = None,
) -> np.ndarray:
    """Subset-level inputs of a subset head, one row per bit mask (:data:`SUBSET_KINEMATICS`).

    Args:
        x: ``(N, L, 4)`` leaves ``(px, py, pz, E)``.
        mask: ``(N, L)`` bool, real leaves.
        prior_log_odds: ``(N, 2^L)`` a mass prior's node scores, or ``None`` (zeros).
        masses: ``(N, 2^L)`` :func:`subset_masses` of the event, if already at hand
            (``(N, K)`` with ``columns``).
        columns: ``(K,)`` bit masks: only these subsets (``prior_log_odds`` and ``masses``
            then hold only them too).

    Returns:
        ``(N, 2^L, 4)`` float64: ``log(1 + m_S)``, ``m_S / m_event``, ``|S| / L_event`` and
        the prior's log-odds (clipped to +-30).
    """
    L = mask.shape[1]
    bits = np.arange(1 << L) if columns is None else np.asarray(columns)
    masses = subset_masses(x, mask, columns) if masses is None else masses
    event_mass = event_masses(x, mask)
    n_real = np.maximum(mask.sum(1), 1)
    prior = np.zeros_like(masses) if prior_log_odds is None else prior_log_odds
    return np.stack(
        [
            np.log1p(masses),
            masses / np.maximum(event_mass, 1e-12)[:, None],
            subset_sizes(L)[bits][None, :] / n_real[:, None],
            np.clip(prior, -30.0, 30.0),
        ],
        axis=-1,
    )
