"""A decay grammar learnt from the training topologies: how likely a whole tree is.

Pair and subset scores judge leaf sets one at a time. A generative model of the tree judges it
whole: which particle each inner node is, how many children it has and of which kinds, each
node's invariant mass on its particle's line shape, and each decay uniform in its n-body phase
space. On topologies never seen in training this is what still holds: they are drawn by the
same rules, from the same particles.

Learnt from the training split's topology table (no mass list typed in):

- particles: the distinct nominal masses of the training trees' inner nodes (roots apart), with
  their widths; leaf species the distinct leaf masses;
- ``P(k | parent)``: the number of children of each particle (add-``alpha`` smoothing over the
  counts seen);
- ``P(child | parent)``: each child's particle or species given its parent's, independent
  across children (add-``alpha`` over every kind lighter than the parent).

A tree's log-likelihood sums over every assignment of particles to its inner nodes (bottom-up
messages, ``O(nodes x P^2)``) of

    prod_v P(k_v | a_v) k_v! prod_children P(a_c | a_v)
        x prod_{v not root} 2 pi Voigt_{a_v}(m_v^2) x prod_v 1 / Phi_{k_v}(m_v; m_children),

the line shape a relativistic Breit-Wigner in ``s = m^2`` convolved with the propagated mass
resolution, ``Phi_k`` the n-body phase-space volume at the measured masses. Every tree over
the same leaves is measured against the same leaf momenta, so the values compare trees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp, voigt_profile

__all__ = ["DecayGrammar", "log_massless_phase_space", "phase_space", "tree_nodes"]

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(24)
_MASS_DIGITS = 6  # nominal masses equal to this many significant digits are one particle


def two_body(M: np.ndarray, m1: float, m2: np.ndarray | float) -> np.ndarray:
    """Two-body phase-space volume ``p* / (4 pi M)`` (0 below threshold)."""
    lam = (M**2 - (m1 + m2) ** 2) * (M**2 - (m1 - m2) ** 2)
    return np.sqrt(np.maximum(lam, 0.0)) / (2 * M) / (4 * np.pi * M)


def phase_space(M: np.ndarray | float, masses: list[float]) -> np.ndarray:
    """``Phi_k(M; m_1..m_k)``, the Lorentz-invariant phase-space volume, for ``M (...)``.

    ``Phi_k = int ds / (2 pi) Phi_2(M; m_1, sqrt s) Phi_(k-1)(sqrt s; m_2..m_k)`` on 24
    Gauss-Legendre points in an angle (``s = lo + (hi - lo)(1 - cos t) / 2``, which takes the
    square-root ends), recursively: ``24^(k-2)`` evaluations.
    """
    M = np.asarray(M, dtype=np.float64)
    if len(masses) == 2:
        return two_body(M, masses[0], masses[1])
    m1, rest = masses[0], masses[1:]
    lo = sum(rest) ** 2
    span = np.maximum(np.maximum(M - m1, 0.0) ** 2 - lo, 0.0)
    t = (np.pi / 2) * (_NODES + 1)
    u = (1 - np.cos(t)) / 2
    du = (np.pi / 4) * np.sin(t) * _WEIGHTS
    s = lo + span[..., None] * u
    inner = phase_space(np.sqrt(s), rest)
    return (two_body(M[..., None], m1, np.sqrt(s)) * inner * du).sum(-1) * span / (2 * np.pi)


def log_massless_phase_space(mass: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """``(..., len(ks))`` ``log Phi_k(M)`` of ``k`` massless children at ``mass (...)``:
    ``Phi_k = (2 pi)^(4 - 3k) (pi / 2)^(k - 1) M^(2k - 4) / ((k - 1)! (k - 2)!)``."""
    const = np.array(
        [
            (4 - 3 * k) * math.log(2 * math.pi)
            + (k - 1) * math.log(math.pi / 2)
            - math.lgamma(k)
            - math.lgamma(k - 1)
            for k in ks
        ]
    )
    return const + (2 * np.asarray(ks) - 4) * np.log(np.maximum(mass, 1e-9))[..., None]


def tree_nodes(lcag: np.ndarray) -> list[tuple[int, list[int]]]:
    """Inner nodes of a valid LCAG ``(n, n)`` bottom-up as ``(leaf bit mask, children's bit
    masks)``, the root last."""
    from lcag.matrix import lcag_to_tree

    tree = lcag_to_tree(np.asarray(lcag))
    sets: dict[int, int] = {}
    order = []
    for node in reversed(list(tree.preorder())):
        if tree.is_leaf(node):
            sets[node] = 1 << node
            continue
        kids = [sets[c] for c in tree.children(node)]
        sets[node] = sum(kids)
        order.append((sets[node], kids))
    return order


@dataclass
class DecayGrammar:
    """Particles, their decays and line shapes, learnt from training trees.

    Attributes:
        roots: ``(R,)`` root masses.
        types: ``(T,)`` intermediate particles' nominal masses; ``widths (T,)`` theirs.
        species: ``(F,)`` leaf masses.
        log_root: ``(R,)`` log frequency of each root.
        log_count: ``(R + T, K + 1)`` ``log P(k children | parent)``, parents roots then types.
        log_child: ``(R + T, T + F)`` ``log P(child | parent)``, children types then species.
        resolution: relative momentum resolution of each component (the dataset's).
    """

    roots: np.ndarray
    types: np.ndarray
    widths: np.ndarray
    species: np.ndarray
    log_root: np.ndarray
    log_count: np.ndarray
    log_child: np.ndarray
    resolution: float

    @classmethod
    def from_trees(
        cls,
        trees: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
        resolution: float,
        alpha: float = 0.5,
    ) -> DecayGrammar:
        """Learn the grammar from training trees.

        Args:
            trees: per training topology ``(parents (nodes,), masses (nodes,), widths
                (nodes,))``, leaves first (:class:`lcag.tree.DecayTree`'s numbering).
            resolution: the leaves' relative momentum resolution.
            alpha: add-``alpha`` smoothing of the counts.
        """
        roots: dict[float, int] = {}
        types: dict[float, float] = {}
        species: set[float] = set()
        for parents, masses, widths in trees:
            inner = set(parents.tolist())
            for node, parent in enumerate(parents):
                m = _key(masses[node])
                if parent < 0:
                    roots[m] = roots.get(m, 0) + 1
                elif node in inner:
                    types[m] = float(widths[node])
                else:
                    species.add(m)
        root_list = sorted(roots)
        type_list = sorted(types)
        species_list = sorted(species)
        parents_all = root_list + type_list
        children_all = type_list + species_list
        P, C = len(parents_all), len(children_all)
        k_max = 2
        counts: dict[tuple[int, int], int] = {}
        child = np.zeros((P, C))
        for parents, masses, _ in trees:
            is_root = parents < 0
            for node in range(len(parents)):
                kids = np.flatnonzero(parents == node)
                if not len(kids):
                    continue
                m = _key(masses[node])
                a = root_list.index(m) if is_root[node] else len(root_list) + type_list.index(m)
                counts[a, len(kids)] = counts.get((a, len(kids)), 0) + 1
                k_max = max(k_max, len(kids))
                for c in kids:
                    child[a, children_all.index(_key(masses[c]))] += 1
        count = np.zeros((P, k_max + 1))
        for (a, k), v in counts.items():
            count[a, k] = v
        count[:, 2:] += alpha
        with np.errstate(divide="ignore"):
            log_count = np.log(count / count.sum(1, keepdims=True))
            parent_mass = np.array(parents_all)[:, None]
            lighter = np.array(children_all)[None, :] < parent_mass
            child = np.where(lighter, child + alpha, 0.0)
            log_child = np.log(child / np.maximum(child.sum(1, keepdims=True), 1e-300))
        return cls(
            roots=np.array(root_list),
            types=np.array(type_list),
            widths=np.array([types[m] for m in type_list]),
            species=np.array(species_list),
            log_root=np.log(np.array([roots[m] for m in root_list]) / sum(roots.values())),
            log_count=log_count,
            log_child=log_child,
            resolution=float(resolution),
        )

    @classmethod
    def from_dataset(cls, path: str | Any, alpha: float = 0.5) -> DecayGrammar:
        """Learn the grammar from a dataset's training topologies (the topology table's
        known ones) and its momentum resolution (the manifest's ``kinematics``)."""
        from lcag.data import LCAGDataset

        train = LCAGDataset(path, "train")
        table = train.topology_table()
        trees = []
        for index in np.flatnonzero(table.known):
            topology = table.topology(int(index))
            trees.append((topology.tree.parents, topology.tree.masses, topology.widths))
        kinematics = train.manifest.get("config", {}).get("kinematics", {})
        resolution = float(kinematics.get("momentum_resolution", 0.0))
        return cls.from_trees(trees, resolution, alpha)

    # ------------------------------------------------------------------ scoring
    def subset_masses(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(2^n,)`` invariant mass of every leaf set of ``p (n, 4)`` and its uncertainty."""
        from lcag.baselines.masses import subset_masses

        return subset_masses(p, self.resolution)

    def leaf_species(self, p: np.ndarray) -> np.ndarray:
        """``(n,)`` index into :attr:`species` of each leaf's mass (the nearest)."""
        m = np.sqrt(np.maximum(p[:, 3] ** 2 - np.square(p[:, :3]).sum(1), 0.0))
        return np.abs(m[:, None] - self.species[None, :]).argmin(1)

    def log_likelihood(
        self,
        lcags: list[np.ndarray],
        p: np.ndarray,
        masses: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """``(A,)`` log-likelihood of each tree ``(n, n)`` over the same leaves ``p (n, 4)``
        (``-inf`` where the grammar cannot make it); ``masses``: :meth:`subset_masses`, when
        already computed."""
        mass, sigma = masses if masses is not None else self.subset_masses(p)
        species = self.leaf_species(p)
        cache: dict[tuple[int, tuple[int, ...]], float] = {}
        return np.array([self._one(M, mass, sigma, species, cache) for M in lcags])

    def _one(self, lcag, mass, sigma, species, cache) -> float:
        R, T = len(self.roots), len(self.types)
        beta: dict[int, np.ndarray] = {}  # inner set -> (T,) log-likelihood below, per type
        nodes = tree_nodes(lcag)
        for index, (S, kids) in enumerate(nodes):
            k = len(kids)
            if k >= self.log_count.shape[1]:
                return -math.inf
            key = (S, tuple(sorted(kids)))
            log_phase = cache.get(key)
            if log_phase is None:
                volume = float(phase_space(mass[S], sorted((mass[c] for c in kids), reverse=True)))
                log_phase = math.log(volume) if volume > 0 else -math.inf
                cache[key] = log_phase
            message = self.log_count[:, k] + math.lgamma(k + 1) - log_phase  # (R + T,)
            for c in kids:
                if c & (c - 1):
                    message = message + logsumexp(self.log_child[:, :T] + beta[c], axis=1)
                else:
                    leaf = int(c).bit_length() - 1
                    message = message + self.log_child[:, T + species[leaf]]
            if index == len(nodes) - 1:
                return float(logsumexp(message[:R] + self.log_root))
            beta[S] = message[R:] + self._log_line(float(mass[S]), float(sigma[S]))
        return -math.inf  # pragma: no cover - a tree has a root

    def _log_line(self, m: np.ndarray | float, sigma: np.ndarray | float) -> np.ndarray:
        """``(..., T)`` ``log(2 pi x line shape)`` of each particle at masses ``m (...)``
        (in ``s``), the mass uncertainties ``sigma (...)`` propagated."""
        m = np.asarray(m, dtype=np.float64)[..., None]
        spread = np.maximum(2 * m * np.asarray(sigma)[..., None], 1e-9 * np.maximum(m * m, 1.0))
        offset = m * m - self.types**2
        gamma = self.types * self.widths
        with np.errstate(divide="ignore"):
            if (gamma > 0).any():
                density = voigt_profile(offset, spread, np.maximum(gamma, 1e-12))
            else:
                density = np.exp(-0.5 * (offset / spread) ** 2) / (spread * math.sqrt(2 * math.pi))
            return np.log(2 * math.pi * density)

    def proposal_scores(
        self, p: np.ndarray, masses: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores that exact decoding can maximise, close to the grammar's: per leaf set
        ``(2^n,)`` the log of the particles' mean line shape (``2 pi``, in ``s``; the whole
        set, the root, 0), and per
        leaf set and number of children ``(2^n, K)`` (column ``c``: ``c + 2`` children, ``K``
        the most children seen) ``log P(k) + log k!`` minus the massless phase-space volume's
        log, the last column (``K + 1`` or more) ``-inf``. For
        :func:`lcag.decode.top_k` with ``children_scores``: proposals to rerank with
        :meth:`log_likelihood`."""
        mass, sigma = masses if masses is not None else self.subset_masses(p)
        nodes = logsumexp(self._log_line(mass, sigma), axis=1) - math.log(len(self.types))
        nodes[-1] = 0.0  # the root, in every tree, is no intermediate particle
        ks = np.arange(2, self.log_count.shape[1])
        log_k = logsumexp(self.log_count[:, 2:], axis=0) - math.log(len(self.log_count))
        log_phase = log_massless_phase_space(mass, ks)
        children = log_k + np.array([math.lgamma(k + 1) for k in ks]) - log_phase
        return nodes, np.concatenate([children, np.full((len(mass), 1), -np.inf)], axis=1)

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for checkpoints)."""
        out: dict[str, Any] = {
            name: np.where(np.isfinite(v), v, -1e300).tolist()
            for name, v in self.__dict__.items()
            if isinstance(v, np.ndarray)
        }
        out["resolution"] = self.resolution
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecayGrammar:
        arrays = {
            name: np.asarray(value, dtype=np.float64)
            for name, value in data.items()
            if name != "resolution"
        }
        for name in ("log_root", "log_count", "log_child"):
            arrays[name] = np.where(arrays[name] <= -1e299, -np.inf, arrays[name])
        return cls(**arrays, resolution=float(data["resolution"]))


def _key(mass: float) -> float:
    return float(f"{float(mass):.{_MASS_DIGITS}g}")
