"""Decay topologies for generation, and the paper's random topology sampler.

A :class:`Topology` is a :class:`~lcag.tree.DecayTree` whose nodes carry nominal masses (and,
from decay tables, names and PDG ids), plus a total width per node (0 = fixed mass).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lcag.data_gen.config import RandomTopologies
from lcag.errors import ConfigError
from lcag.tree import DecayTree

__all__ = ["Topology", "sample_random_topologies"]


@dataclass(frozen=True, eq=False)
class Topology:
    """A decay tree with nominal masses and widths.

    Attributes:
        tree: the decay tree; ``tree.masses`` holds every node's nominal mass.
        widths: ``(n_nodes,)`` total widths; 0 where the mass is fixed (always for leaves).
    """

    tree: DecayTree
    widths: np.ndarray

    def __post_init__(self) -> None:
        if self.tree.masses is None:
            raise ValueError("Topology: the tree needs node masses")
        widths = np.asarray(self.widths, dtype=np.float64)
        if widths.shape != (self.tree.n_nodes,):
            raise ValueError(
                f"Topology: widths shape {widths.shape}, expected ({self.tree.n_nodes},)"
            )
        widths = widths.copy()
        widths[: self.tree.n_leaves] = 0.0
        widths.flags.writeable = False
        object.__setattr__(self, "widths", widths)

    @property
    def n_leaves(self) -> int:
        return self.tree.n_leaves

    @property
    def depth(self) -> int:
        return self.tree.depth

    def thresholds(self) -> np.ndarray:
        """``(n_nodes,)`` lightest mass each node can take: its own mass when fixed, else the
        sum of its children's thresholds."""
        tree = self.tree
        out = np.array(tree.masses, dtype=np.float64)
        for node in reversed(list(tree.preorder())):
            if not tree.is_leaf(node) and self.widths[node] > 0:
                out[node] = sum(out[c] for c in tree.children(node))
        return out

    def forbidden_decay(self) -> int | None:
        """The first fixed-mass node whose children cannot fit in its mass, or ``None``."""
        low = self.thresholds()
        tree = self.tree
        for node in tree.preorder():
            if tree.is_leaf(node) or self.widths[node] > 0:
                continue
            if not sum(low[c] for c in tree.children(node)) < tree.masses[node]:
                return node
        return None

    def key(self) -> tuple:
        """Equal for two topologies that differ only by leaf order (labels compared)."""
        return self.tree.canonical_form(leaf_ids=False, labels=True)


def sample_random_topologies(
    cfg: RandomTopologies, count: int, rng: np.random.Generator, max_attempts: int = 1_000_000
) -> list[Topology]:
    """Draw ``count`` random topologies following the paper's protocol.

    Args:
        cfg: the protocol's settings (masses, depth, children, weights, filters).
        count: how many topologies to return.
        rng: the random generator; the result depends only on its state.
        max_attempts: draws allowed before concluding the filters cannot be met.

    Raises:
        ConfigError: the filters (leaf counts, uniqueness) reject too many draws.
    """
    found: list[Topology] = []
    seen: set[tuple] = set()
    attempts = 0
    while len(found) < count:
        attempts += 1
        if attempts > max_attempts:
            raise ConfigError(
                f"random: only {len(found)} of {count} topologies passed the filters "
                f"(min_leaves={cfg.min_leaves}, max_leaves={cfg.max_leaves}, unique={cfg.unique}) "
                f"in {max_attempts} draws; loosen them or ask for fewer topologies"
            )
        topology = _draw(cfg, rng)
        n = topology.n_leaves
        if n < cfg.min_leaves or (cfg.max_leaves is not None and n > cfg.max_leaves):
            continue
        if cfg.unique:
            key = topology.key()
            if key in seen:
                continue
            seen.add(key)
        found.append(topology)
    return found


def _draw(cfg: RandomTopologies, rng: np.random.Generator) -> Topology:
    """One topology: breadth-first, each particle's children drawn against its remaining mass."""
    fs = sorted(cfg.final_state_masses)
    inter = sorted(cfg.intermediate_masses)
    lightest = fs[0]
    p_final = len(fs) / (len(fs) + cfg.intermediate_weight * len(inter)) if inter else 1.0
    # nodes: (mass, parent, level); level 1 is the root
    masses: list[float] = [cfg.root_mass]
    parents: list[int] = [-1]
    levels: list[int] = [1]
    is_final: list[bool] = [False]
    queue = [0]
    while queue:
        node = queue.pop(0)
        mass = masses[node]
        # n children of the lightest final state must fit strictly below the mass
        most = min(cfg.max_children, int(np.ceil(mass / lightest)) - 1)
        n_children = int(rng.integers(cfg.min_children, most + 1))
        remaining = mass
        child_level = levels[node] + 1
        for k in range(n_children):
            budget = remaining - (n_children - k - 1) * lightest  # keep room for the others
            fitting_inter = [m for m in inter if m < budget]
            fitting_fs = [m for m in fs if m < budget]
            final = child_level >= cfg.max_depth or not fitting_inter or rng.random() < p_final
            child_mass = float(rng.choice(fitting_fs if final else fitting_inter))
            remaining -= child_mass
            masses.append(child_mass)
            parents.append(node)
            levels.append(child_level)
            is_final.append(final)
            if not final:
                queue.append(len(masses) - 1)
    return _as_topology(masses, parents, is_final, cfg.relative_width)


def _as_topology(
    masses: list[float], parents: list[int], is_final: list[bool], relative_width: float
) -> Topology:
    """Renumber breadth-first nodes so leaves come first, as DecayTree requires."""
    leaves = [i for i, final in enumerate(is_final) if final]
    inner = [i for i, final in enumerate(is_final) if not final]
    new_id = {old: new for new, old in enumerate(leaves + inner)}
    order = leaves + inner
    tree = DecayTree(
        [-1 if parents[i] < 0 else new_id[parents[i]] for i in order],
        masses=[masses[i] for i in order],
        names=[_mass_name(masses[i]) for i in order],
    )
    widths = np.array([0.0 if is_final[i] else relative_width * masses[i] for i in order])
    return Topology(tree, widths)


def _mass_name(mass: float) -> str:
    return f"m{mass:g}"
