"""The physics baseline: reconstruct decay trees from invariant masses alone.

What an analyst tries first, without machine learning:

1. For every subset ``S`` of an event's leaves (2 <= |S| < L), the invariant mass ``m_S`` of
   their summed 4-momenta and its uncertainty ``sigma_S``. With a relative momentum resolution
   ``r`` (each component smeared, E recomputed from the leaf mass, as ``lcag-generate`` does),
   ``Var(m_S^2) = 4 r^2 sum_{i in S} sum_c p_ic^2 (E_S p_ic / E_i - P_Sc)^2`` and
   ``sigma_S = sqrt(Var) / (2 m_S)``; half the particle's width and ``mass_tolerance * M``
   add in quadrature (the latter keeps exact data exact).
2. ``S`` is a candidate intermediate particle when ``chi2 = ((m_S - M) / sigma_S)^2`` is below
   ``window^2`` for some known intermediate mass ``M``.
3. Among all laminar families of candidates (sets that nest or are disjoint, i.e. valid
   trees, the whole event being the root), the one with the most candidates, ties broken by
   the smallest summed chi-square, found exactly by dynamic programming over leaf subsets
   (``O(3^L)`` per event, compiled).

The tree it returns is always valid: leaves not inside any chosen set hang from the smallest
chosen set containing them. Input is what :class:`lcag.Reconstructor` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from lcag.errors import InvalidInputError
from lcag.events import as_padded
from lcag.matrix import tree_to_lcag
from lcag.tree import DecayTree

__all__ = ["CombinatorialBaseline"]


@dataclass
class CombinatorialBaseline:
    """Invariant-mass matching of leaf subsets to known intermediate masses.

    Args:
        masses: the intermediate masses that may occur (e.g. the paper's 90, 80, ..., 10).
        widths: their total widths; half of each adds in quadrature to ``sigma_S`` (a rough
            Gaussian stand-in for the Breit-Wigner line shape). Default: all 0.
        resolution: relative momentum resolution of the leaves (0 for exact data).
        mass_tolerance: relative mass window kept even at zero resolution.
        window: the chi-square window, in standard deviations.
        max_leaves: the largest event handled (the search costs 3^L).
    """

    masses: Sequence[float]
    widths: Sequence[float] | None = None
    resolution: float = 0.0
    mass_tolerance: float = 1e-6
    window: float = 3.0
    max_leaves: int = 12
    _masses: np.ndarray = field(init=False, repr=False)
    _widths: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._masses = np.asarray(self.masses, dtype=np.float64)
        widths = np.zeros_like(self._masses) if self.widths is None else self.widths
        self._widths = np.asarray(widths, dtype=np.float64)
        if self._widths.shape != self._masses.shape or (self._widths < 0).any():
            raise InvalidInputError(
                f"widths: expected {len(self._masses)} widths >= 0, got {self.widths}"
            )
        if self._masses.size == 0 or not (self._masses > 0).all():
            raise InvalidInputError(f"masses: need positive intermediate masses, got {self.masses}")
        if self.resolution < 0 or self.window <= 0 or self.mass_tolerance <= 0:
            raise InvalidInputError(
                "resolution must be >= 0, window and mass_tolerance > 0; got "
                f"{self.resolution}, {self.window}, {self.mass_tolerance}"
            )
        if not 2 <= self.max_leaves <= 20:
            raise InvalidInputError(f"max_leaves = {self.max_leaves}: expected 2..20")

    def reconstruct(self, leaves: Any, mask: np.ndarray | None = None) -> list[DecayTree]:
        """The decay tree of every event (see the module docstring).

        Args:
            leaves: ``(N, L, 4)`` with ``mask (N, L)``, a list of ``(L_i, 4)`` arrays, or an
                awkward array, of ``(px, py, pz, E)``.
        """
        x, mask = as_padded(leaves, mask, 4, self.max_leaves)
        trees = []
        for event in range(len(x)):
            p = x[event][mask[event]]
            trees.append(self._event(p))
        return trees

    def lcag(self, leaves: Any, mask: np.ndarray | None = None) -> list[np.ndarray]:
        """:meth:`reconstruct` as LCAG matrices ``(L_i, L_i)``."""
        return [tree_to_lcag(tree) for tree in self.reconstruct(leaves, mask)]

    # ------------------------------------------------------------------------ one event
    def _event(self, p: np.ndarray) -> DecayTree:
        n = len(p)
        if n < 3:
            return DecayTree([n] * n + [-1] if n > 1 else [-1])
        mass, sigma = _subset_masses(p, self.resolution)
        M, W = self._masses[None, :], self._widths[None, :]
        total = np.sqrt(sigma[:, None] ** 2 + (W / 2) ** 2 + (self.mass_tolerance * M) ** 2)
        chi2 = (((mass[:, None] - M) / total) ** 2).min(axis=1)
        full = (1 << n) - 1
        sizes = np.array([bin(s).count("1") for s in range(1 << n)])
        candidate = (chi2 <= self.window**2) & (sizes >= 2)
        candidate[full] = False
        # A chosen set scores 1 - chi2 / (2 window^2): more sets first, then a better fit.
        gain = np.where(candidate, 1.0 - chi2 / (2 * self.window**2), -np.inf)
        first_block = _laminar_search(gain, n)
        return _tree_from_choices(first_block, candidate, n)


def _subset_masses(p: np.ndarray, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Invariant mass ``(2^n,)`` of every leaf subset, and its resolution uncertainty."""
    n = len(p)
    members = ((np.arange(1 << n)[:, None] >> np.arange(n)) & 1).astype(np.float64)
    total = members @ p  # (2^n, 4)
    m2 = total[:, 3] ** 2 - np.square(total[:, :3]).sum(1)
    mass = np.sqrt(np.maximum(m2, 0.0))
    if resolution <= 0:
        return mass, np.zeros_like(mass)
    energy = p[:, 3:4]
    a = members @ (p[:, :3] ** 4 / energy**2).sum(1)  # sum_i sum_c p^4 / E_i^2
    b = members @ (p[:, :3] ** 3 / energy)  # (2^n, 3)
    c = members @ (p[:, :3] ** 2)  # (2^n, 3)
    e_s, p_s = total[:, 3], total[:, :3]
    variance = 4 * resolution**2 * (e_s**2 * a - 2 * e_s * (p_s * b).sum(1) + (p_s**2 * c).sum(1))
    sigma = np.sqrt(np.maximum(variance, 0.0)) / (2 * np.maximum(mass, 1e-12))
    return mass, sigma


@numba.njit(cache=True)
def _laminar_search(gain: np.ndarray, n: int) -> np.ndarray:  # pragma: no cover - compiled
    """Best laminar family: for every set ``S``, the first block of its best partition.

    ``G[U]`` = best split of ``U`` into blocks (a single leaf scores 0, a candidate set
    ``gain + F``), ``F[S]`` = the same with at least two blocks (``S`` as an inner node).
    Returns ``first (2^n,)``: the block holding the lowest leaf in the best split of each set.
    """
    size = 1 << n
    G = np.full(size, -np.inf)
    F = np.full(size, -np.inf)
    first_g = np.zeros(size, dtype=np.int64)
    first_f = np.zeros(size, dtype=np.int64)
    G[0] = 0.0
    for S in range(1, size):
        low = S & -S
        rest = S ^ low
        best_f, best_fb = -np.inf, 0
        sub = rest
        while True:
            B = low | sub
            part = 0.0 if B == low else gain[B] + F[B]
            if B != S:
                value = part + G[S ^ B]
                if value > best_f:
                    best_f, best_fb = value, B
            if sub == 0:
                break
            sub = (sub - 1) & rest
        F[S], first_f[S] = best_f, best_fb
        whole = 0.0 if S == low else gain[S] + F[S]
        if whole >= best_f:
            G[S], first_g[S] = whole, S
        else:
            G[S], first_g[S] = best_f, best_fb
    # first_f for inner nodes (root and chosen sets), first_g for the rest of a split
    out = np.empty((2, size), dtype=np.int64)
    out[0] = first_f
    out[1] = first_g
    return out


def _tree_from_choices(choices: np.ndarray, candidate: np.ndarray, n: int) -> DecayTree:
    first_f, first_g = choices
    parents = [-1] * n
    stack = [((1 << n) - 1, -1)]  # (set, parent node id)
    while stack:
        S, parent = stack.pop()
        node = len(parents)
        parents.append(parent)
        B, rest = int(first_f[S]), S ^ int(first_f[S])
        blocks = [B]
        while rest:
            block = int(first_g[rest])
            blocks.append(block)
            rest ^= block
        for block in blocks:
            if block & (block - 1):
                stack.append((block, node))
            else:
                parents[block.bit_length() - 1] = node
    return DecayTree(parents)
