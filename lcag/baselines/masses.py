"""Invariant masses of every leaf subset, their uncertainties, and the kinematic fit.

Leaf subsets are bit masks (bit ``i`` = leaf ``i``); every function returns one value per
subset, ``(2^n,)``. Uncertainties come from the leaves' momentum covariance: either one
relative resolution ``r`` for every component (``Var(p_ic) = (r p_ic)^2``, as the random
topologies smear them) or a per-leaf ``(n, 3, 3)`` covariance (a detector response, e.g.
:func:`lcag.data_gen.detector.momentum_covariance`). The energy of a leaf follows its momentum
at fixed mass (``dE_i / dp_i = p_i / E_i``).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "kinematic_fit",
    "members",
    "relative_covariance",
    "subset_masses",
    "subset_momentum_covariance",
]

# Linearisations of the energy constraint: on realistic.yaml events a fourth would move the
# fitted momenta by 2e-9 of their size at most, and the third leaves sum E off by 3e-12.
_FIT_ITERATIONS = 3


def subset_masses(
    p: np.ndarray,
    resolution: float,
    total: np.ndarray | None = None,
    covariance: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Invariant mass ``(2^n,)`` of every leaf subset (bit i = leaf i) and its uncertainty.

    Args:
        p: ``(n, 4)`` leaf 4-momenta ``(px, py, pz, E)``.
        resolution: relative resolution of each momentum component (used without
            ``covariance``).
        total: ``(4,)`` the known sum of the leaves; with a resolution or a covariance the
            momenta are first fitted to it (:func:`kinematic_fit`).
        covariance: ``(n, 3, 3)`` each leaf's momentum covariance, in place of ``resolution``.

    Returns:
        ``mass (2^n,)`` and ``sigma (2^n,)`` (0 without resolution and covariance).
    """
    if covariance is None and resolution <= 0:
        return _subset_masses(p, 0.0)
    if total is not None:
        fitted = kinematic_fit(p, resolution, total, covariance)
        if fitted is not None:
            return _propagated_masses(*fitted)
    if covariance is None:
        return _subset_masses(p, resolution)
    return _propagated_masses(p, _block_diagonal(covariance))


