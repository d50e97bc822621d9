"""Leaf species and the species composition of leaf subsets, for a composition-aware mass prior.

A particle decays into particular species: a subset of two pions near 0.5 GeV is a K_S0
candidate, a subset of a pion and a photon at the same mass is not. Final-state particles carry
their species in their own invariant mass (the generators recompute ``E`` from the species' mass
after any smearing), so species are learnt from the training leaves, not typed in: when the
leaf masses take a few discrete values, each value is a species, and a subset's *composition*
is the multiset of its leaves' species.

A composition is hashed as the sum of a fixed random code per species (a multiset hash: the
same species counts give the same sum, whatever the leaf order), so a subset's code is one
integer product ``members @ codes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lcag.decode.scores import subset_members

__all__ = ["MAX_SPECIES", "Species", "leaf_masses"]

MAX_SPECIES = 32  # more distinct leaf masses than this are not species (continuous masses)
_COVERAGE = 0.999  # the species must hold this share of the training leaves
_LOG_TOLERANCE = 2e-3  # a leaf is of a species when |log m - log m_species| is below this
_CODE_BITS = 40  # species codes are below 2^40: sums of <= 2^12 leaves fit in int64


def leaf_masses(x: np.ndarray) -> np.ndarray:
    """Invariant mass of each leaf, ``(..., L)`` float64, from ``x (..., L, 4+)`` ``(px, py, pz,
    E, ...)`` (0 where ``E^2 < |p|^2`` by rounding)."""
    p = np.asarray(x, dtype=np.float64)[..., :4]
    return np.sqrt(np.maximum(p[..., 3] ** 2 - (p[..., :3] ** 2).sum(-1), 0.0))


@dataclass(frozen=True)
class Species:
    """The discrete leaf species of a dataset and their composition codes.

    Attributes:
        log_masses: ``(S,)`` sorted ``log(1 + m)`` of the species (empty: no species known).
        codes: ``(S + 1,)`` int64 code per species, the last for leaves of no known species.
    """

    log_masses: np.ndarray
    codes: np.ndarray

    @property
    def known(self) -> bool:
        return len(self.log_masses) > 0

    @classmethod
    def none(cls) -> Species:
        return cls(np.zeros(0), np.zeros(1, dtype=np.int64))

    @classmethod
    def fit(cls, masses: np.ndarray) -> Species:
        """The species of training leaves of masses ``masses (M,)``, or :meth:`none` when they
        take more than :data:`MAX_SPECIES` values (continuous masses, or a detector's)."""
        if len(masses) == 0:
            return cls.none()
        values = np.log1p(np.asarray(masses, dtype=np.float64))
        rounded = np.round(values / _LOG_TOLERANCE).astype(np.int64)
        unique, inverse = np.unique(rounded, return_inverse=True)
        # neighbouring grid points are one species split by rounding
        cluster = np.concatenate([[0], np.cumsum(np.diff(unique) > 1)])[inverse.ravel()]
        counts = np.bincount(cluster)
        order = np.argsort(-counts, kind="stable")
        covered = np.cumsum(counts[order]) / counts.sum()
        n_species = int(np.searchsorted(covered, _COVERAGE) + 1)
        if n_species > MAX_SPECIES:
            return cls.none()
        # the mean log-mass of each kept species' leaves, sorted
        means = np.bincount(cluster, weights=values) / counts
        log_masses = np.sort(means[order[:n_species]])
        rng = np.random.default_rng(20220830)  # fixed: codes are part of the checkpoint anyway
        codes = rng.integers(1, 1 << _CODE_BITS, size=len(log_masses) + 1, dtype=np.int64)
        return cls(log_masses, codes)

    def of_leaves(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Species index of each leaf, ``(N, L)`` int64: ``S`` for no known species and for
        padding."""
        if not self.known:
            return np.zeros(mask.shape, dtype=np.int64)
        distance = np.abs(np.log1p(leaf_masses(x))[..., None] - self.log_masses)  # (N, L, S)
        index = distance.argmin(-1)
        far = np.take_along_axis(distance, index[..., None], -1)[..., 0] > 2 * _LOG_TOLERANCE
        return np.where(far | ~mask, len(self.log_masses), index)

    def subset_codes(
        self, x: np.ndarray, mask: np.ndarray, columns: np.ndarray | None = None
    ) -> np.ndarray:
        """Composition code of every leaf subset (or of the subsets in ``columns``).

        Args:
            x: ``(N, L, 4+)`` leaves.
            mask: ``(N, L)`` bool, real leaves (padded leaves add nothing).
            columns: ``(K,)`` bit masks: only these subsets.

        Returns:
            ``(N, 2^L)`` (or ``(N, K)``) int64: equal for subsets of equal species counts.
        """
        leaf_codes = np.where(mask, self.codes[self.of_leaves(x, mask)], 0)  # (N, L)
        members = subset_members(mask.shape[1]).astype(np.int64)
        if columns is not None:
            members = members[np.asarray(columns)]
        return leaf_codes @ members.T
