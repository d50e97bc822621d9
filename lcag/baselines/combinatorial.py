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
   node. With ``background`` the root is chosen too: the leaf set ``R`` maximising its root
   score (:func:`root_log_likelihood`) + the best family below it (the same programme's
   ``F[R]``) + ``background_penalty`` per leaf outside ``R``; those leaves get class 0.
4. Resolutions. One relative ``resolution``, or with a ``detector`` each leaf's momentum
   covariance from its species' response (:mod:`lcag.baselines.masses`).

The tree it returns is always valid: leaves not inside any chosen set hang from the smallest
chosen set containing them. Input is what :class:`lcag.Reconstructor` takes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.special import logsumexp, voigt_profile

from lcag.baselines.laminar import chosen_sets, laminar_search, tree_from_choices
from lcag.baselines.masses import (
    kinematic_fit,
    members,
    relative_covariance,
    subset_masses,
    subset_momentum_covariance,
)
from lcag.errors import InvalidInputError
from lcag.events import as_padded
from lcag.matrix import lcag_to_tree, tree_to_lcag
from lcag.tree import DecayTree

__all__ = [
    "METHODS",
    "CombinatorialBaseline",
    "kinematic_fit",
    "node_log_ratio",
    "root_log_likelihood",
    "subset_masses",
]

METHODS = ("likelihood", "window")
# The grid of CombinatorialBaseline.tune; the baseline's current values are tried first.
PENALTIES = (-4.0, -3.0, -2.5, -2.0, -1.5, -1.0, 0.0)
RESOLUTION_SCALES = (0.8, 1.0, 1.25)
WIDTH_SCALES = (0.75, 1.0, 1.5)
BACKGROUND_PENALTIES = (0.0, -1.0, -2.0, -4.0, -8.0)


