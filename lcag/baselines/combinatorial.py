"""The physics baseline: reconstruct decay trees from invariant masses alone.

What an analyst does without machine learning:

1. Masses. For every subset ``S`` of an event's leaves (2 <= |S| < L), the invariant mass
   ``m_S`` of their summed 4-momenta and its resolution ``sigma_S``: with a relative momentum
   resolution ``r`` (each component smeared, E recomputed from the leaf mass, as
   ``lcag-generate`` does), the variances ``(r p_ic)^2`` propagated to ``m_S``. Without a fit
   that is ``Var(m_S^2) = 4 r^2 sum_{i in S} sum_c p_ic^2 (E_S p_ic / E_i - P_Sc)^2`` and
   ``sigma_S = sqrt(Var) / (2 m_S)``. When the event's total 4-momentum is known
   (``total_momentum``: a mother of fixed mass and known momentum, no other particles), the
   momenta are first fitted to it (least squares, 4 constraints, linearised and iterated) and
   ``m_S``, ``sigma_S`` come from the fitted momenta and their covariance.
2. Node scores (``method="likelihood"``, the default). A subset that is particle ``k`` has the
   line shape of a Breit-Wigner of half width ``width_scale * Gamma_k / 2`` (the relativistic
   one near its peak) convolved with a Gaussian of ``s_k = sqrt((resolution_scale sigma_S)^2 +
   (mass_tolerance M_k)^2)``: a Voigt profile ``V_k``. A particle without width counts only
   within ``window`` of those standard deviations (which, with the tolerance, keeps exact data
   exact). A subset that is no particle has a flat mass density between 0 and the event's
   mass ``m_L``. A subset's score is the log-likelihood ratio plus a constant per node,
   ``log(sum_k pi_k V_k(m_S)) + log(m_L) + node_penalty``, with ``pi_k`` the ``mass_weights``.
   :meth:`CombinatorialBaseline.tune` chooses ``node_penalty``, ``resolution_scale`` and
   ``width_scale`` on events with known trees (the validation split) and counts ``pi_k``.
   ``method="window"`` is the older chi-square window: ``S`` is a candidate when
   ``((m_S - M_k) / sigma)^2 <= window^2`` for some ``k`` (``sigma`` with half the width and the
   tolerance in quadrature), and a candidate scores ``1 - chi2 / (2 window^2)``, so the most
   candidates win, ties broken by the smallest summed chi-square.
3. The tree. Among all laminar families of subsets (sets that nest or are disjoint, i.e. valid
   trees, the whole event being the root), the one with the largest summed score, found
   exactly by dynamic programming over leaf subsets (``O(3^L)`` per event, compiled). A
   subset with a negative score is never chosen; with the likelihood this is the most probable
   tree when subsets are taken as independent and ``node_penalty`` is the log prior odds of a
   node.

The tree it returns is always valid: leaves not inside any chosen set hang from the smallest
chosen set containing them. Input is what :class:`lcag.Reconstructor` takes.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numba
import numpy as np
from scipy.special import logsumexp, voigt_profile

from lcag.errors import InvalidInputError
from lcag.events import as_padded
from lcag.matrix import lcag_to_tree, tree_to_lcag
from lcag.tree import DecayTree

__all__ = [
    "METHODS",
    "CombinatorialBaseline",
    "kinematic_fit",
    "node_log_ratio",
    "subset_masses",
]

METHODS = ("likelihood", "window")
# The grid of CombinatorialBaseline.tune; the baseline's current values are tried first.
PENALTIES = (-4.0, -3.0, -2.5, -2.0, -1.5, -1.0, 0.0)
RESOLUTION_SCALES = (0.8, 1.0, 1.25)
WIDTH_SCALES = (0.75, 1.0, 1.5)
# Linearisations of the energy constraint: on realistic.yaml events a fourth would move the
# fitted momenta by 2e-9 of their size at most, and the third leaves sum E off by 3e-12.
_FIT_ITERATIONS = 3


@dataclass
class CombinatorialBaseline:
    """Reconstruction from the invariant masses of leaf subsets (see the module docstring).

    Args:
        masses: the intermediate masses that may occur (e.g. the paper's 90, 80, ..., 10).
        widths: their total widths (Breit-Wigner line shapes). Default: all 0.
        resolution: relative momentum resolution of the leaves (0 for exact data).
        mass_tolerance: relative mass resolution kept even at zero resolution.
        window: the chi-square window, in standard deviations (``method="window"``); with
            the likelihood, how far from its mass a particle without width may be.
        max_leaves: the largest event handled (the search costs 3^L).
        method: ``"likelihood"`` (line shape and resolution, a score per node) or
            ``"window"`` (the chi-square window).
        node_penalty: added to every chosen node's log-likelihood ratio.
        resolution_scale: factor on the propagated ``sigma_S``.
        width_scale: factor on the widths in the line shape.
        mass_weights: relative frequency of each mass among nodes (``pi_k``). Default: equal.
        total_momentum: ``(px, py, pz, E)`` every event's leaves sum to, for the kinematic fit
            (used when ``resolution > 0``). Default: none, no fit.
    """

    masses: Sequence[float]
    widths: Sequence[float] | None = None
    resolution: float = 0.0
    mass_tolerance: float = 1e-6
    window: float = 3.0
    max_leaves: int = 12
    method: str = "likelihood"
    node_penalty: float = -2.0
    resolution_scale: float = 1.0
    width_scale: float = 1.0
    mass_weights: Sequence[float] | None = None
    total_momentum: Sequence[float] | None = None
    _masses: np.ndarray = field(init=False, repr=False, compare=False)
    _widths: np.ndarray = field(init=False, repr=False, compare=False)
    _weights: np.ndarray = field(init=False, repr=False, compare=False)
    _total: np.ndarray | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._masses = np.asarray(self.masses, dtype=np.float64)
        if self._masses.ndim != 1 or self._masses.size == 0 or not (self._masses > 0).all():
            raise InvalidInputError(f"masses: need positive intermediate masses, got {self.masses}")
        self._widths = _positive_vector(self.widths, self._masses.size, "widths", zero_ok=True)
        weights = _positive_vector(self.mass_weights, self._masses.size, "mass_weights")
        self._weights = weights / weights.sum()
        if self.resolution < 0 or self.window <= 0 or self.mass_tolerance <= 0:
            raise InvalidInputError(
                "resolution must be >= 0, window and mass_tolerance > 0; got "
                f"{self.resolution}, {self.window}, {self.mass_tolerance}"
            )
        if not 2 <= self.max_leaves <= 20:
            raise InvalidInputError(f"max_leaves = {self.max_leaves}: expected 2..20")
        if self.method not in METHODS:
            raise InvalidInputError(f"method = {self.method!r}: expected one of {METHODS}")
        if not math.isfinite(self.node_penalty):
            raise InvalidInputError(f"node_penalty = {self.node_penalty}: expected a finite value")
        for name in ("resolution_scale", "width_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidInputError(f"{name} = {value}: expected a finite value > 0")
        self._total = None
        if self.total_momentum is not None:
            total = np.asarray(self.total_momentum, dtype=np.float64)
            if (
                total.shape != (4,)
                or not np.isfinite(total).all()
                or total[3] <= np.hypot.reduce(total[:3])
            ):
                raise InvalidInputError(
                    f"total_momentum: expected (px, py, pz, E) with E > |p|, got "
                    f"{self.total_momentum}"
                )
            self._total = total

    # ------------------------------------------------------------------------ public
    def reconstruct(self, leaves: Any, mask: np.ndarray | None = None) -> list[DecayTree]:
        """The decay tree of every event (see the module docstring).

        Args:
            leaves: ``(N, L, 4)`` with ``mask (N, L)``, a list of ``(L_i, 4)`` arrays, or an
                awkward array, of ``(px, py, pz, E)``.
        """
        x, mask = as_padded(leaves, mask, 4, self.max_leaves)
        return [self._event(x[event][mask[event]]) for event in range(len(x))]

    def lcag(self, leaves: Any, mask: np.ndarray | None = None) -> list[np.ndarray]:
        """:meth:`reconstruct` as LCAG matrices ``(L_i, L_i)``."""
        return [tree_to_lcag(tree) for tree in self.reconstruct(leaves, mask)]

    def perfect_rate(
        self, leaves: Any, truth: Sequence[Any], mask: np.ndarray | None = None
    ) -> float:
        """The fraction of events whose tree is reconstructed exactly.

        Args:
            leaves, mask: as for :meth:`reconstruct`.
            truth: every event's true tree, a :class:`DecayTree` or an ``(L_i, L_i)`` LCAG
                matrix (the diagonal is ignored).
        """
        trees = self.reconstruct(leaves, mask)
        true = _as_trees(truth, [t.n_leaves for t in trees])
        if not trees:
            raise InvalidInputError("leaves: no events")
        return sum(a == b for a, b in zip(trees, true, strict=True)) / len(trees)

    def tune(
        self,
        leaves: Any,
        truth: Sequence[Any],
        mask: np.ndarray | None = None,
        *,
        penalties: Sequence[float] = PENALTIES,
        resolution_scales: Sequence[float] = RESOLUTION_SCALES,
        width_scales: Sequence[float] = WIDTH_SCALES,
        count_weights: bool = True,
    ) -> CombinatorialBaseline:
        """A copy with its free parameters chosen on events of known trees (the validation split).

        With ``count_weights``, ``mass_weights`` become how often each mass is a true node's
        nearest listed mass (each count + 1). Then every combination of ``node_penalty`` in
        ``penalties``, ``resolution_scale`` in ``resolution_scales`` (only when
        ``resolution > 0``) and ``width_scale`` in ``width_scales`` (only when a width is
        non-zero) is tried, and the one with the most exactly reconstructed trees is kept; the
        baseline's current values are tried first and win ties.

        Args:
            leaves, mask: as for :meth:`reconstruct`.
            truth: every event's true tree, a :class:`DecayTree` or an ``(L_i, L_i)`` LCAG
                matrix (the diagonal is ignored).

        Raises:
            InvalidInputError: the method is not ``"likelihood"``, no events, or ``truth``
                does not match the events (count or leaf counts).
        """
        if self.method != "likelihood":
            raise InvalidInputError(f"method = {self.method!r}: only 'likelihood' is tuned")
        x, mask = as_padded(leaves, mask, 4, self.max_leaves)
        if not len(x):
            raise InvalidInputError("leaves: no events to tune on")
        events = [x[k][mask[k]] for k in range(len(x))]
        true = _as_trees(truth, [len(p) for p in events])
        measured = [subset_masses(p, self.resolution, self._total) for p in events]
        true_sets = [_node_sets(tree) for tree in true]
        weights = self._weights
        if count_weights:
            weights = _count_weights(measured, true_sets, self._masses)
        trivial = sum(len(p) < 3 for p in events)
        hard = [k for k, p in enumerate(events) if len(p) >= 3]
        scales = _first(self.resolution_scale, resolution_scales if self.resolution > 0 else ())
        shapes = _first(self.width_scale, width_scales if (self._widths > 0).any() else ())
        best: tuple[int, float, float, float] | None = None
        for resolution_scale, width_scale in itertools.product(scales, shapes):
            ratios = [
                node_log_ratio(
                    *measured[k], self._masses, self._widths, weights,
                    resolution_scale=resolution_scale, width_scale=width_scale,
                    tolerance=self.mass_tolerance, window=self.window,
                )
                for k in hard
            ]  # fmt: skip
            for penalty in _first(self.node_penalty, penalties):
                right = trivial + sum(
                    _chosen_sets(_laminar_search(ratio + penalty, len(events[k]))) == true_sets[k]
                    for k, ratio in zip(hard, ratios, strict=True)
                )
                if best is None or right > best[0]:
                    best = (right, float(penalty), float(resolution_scale), float(width_scale))
        assert best is not None
        return replace(
            self,
            mass_weights=[float(w) for w in weights],
            node_penalty=best[1],
            resolution_scale=best[2],
            width_scale=best[3],
        )

    # ------------------------------------------------------------------------ one event
    def _event(self, p: np.ndarray) -> DecayTree:
        n = len(p)
        if n < 3:
            return _trivial_tree(n)
        mass, sigma = subset_masses(p, self.resolution, self._total)
        if self.method == "window":
            gain = window_gain(
                mass, sigma, self._masses, self._widths, self.mass_tolerance, self.window
            )
        else:
            gain = self.node_penalty + node_log_ratio(
                mass, sigma, self._masses, self._widths, self._weights,
                resolution_scale=self.resolution_scale, width_scale=self.width_scale,
                tolerance=self.mass_tolerance, window=self.window,
            )  # fmt: skip
        return _tree_from_choices(_laminar_search(gain, n), n)


# ---------------------------------------------------------------------------- masses
def subset_masses(
    p: np.ndarray, resolution: float, total: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Invariant mass ``(2^n,)`` of every leaf subset (bit i = leaf i) and its uncertainty.

    Args:
        p: ``(n, 4)`` leaf 4-momenta ``(px, py, pz, E)``.
        resolution: relative resolution of each momentum component.
        total: ``(4,)`` the known sum of the leaves; with ``resolution > 0`` the momenta are
            fitted to it first (:func:`kinematic_fit`).

    Returns:
        ``mass (2^n,)`` and ``sigma (2^n,)`` (0 where ``resolution`` is 0).
    """
    if resolution > 0 and total is not None:
        fitted = kinematic_fit(p, resolution, total)
        if fitted is not None:
            return _propagated_masses(*fitted)
    return _subset_masses(p, resolution)


def kinematic_fit(
    p: np.ndarray, resolution: float, total: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Leaf momenta fitted to a known total 4-momentum, and their covariance.

    Minimises ``sum_ic (q_ic - p_ic)^2 / (resolution p_ic)^2`` subject to ``sum_i q_i = P``
    and ``sum_i E_i = E`` (``E_i`` from ``q_i`` and the leaf's measured mass), by Lagrange
    multipliers with the energy constraint linearised (``_FIT_ITERATIONS`` times).

    Args:
        p: ``(n, 4)`` measured ``(px, py, pz, E)``.
        resolution: relative resolution of each momentum component (> 0).
        total: ``(4,)`` ``(Px, Py, Pz, E)``.

    Returns:
        fitted ``(n, 4)`` 4-momenta and ``(3n, 3n)`` covariance of their momentum components
        (leaf-major: ``px_0, py_0, pz_0, px_1, ...``), or ``None`` where the constraints are
        degenerate (e.g. every leaf has ``px = 0``).
    """
    n = len(p)
    leaf_mass2 = np.maximum(p[:, 3] ** 2 - np.square(p[:, :3]).sum(1), 0.0)
    measured = p[:, :3].reshape(-1)
    variance = (resolution * measured) ** 2  # (3n,)
    q = measured.copy()
    jacobian = np.zeros((4, 3 * n))  # d(constraints) / dq
    for c in range(3):
        jacobian[c, c::3] = 1.0
    gain = np.zeros((3 * n, 4))
    for _ in range(_FIT_ITERATIONS):
        momenta = q.reshape(n, 3)
        energy = np.maximum(np.sqrt(np.square(momenta).sum(1) + leaf_mass2), 1e-300)
        jacobian[3] = (momenta / energy[:, None]).reshape(-1)
        residual = np.append(momenta.sum(0) - total[:3], energy.sum() - total[3])
        weighted = jacobian * variance  # D V  (4, 3n)
        try:
            gain = np.linalg.solve(weighted @ jacobian.T, weighted).T  # V D^T (D V D^T)^-1
        except np.linalg.LinAlgError:
            return None
        q = measured - gain @ (jacobian @ (measured - q) + residual)
    if not np.isfinite(q).all():
        return None
    covariance = np.diag(variance) - gain @ (jacobian * variance)
    momenta = q.reshape(n, 3)
    energy = np.sqrt(np.square(momenta).sum(1) + leaf_mass2)
    return np.column_stack([momenta, energy]), covariance


def _members(n: int) -> np.ndarray:
    """``(2^n, n)`` float 0/1: which leaves each subset holds (read-only; kept up to 14)."""
    return _members_cached(n) if n <= 14 else _members_of(n)


@functools.lru_cache(maxsize=16)
def _members_cached(n: int) -> np.ndarray:
    return _members_of(n)


def _members_of(n: int) -> np.ndarray:
    out = ((np.arange(1 << n)[:, None] >> np.arange(n)) & 1).astype(np.float64)
    out.flags.writeable = False
    return out


def _subset_masses(p: np.ndarray, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Invariant mass ``(2^n,)`` of every leaf subset, and its resolution uncertainty."""
    members = _members(len(p))
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


def _propagated_masses(p: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subset masses ``(2^n,)`` of ``p (n, 4)`` and their uncertainty from ``covariance``."""
    n = len(p)
    members = _members(n)
    total = members @ p
    mass = np.sqrt(np.maximum(total[:, 3] ** 2 - np.square(total[:, :3]).sum(1), 0.0))
    velocity = p[:, :3] / np.maximum(p[:, 3:4], 1e-300)  # dE_i / dp_i
    # d m_S^2 / d p_ic = 2 (E_S p_ic / E_i - P_Sc) for i in S
    jacobian = 2 * (total[:, None, 3:4] * velocity[None] - total[:, None, :3])
    jacobian = (jacobian * members[:, :, None]).reshape(1 << n, 3 * n)
    variance = np.einsum("sj,sj->s", jacobian @ covariance, jacobian)
    sigma = np.sqrt(np.maximum(variance, 0.0)) / (2 * np.maximum(mass, 1e-12))
    return mass, sigma


# ---------------------------------------------------------------------------- scores
def node_log_ratio(
    mass: np.ndarray,
    sigma: np.ndarray,
    masses: np.ndarray,
    widths: np.ndarray,
    weights: np.ndarray,
    *,
    resolution_scale: float = 1.0,
    width_scale: float = 1.0,
    tolerance: float = 1e-6,
    window: float = 3.0,
) -> np.ndarray:
    """Log-likelihood ratio, particle against no particle, of every leaf subset.

    ``log(sum_k w_k V(m_S - M_k; s_k, width_scale Gamma_k / 2)) + log(m_L)``: a Voigt profile
    per listed particle against a flat mass density on ``[0, m_L]``, ``m_L`` the mass of all
    leaves (at least the heaviest listed mass), ``s_k = sqrt((resolution_scale sigma_S)^2 +
    (tolerance M_k)^2)``. A particle without width counts only within ``window`` ``s_k`` of its
    mass (the Gaussian's tail beyond is taken as 0): on exact data the spread is the tolerance's
    alone and the peak so sharp that a chance coincidence a few tolerances away would
    still outscore the background.

    Args:
        mass, sigma: ``(2^n,)`` from :func:`subset_masses`.
        masses, widths, weights: ``(K,)`` the listed particles (``weights`` summing to 1).

    Returns:
        ``(2^n,)``, ``-inf`` for single leaves, the empty set and the whole event.
    """
    n = int(mass.size).bit_length() - 1
    spread = np.sqrt((resolution_scale * sigma[:, None]) ** 2 + (tolerance * masses) ** 2)
    half_width = np.broadcast_to(width_scale * widths / 2, spread.shape)
    offset = mass[:, None] - masses
    density = _log_voigt(offset, spread, half_width)
    density[(half_width <= 0) & (np.abs(offset) > window * spread)] = -np.inf
    full = (1 << n) - 1
    ratio = logsumexp(density + np.log(weights), axis=1) + np.log(max(mass[full], masses.max()))
    ratio[_members(n).sum(1) < 2] = -np.inf
    ratio[full] = -np.inf
    return ratio


def window_gain(
    mass: np.ndarray,
    sigma: np.ndarray,
    masses: np.ndarray,
    widths: np.ndarray,
    tolerance: float,
    window: float,
) -> np.ndarray:
    """The chi-square window's score ``(2^n,)``: ``1 - chi2 / (2 window^2)`` for a candidate
    (``chi2 <= window^2`` for its nearest mass), ``-inf`` otherwise."""
    n = int(mass.size).bit_length() - 1
    total = np.sqrt(sigma[:, None] ** 2 + (widths / 2) ** 2 + (tolerance * masses) ** 2)
    chi2 = (((mass[:, None] - masses) / total) ** 2).min(axis=1)
    candidate = (chi2 <= window**2) & (_members(n).sum(1) >= 2)
    candidate[(1 << n) - 1] = False
    return np.where(candidate, 1.0 - chi2 / (2 * window**2), -np.inf)


def _log_voigt(x: np.ndarray, sigma: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """``log`` of the Voigt profile (Gaussian ``sigma > 0`` convolved with a Cauchy of half
    width ``gamma >= 0``) at ``x``; closed-form Gaussian where ``gamma`` is 0."""
    out = np.empty_like(x)
    gauss = gamma <= 0
    out[gauss] = -0.5 * (x[gauss] / sigma[gauss]) ** 2 - np.log(
        sigma[gauss] * math.sqrt(2 * math.pi)
    )
    voigt = ~gauss
    with np.errstate(divide="ignore"):
        out[voigt] = np.log(voigt_profile(x[voigt], sigma[voigt], gamma[voigt]))
    return out


# ---------------------------------------------------------------------------- helpers
def _positive_vector(
    values: Sequence[float] | None, size: int, name: str, zero_ok: bool = False
) -> np.ndarray:
    """``values`` as ``(size,)`` float64, checked (default: zeros or ones)."""
    if values is None:
        return np.zeros(size) if zero_ok else np.ones(size)
    out = np.asarray(values, dtype=np.float64)
    bad = out.shape != (size,) or not np.isfinite(out).all()
    bad = bad or bool((out < 0).any() if zero_ok else (out <= 0).any())
    if bad:
        bound = ">= 0" if zero_ok else "> 0"
        raise InvalidInputError(f"{name}: expected {size} finite values {bound}, got {values}")
    return out


def _first(value: float, grid: Sequence[float]) -> list[float]:
    """``value`` followed by the rest of ``grid``."""
    return [value, *[v for v in grid if v != value]]


def _trivial_tree(n: int) -> DecayTree:
    return DecayTree([n] * n + [-1] if n > 1 else [-1])


def _as_trees(truth: Sequence[Any], leaf_counts: list[int]) -> list[DecayTree]:
    """``truth`` (trees or LCAG matrices, diagonal ignored) as trees, checked against events."""
    if len(truth) != len(leaf_counts):
        raise InvalidInputError(f"truth: {len(truth)} trees for {len(leaf_counts)} events")
    trees = []
    for k, (item, n) in enumerate(zip(truth, leaf_counts, strict=True)):
        if not isinstance(item, DecayTree):
            matrix = np.array(item, dtype=np.int64)
            if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1]:
                np.fill_diagonal(matrix, 0)
            item = lcag_to_tree(matrix)
        if item.n_leaves != n:
            raise InvalidInputError(
                f"truth[{k}]: a tree of {item.n_leaves} leaves, the event has {n}"
            )
        trees.append(item)
    return trees


def _node_sets(tree: DecayTree) -> frozenset[int]:
    """The leaf bit masks of a tree's inner nodes, the root aside."""
    return frozenset(
        sum(1 << leaf for leaf in tree.leaves_under(node))
        for node in tree.inner_nodes
        if node != tree.root
    )


def _count_weights(
    measured: list[tuple[np.ndarray, np.ndarray]],
    node_sets: list[frozenset[int]],
    masses: np.ndarray,
) -> np.ndarray:
    """``(K,)`` how often each listed mass is the nearest to a true node's mass, + 1, normalised."""
    counts = np.ones(masses.size)
    for (mass, _), sets in zip(measured, node_sets, strict=True):
        for subset in sets:
            counts[np.argmin(np.abs(masses - mass[subset]))] += 1
    return counts / counts.sum()


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


def _blocks(choices: np.ndarray, S: int) -> list[int]:
    """The children (leaf bit masks) of the inner node ``S`` in the best family."""
    first_f, first_g = choices
    B, rest = int(first_f[S]), S ^ int(first_f[S])
    blocks = [B]
    while rest:
        block = int(first_g[rest])
        blocks.append(block)
        rest ^= block
    return blocks


def _tree_from_choices(choices: np.ndarray, n: int) -> DecayTree:
    parents = [-1] * n
    stack = [((1 << n) - 1, -1)]  # (set, parent node id)
    while stack:
        S, parent = stack.pop()
        node = len(parents)
        parents.append(parent)
        for block in _blocks(choices, S):
            if block & (block - 1):
                stack.append((block, node))
            else:
                parents[block.bit_length() - 1] = node
    return DecayTree(parents)


def _chosen_sets(choices: np.ndarray) -> frozenset[int]:
    """The inner nodes (leaf bit masks, the root aside) of the best family."""
    n = int(choices.shape[1]).bit_length() - 1
    found: list[int] = []
    stack = [(1 << n) - 1]
    while stack:
        for block in _blocks(choices, stack.pop()):
            if block & (block - 1):
                found.append(block)
                stack.append(block)
    return frozenset(found)