def kinematic_fit(
    p: np.ndarray,
    resolution: float,
    total: np.ndarray,
    covariance: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Leaf momenta fitted to a known total 4-momentum, and their covariance.

    Minimises ``(q - p)^T V^-1 (q - p)`` over the momentum components subject to
    ``sum_i q_i = P`` and ``sum_i E_i = E`` (``E_i`` from ``q_i`` and the leaf's measured
    mass), by Lagrange multipliers with the energy constraint linearised
    (``_FIT_ITERATIONS`` times). ``V`` is ``diag((resolution p_ic)^2)`` or, given, the
    leaves' ``covariance``.

    Args:
        p: ``(n, 4)`` measured ``(px, py, pz, E)``.
        resolution: relative resolution of each momentum component (> 0 without
            ``covariance``).
        total: ``(4,)`` ``(Px, Py, Pz, E)``.
        covariance: ``(n, 3, 3)`` each leaf's momentum covariance.

    Returns:
        fitted ``(n, 4)`` 4-momenta and ``(3n, 3n)`` covariance of their momentum components
        (leaf-major: ``px_0, py_0, pz_0, px_1, ...``), or ``None`` where the constraints are
        degenerate (e.g. every leaf has ``px = 0``).
    """
    n = len(p)
    leaf_mass2 = np.maximum(p[:, 3] ** 2 - np.square(p[:, :3]).sum(1), 0.0)
    measured = p[:, :3].reshape(-1)
    if covariance is None:
        variance = np.diag((resolution * measured) ** 2)  # (3n, 3n)
    else:
        variance = _block_diagonal(covariance)
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
        weighted = jacobian @ variance  # D V  (4, 3n)
        try:
            gain = np.linalg.solve(weighted @ jacobian.T, weighted).T  # V D^T (D V D^T)^-1
        except np.linalg.LinAlgError:
            return None
        q = measured - gain @ (jacobian @ (measured - q) + residual)
    if not np.isfinite(q).all():
        return None
    fitted_covariance = variance - gain @ (jacobian @ variance)
    momenta = q.reshape(n, 3)
    energy = np.sqrt(np.square(momenta).sum(1) + leaf_mass2)
    return np.column_stack([momenta, energy]), fitted_covariance


def relative_covariance(p: np.ndarray, resolution: float) -> np.ndarray:
    """``(n, 3, 3)`` diagonal momentum covariance of one relative resolution per component."""
    return np.eye(3) * ((resolution * p[:, :3]) ** 2)[:, None, :]


def subset_momentum_covariance(p: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """``(2^n, 4, 4)`` covariance of every subset's summed ``(px, py, pz, E)``.

    Args:
        p: ``(n, 4)`` leaf 4-momenta.
        covariance: ``(n, 3, 3)`` each leaf's momentum covariance (leaves independent).
    """
    n = len(p)
    jacobian = np.zeros((n, 4, 3))  # d(px, py, pz, E) / d(px, py, pz)
    jacobian[:, :3, :] = np.eye(3)
    jacobian[:, 3, :] = p[:, :3] / np.maximum(p[:, 3:4], 1e-300)
    leaf = jacobian @ covariance @ np.swapaxes(jacobian, 1, 2)  # (n, 4, 4)
    return (members(n) @ leaf.reshape(n, 16)).reshape(1 << n, 4, 4)


def members(n: int) -> np.ndarray:
    """``(2^n, n)`` float 0/1: which leaves each subset holds (read-only; kept up to 14)."""
    return _members_cached(n) if n <= 14 else _members_of(n)


@functools.lru_cache(maxsize=16)
def _members_cached(n: int) -> np.ndarray:
    return _members_of(n)


def _members_of(n: int) -> np.ndarray:
    out = ((np.arange(1 << n)[:, None] >> np.arange(n)) & 1).astype(np.float64)
    out.flags.writeable = False
    return out


def _block_diagonal(covariance: np.ndarray) -> np.ndarray:
    """``(n, 3, 3)`` per-leaf blocks as one ``(3n, 3n)`` matrix (leaf-major)."""
    n = len(covariance)
    out = np.zeros((n, 3, n, 3))
    out[np.arange(n), :, np.arange(n), :] = covariance
    return out.reshape(3 * n, 3 * n)


def _subset_masses(p: np.ndarray, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Invariant mass ``(2^n,)`` of every leaf subset, and its resolution uncertainty.

    ``Var(m_S^2) = 4 r^2 sum_{i in S} sum_c p_ic^2 (E_S p_ic / E_i - P_Sc)^2`` and
    ``sigma_S = sqrt(Var) / (2 m_S)``, in closed form.
    """
    inside = members(len(p))
    total = inside @ p  # (2^n, 4)
    m2 = total[:, 3] ** 2 - np.square(total[:, :3]).sum(1)
    mass = np.sqrt(np.maximum(m2, 0.0))
    if resolution <= 0:
        return mass, np.zeros_like(mass)
    energy = p[:, 3:4]
    a = inside @ (p[:, :3] ** 4 / energy**2).sum(1)  # sum_i sum_c p^4 / E_i^2
    b = inside @ (p[:, :3] ** 3 / energy)  # (2^n, 3)
    c = inside @ (p[:, :3] ** 2)  # (2^n, 3)
    e_s, p_s = total[:, 3], total[:, :3]
    variance = 4 * resolution**2 * (e_s**2 * a - 2 * e_s * (p_s * b).sum(1) + (p_s**2 * c).sum(1))
    sigma = np.sqrt(np.maximum(variance, 0.0)) / (2 * np.maximum(mass, 1e-12))
    return mass, sigma


def _propagated_masses(p: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subset masses ``(2^n,)`` of ``p (n, 4)`` and their uncertainty from ``covariance``
    ``(3n, 3n)`` (leaf-major momentum components)."""
    n = len(p)
    inside = members(n)
    total = inside @ p
    mass = np.sqrt(np.maximum(total[:, 3] ** 2 - np.square(total[:, :3]).sum(1), 0.0))
    velocity = p[:, :3] / np.maximum(p[:, 3:4], 1e-300)  # dE_i / dp_i
    # d m_S^2 / d p_ic = 2 (E_S p_ic / E_i - P_Sc) for i in S
    jacobian = 2 * (total[:, None, 3:4] * velocity[None] - total[:, None, :3])
    jacobian = (jacobian * inside[:, :, None]).reshape(1 << n, 3 * n)
    variance = np.einsum("sj,sj->s", jacobian @ covariance, jacobian)
    sigma = np.sqrt(np.maximum(variance, 0.0)) / (2 * np.maximum(mass, 1e-12))
    return mass, sigma