@dataclass
class CombinatorialBaseline:
    """Reconstruction from the invariant masses of leaf subsets (see the module docstring).

    Args:
        masses: the intermediate masses that may occur (e.g. the paper's 90, 80, ..., 10).
        widths: their total widths (Breit-Wigner line shapes). Default: all 0.
        resolution: relative momentum resolution of the leaves (0 for exact data; unused
            with a ``detector``).
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
        total_momentum: ``(px, py, pz, E)`` every event's tree sums to: for the kinematic fit
            (with a resolution or a detector, without ``background``), and with
            ``background`` for the root's score. Default: none.
        detector: a per-species detector response (:class:`lcag.data_gen.config.Detector`):
            each leaf's momentum covariance from it (:func:`lcag.data_gen.detector.
            momentum_covariance`), in place of ``resolution``. Leaves then carry
            ``(px, py, pz, E, charge, is_photon)``.
        background: leaves may lie outside the tree (beam background, LCAG class 0): the tree's
            leaf set is chosen too, scored by ``root_masses`` or ``total_momentum``.
        root_masses: the masses the tree's root may have (with ``background``).
        background_penalty: added per leaf set aside (with ``background``).
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
    detector: Any = None
    background: bool = False
    root_masses: Sequence[float] | None = None
    background_penalty: float = 0.0
    _masses: np.ndarray = field(init=False, repr=False, compare=False)
    _widths: np.ndarray = field(init=False, repr=False, compare=False)
    _weights: np.ndarray = field(init=False, repr=False, compare=False)
    _total: np.ndarray | None = field(init=False, repr=False, compare=False)
    _roots: np.ndarray | None = field(init=False, repr=False, compare=False)

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
        for name in ("node_penalty", "background_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise InvalidInputError(f"{name} = {getattr(self, name)}: expected a finite value")
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
        self._roots = None
        if self.root_masses is not None:
            self._roots = _positive_vector(self.root_masses, len(self.root_masses), "root_masses")
        if self.background and self._roots is None and self._total is None:
            raise InvalidInputError(
                "background: choosing the tree's leaves needs root_masses or total_momentum"
            )

    @property
    def n_features(self) -> int:
        """Features per leaf: ``(px, py, pz, E)``, and ``charge, is_photon`` with a detector."""
        return 4 if self.detector is None else 6

    # ------------------------------------------------------------------------ public
    def reconstruct(
        self, leaves: Any, mask: np.ndarray | None = None, *, return_leaves: bool = False
    ) -> list[Any]:
        """The decay tree of every event (see the module docstring).

        Args:
            leaves: ``(N, L, F)`` with ``mask (N, L)``, a list of ``(L_i, F)`` arrays, or an
                awkward array, of ``(px, py, pz, E)`` (``F = 4``) or, with a detector,
                ``(px, py, pz, E, charge, is_photon)``.
            return_leaves: also return which event leaves each tree holds (with
                ``background``, the others are set aside).

        Returns:
            a :class:`DecayTree` per event, or with ``return_leaves`` a pair ``(tree, leaves
            (k,))``: tree leaf ``j`` is event leaf ``leaves[j]``.
        """
        found = [(tree, inside) for tree, inside, _ in self._reconstruct(leaves, mask)]
        return found if return_leaves else [tree for tree, _ in found]

    def lcag(self, leaves: Any, mask: np.ndarray | None = None) -> list[np.ndarray]:
        """:meth:`reconstruct` as LCAG matrices ``(L_i, L_i)``, class 0 for pairs with a leaf
        set aside."""
        out = []
        for tree, inside, n in self._reconstruct(leaves, mask):
            matrix = np.zeros((n, n), dtype=np.int64)
            matrix[np.ix_(inside, inside)] = tree_to_lcag(tree)
            out.append(matrix)
        return out

    def perfect_rate(
        self, leaves: Any, truth: Sequence[Any], mask: np.ndarray | None = None
    ) -> float:
        """The fraction of events whose tree is reconstructed exactly.

        Args:
            leaves, mask: as for :meth:`reconstruct`.
            truth: every event's true tree, a :class:`DecayTree` or an ``(L_i, L_i)`` LCAG
                matrix (the diagonal is ignored; rows of class 0 mark background leaves).
        """
        x, mask = as_padded(leaves, mask, self.n_features, self.max_leaves)
        if not len(x):
            raise InvalidInputError("leaves: no events")
        events = [x[k][mask[k]] for k in range(len(x))]
        true = _truth_sets(truth, [len(p) for p in events])
        found = [_event_sets(*self._search(p)) if len(p) >= 2 else None for p in events]
        right = sum(f is None or f == t for f, t in zip(found, true, strict=True))
        return right / len(events)

    def tune(
        self,
        leaves: Any,
        truth: Sequence[Any],
        mask: np.ndarray | None = None,
        *,
        penalties: Sequence[float] = PENALTIES,
        resolution_scales: Sequence[float] = RESOLUTION_SCALES,
        width_scales: Sequence[float] = WIDTH_SCALES,
        background_penalties: Sequence[float] = BACKGROUND_PENALTIES,
        count_weights: bool = True,
    ) -> CombinatorialBaseline:
        """A copy with its free parameters chosen on events of known trees (the validation split).

        With ``count_weights``, ``mass_weights`` become how often each mass is a true node's
        nearest listed mass (each count + 1). Then every combination of ``node_penalty`` in
        ``penalties``, ``resolution_scale`` in ``resolution_scales`` (only with a resolution
        or a detector) and ``width_scale`` in ``width_scales`` (only when a width is
        non-zero) is tried, and the one with the most exactly reconstructed trees is kept;
        with ``background``, ``background_penalty`` is then chosen from
        ``background_penalties`` at those values. The baseline's current values are tried
        first and win ties.

        Args:
            leaves, mask: as for :meth:`reconstruct`.
            truth: every event's true tree, a :class:`DecayTree` or an ``(L_i, L_i)`` LCAG
                matrix (the diagonal is ignored; rows of class 0 mark background leaves).

        Raises:
            InvalidInputError: the method is not ``"likelihood"``, no events, or ``truth``
                does not match the events (count or leaf counts).
        """
        if self.method != "likelihood":
            raise InvalidInputError(f"method = {self.method!r}: only 'likelihood' is tuned")
        x, mask = as_padded(leaves, mask, self.n_features, self.max_leaves)
        if not len(x):
            raise InvalidInputError("leaves: no events to tune on")
        events = [x[k][mask[k]] for k in range(len(x))]
        true = _truth_sets(truth, [len(p) for p in events])
        measured = [self._masses_of(p) for p in events]  # the scales below do not change them
        weights = self._weights
        if count_weights:
            masses = [m[:2] for m in measured]
            weights = _count_weights(masses, [sets for _, sets in true], self._masses)
        tuned = replace(self, mass_weights=[float(w) for w in weights])
        hard = [k for k, p in enumerate(events) if len(p) >= 3 or self.background]
        trivial = len(events) - len(hard)
        smeared = self.resolution > 0 or self.detector is not None
        scales = _first(self.resolution_scale, resolution_scales if smeared else ())
        shapes = _first(self.width_scale, width_scales if (self._widths > 0).any() else ())
        best: tuple[int, dict[str, float]] | None = None
        for resolution_scale, width_scale in itertools.product(scales, shapes):
            trial = replace(tuned, resolution_scale=resolution_scale, width_scale=width_scale)
            scores = [trial._scores(events[k], False, measured[k]) for k in hard]
            for penalty in _first(self.node_penalty, penalties):
                right = trivial + sum(
                    _best_sets(ratio + penalty, root, self.background_penalty) == true[k]
                    for k, (ratio, root) in zip(hard, scores, strict=True)
                )
                if best is None or right > best[0]:
                    best = (right, {"node_penalty": float(penalty),
                                    "resolution_scale": float(resolution_scale),
                                    "width_scale": float(width_scale)})  # fmt: skip
        assert best is not None
        tuned = replace(tuned, **best[1])
        if not self.background:
            return tuned
        scores = [tuned._scores(events[k], True, measured[k]) for k in hard]
        best_background = (-1, self.background_penalty)
        for background_penalty in _first(self.background_penalty, background_penalties):
            right = sum(
                _best_sets(gain, root, background_penalty) == true[k]
                for k, (gain, root) in zip(hard, scores, strict=True)
            )
            if right > best_background[0]:
                best_background = (right, float(background_penalty))
        return replace(tuned, background_penalty=best_background[1])

    # ------------------------------------------------------------------------ one event
    def _reconstruct(
        self, leaves: Any, mask: np.ndarray | None
    ) -> list[tuple[DecayTree, np.ndarray, int]]:
        """Per event: the tree, the event leaves it holds ``(k,)`` and the event's leaf count."""
        x, mask = as_padded(leaves, mask, self.n_features, self.max_leaves)
        found = []
        for event in range(len(x)):
            p = x[event][mask[event]]
            if len(p) < 2:
                found.append((_trivial_tree(len(p)), np.arange(len(p)), len(p)))
            else:
                found.append((*tree_from_choices(*self._search(p)), len(p)))
        return found

    def _masses_of(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Subset masses and uncertainties ``(2^n,)`` of one event ``(n, F)``, and each leaf's
        momentum covariance ``(n, 3, 3)`` (``None`` without a detector, or without
        background for a relative resolution)."""
        p = x[:, :4]
        covariance = None
        if self.detector is not None:
            from lcag.data_gen.detector import momentum_covariance

            covariance = momentum_covariance(x, self.detector)
        elif self.resolution > 0 and self.background:  # for the root's score only
            covariance = relative_covariance(p, self.resolution)
        fit = None if self.background else self._total
        if self.detector is None:
            return (*subset_masses(p, self.resolution, fit), covariance)
        return (*subset_masses(p, 0.0, fit, covariance), covariance)

    def _scores(
        self,
        x: np.ndarray,
        with_penalty: bool = True,
        measured: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Every subset's score as an inner node ``(2^n,)``, and with ``background`` as the
        root ``(2^n,)`` (``None`` without); ``measured``: :meth:`_masses_of` of ``x`` when
        already computed."""
        mass, sigma, covariance = self._masses_of(x) if measured is None else measured
        if self.method == "window":
            gain = window_gain(
                mass, sigma, self._masses, self._widths, self.mass_tolerance, self.window
            )
        else:
            gain = node_log_ratio(
                mass, sigma, self._masses, self._widths, self._weights,
                resolution_scale=self.resolution_scale, width_scale=self.width_scale,
                tolerance=self.mass_tolerance, window=self.window,
            )  # fmt: skip
            if with_penalty:
                gain = gain + self.node_penalty
        if not self.background:
            return gain, None
        if covariance is None:
            covariance = np.zeros((len(x), 3, 3))
        root = root_log_likelihood(
            x[:, :4], covariance, mass, sigma, self._roots, self._total,
            resolution_scale=self.resolution_scale, tolerance=self.mass_tolerance,
        )  # fmt: skip
        return gain, root

    def _search(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """The best family's choices and its root (a leaf bit mask) for one event ``(n, F)``."""
        gain, root = self._scores(x)
        return _best(gain, root, self.background_penalty)


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
    ratio[members(n).sum(1) < 2] = -np.inf
    ratio[full] = -np.inf
    return ratio


def root_log_likelihood(
    p: np.ndarray,
    covariance: np.ndarray,
    mass: np.ndarray,
    sigma: np.ndarray,
    root_masses: np.ndarray | None,
    total: np.ndarray | None,
    *,
    resolution_scale: float = 1.0,
    tolerance: float = 1e-6,
) -> np.ndarray:
    """Log-likelihood ``(2^n,)`` of every leaf subset being the whole tree (the root's leaves).

    With ``total`` (the tree's known 4-momentum): a 4-dimensional Gaussian of the subset's
    summed 4-momentum about it, covariance propagated from the leaves (times
    ``resolution_scale^2``) plus ``(tolerance E)^2`` per component. Otherwise the subset's mass
    against ``root_masses``: a Gaussian of ``s = sqrt((resolution_scale sigma_S)^2 +
    (tolerance M)^2)``, averaged over the listed masses.

    Args:
        p: ``(n, 4)`` leaf 4-momenta.
        covariance: ``(n, 3, 3)`` each leaf's momentum covariance.
        mass, sigma: ``(2^n,)`` from :func:`subset_masses`.
        root_masses: ``(K,)`` the root's possible masses (used without ``total``).
        total: ``(4,)`` ``(Px, Py, Pz, E)``.

    Returns:
        ``(2^n,)``, ``-inf`` for subsets of fewer than two leaves.
    """
    n = len(p)
    if total is not None:
        residual = members(n) @ p - total  # (2^n, 4)
        spread = resolution_scale**2 * subset_momentum_covariance(p, covariance)
        spread = spread + np.eye(4) * (tolerance * total[3]) ** 2
        chi2 = np.einsum("si,si->s", residual, np.linalg.solve(spread, residual[..., None])[..., 0])
        log_det = np.linalg.slogdet(spread)[1]
        score = -0.5 * (chi2 + log_det) - 2 * math.log(2 * math.pi)
    else:
        assert root_masses is not None
        spread = np.hypot(resolution_scale * sigma[:, None], tolerance * root_masses)
        density = -0.5 * ((mass[:, None] - root_masses) / spread) ** 2 - np.log(
            spread * math.sqrt(2 * math.pi)
        )
        score = logsumexp(density, axis=1) - math.log(root_masses.size)
    score[members(n).sum(1) < 2] = -np.inf
    return score


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
    candidate = (chi2 <= window**2) & (members(n).sum(1) >= 2)
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


def _truth_sets(truth: Sequence[Any], leaf_counts: list[int]) -> list[tuple[int, frozenset[int]]]:
    """Every true tree as ``(root, inner nodes)`` leaf bit masks of the event's leaves (the
    root aside from the inner nodes), checked against the events.

    ``truth`` holds trees or LCAG matrices (diagonal ignored); in a matrix, leaves whose row is
    all class 0 are background, outside the tree.
    """
    if len(truth) != len(leaf_counts):
        raise InvalidInputError(f"truth: {len(truth)} trees for {len(leaf_counts)} events")
    out = []
    for k, (item, n) in enumerate(zip(truth, leaf_counts, strict=True)):
        inside = np.arange(n)
        if not isinstance(item, DecayTree):
            matrix = np.array(item, dtype=np.int64)
            if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1]:
                np.fill_diagonal(matrix, 0)
                if matrix.shape[0] == n and n > 1:
                    inside = np.flatnonzero(matrix.any(axis=1))
                    matrix = matrix[np.ix_(inside, inside)]
            item = lcag_to_tree(matrix)
        if item.n_leaves != len(inside) or (inside.size and inside.max() >= n):
            raise InvalidInputError(
                f"truth[{k}]: a tree of {item.n_leaves} leaves, the event has {n}"
            )
        bits = [1 << int(leaf) for leaf in inside]
        sets = frozenset(sum(bits[j] for j in subset) for subset in _inner_leaf_sets(item))
        out.append((sum(bits), sets))
    return out


def _inner_leaf_sets(tree: DecayTree) -> list[list[int]]:
    """The leaves under each inner node of ``tree``, the root aside."""
    return [list(tree.leaves_under(node)) for node in tree.inner_nodes if node != tree.root]


def _best(
    gain: np.ndarray, root: np.ndarray | None, background_penalty: float
) -> tuple[np.ndarray, int]:
    """The best family's choices for node scores ``gain (2^n,)`` and its root: the whole
    event, or with root scores ``root (2^n,)`` the best leaf set (``background_penalty`` per
    leaf outside it)."""
    n = int(gain.size).bit_length() - 1
    choices, below = laminar_search(gain, n)
    if root is None:
        return choices, (1 << n) - 1
    outside = n - members(n).sum(1)
    total = root + below + background_penalty * outside
    return choices, int(np.argmax(total))


def _best_sets(
    gain: np.ndarray, root: np.ndarray | None, background_penalty: float
) -> tuple[int, frozenset[int]]:
    """:func:`_best` as ``(root, inner nodes)`` leaf bit masks."""
    return _event_sets(*_best(gain, root, background_penalty))


def _event_sets(choices: np.ndarray, root: int) -> tuple[int, frozenset[int]]:
    return root, chosen_sets(choices, root)


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
