"""Decay topologies drawn from EvtGen decay tables (``.DEC`` files), by branching fraction.

A chain starts at ``cfg.mother``. Every decaying particle picks one of its decay modes with
probability proportional to the mode's branching fraction (normalised over that particle's
modes; modes with a zero fraction are never drawn), then each daughter is drawn the same way.
Particles named in ``cfg.stable`` are the leaves. Only the given numpy generator is used, so the
same generator state gives the same topologies.

A drawn chain is rejected, and another one drawn, when:

* it reaches a particle that is not stable and has no decays in the table (neutrinos, quarks of
  inclusive modes, ...): it would be an invisible or undecayed leaf;
* it reaches a particle the ``particle`` package cannot name or give a mass (some excited states);
* a fixed-mass node cannot decay into its children's nominal masses (thresholds of broad ones),
  see :meth:`Topology.forbidden_decay`;
* its leaf count is outside ``[min_leaves, max_leaves]`` or its depth exceeds ``max_depth``;
* with ``unique``, its :meth:`Topology.key` was already returned.

A mode with a single daughter (``K0 -> K_S0`` and ``K0 -> K_L0`` in the shipped tables) is not a
decay: the node is collapsed into its daughter, so ``K0`` becomes a ``K_S0`` node or a ``K_L0``
leaf. Table aliases (``K*0R``, ``B0sig``, ...) keep their own decays but nodes carry the real
particle's name. Masses and widths are in GeV, from the ``particle`` package (which gives MeV);
with ``use_widths`` a node whose width is below ``1e-6`` of its mass is fixed (width 0), and leaves
always are. Tables are parsed once per path; the decay modes of each particle are read lazily
and cached (expanding a whole chain with ``build_decay_chains`` at once takes minutes for B0).
"""

from __future__ import annotations

import difflib
import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from decaylanguage import DecFileParser, data
from particle import InvalidParticle, Particle, ParticleNotFound
from particle.exceptions import MatchingIDNotFound

from lcag.data_gen.config import DecFileChains
from lcag.data_gen.topology import Topology
from lcag.errors import ConfigError
from lcag.tree import DecayTree

__all__ = ["sample_decfile_topologies"]

_MIN_RELATIVE_WIDTH = 1e-6  # below this width / mass, the mass is fixed
_MAX_NODES = 500  # nodes per chain: a guard against cyclic tables and deep recursion
_LOOKUP_ERRORS = (MatchingIDNotFound, ParticleNotFound, InvalidParticle)


def sample_decfile_topologies(
    cfg: DecFileChains, count: int, rng: np.random.Generator
) -> list[Topology]:
    """Draw ``count`` decay chains of ``cfg.mother`` from an EvtGen table, in the order drawn.

    Raises:
        ConfigError: unknown table, mother or stable particle name, or the filters rejected
            the chains of ``cfg.max_attempts`` draws before ``count`` were found.
    """
    table = _table(str(_resolve_dec_file(cfg.dec_file)))
    stable = _check_stable(cfg.stable, table)
    _check_mother(cfg.mother, table)
    _mother_modes(table, cfg)
    found: list[Topology] = []
    seen: set[tuple] = set()
    rejected: Counter[str] = Counter()
    attempts = 0
    while len(found) < count:
        attempts += 1
        if attempts > cfg.max_attempts:
            reasons = ", ".join(f"{n} {why}" for why, n in rejected.most_common(4))
            raise ConfigError(
                f"decfile: only {len(found)} of {count} {cfg.mother} chains from {cfg.dec_file} "
                f"passed the filters (min_leaves={cfg.min_leaves}, max_leaves={cfg.max_leaves}, "
                f"max_depth={cfg.max_depth}, unique={cfg.unique}) in {cfg.max_attempts} draws; "
                f"rejected: {reasons}. Loosen the filters or ask for fewer topologies"
            )
        try:
            topology = _to_topology(_draw(table, cfg, stable, rng), cfg.use_widths)
        except _Reject as reject:
            rejected[reject.reason] += 1
            continue
        n = topology.n_leaves
        if n < cfg.min_leaves or (cfg.max_leaves is not None and n > cfg.max_leaves):
            rejected["outside the leaf-count range"] += 1
        elif topology.forbidden_decay() is not None:
            rejected["kinematically forbidden"] += 1
        elif cfg.unique and (key := topology.key()) in seen:
            rejected["duplicates"] += 1
        else:
            if cfg.unique:
                seen.add(key)
            found.append(topology)
    return found


# ------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class _Info:
    """A particle's name, PDG id, mass and width (GeV)."""

    name: str
    pdg_id: int
    mass: float
    width: float


@dataclass
class _Node:
    info: _Info
    children: list[_Node] = field(default_factory=list)


class _Reject(Exception):  # noqa: N818 - control flow, never leaves this module
    """A drawn chain is unusable; ``reason`` says why (counted in the final error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Table:
    """A parsed ``.DEC`` file with per-particle decay modes read on demand."""

    def __init__(self, path: str) -> None:
        self.name = Path(path).name
        try:
            self.parser = DecFileParser(path)
            self.parser.parse()
        except Warning:
            raise  # a warning turned into an error by the caller's filters is theirs
        except Exception as exc:  # lark and decaylanguage raise many kinds
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            raise ConfigError(
                f"decfile.dec_file = {path!r}: not a valid decay table: {lines[0]}"
            ) from None
        self.aliases = self.parser.dict_aliases()
        self.mothers = frozenset(self.parser.list_decay_mother_names())
        self._modes: dict[str, tuple[list[tuple[str, ...]], np.ndarray] | None] = {}

    def real_name(self, name: str) -> str:
        """The particle behind an alias (``K*0R`` -> ``K*0``), else ``name``."""
        for _ in range(10):
            if name not in self.aliases:
                break
            name = self.aliases[name]
        return name

    def info(self, name: str) -> _Info | None:
        return _particle_info(self.real_name(name))

    def modes(self, name: str) -> tuple[list[tuple[str, ...]], np.ndarray] | None:
        """Daughter lists and cumulative branching fractions (positive ones only), or None."""
        if name not in self._modes:
            self._modes[name] = None
            if name in self.mothers:
                # One level only: every daughter listed as stable stops the expansion.
                one_level = {d for fs in self.parser.list_decay_modes(name) for d in fs} | {name}
                chains = self.parser.build_decay_chains(name, stable_particles=one_level)[name]
                kept = [(tuple(m["fs"]), float(m["bf"])) for m in chains if m["bf"] > 0 and m["fs"]]
                if kept:
                    self._modes[name] = ([fs for fs, _ in kept], np.cumsum([b for _, b in kept]))
        return self._modes[name]


@functools.lru_cache(maxsize=4)
def _table(path: str) -> _Table:
    return _Table(path)


@functools.cache
def _particle_info(name: str) -> _Info | None:
    try:
        particle = Particle.from_evtgen_name(name)
    except _LOOKUP_ERRORS:
        return None
    if particle.mass is None:
        return None
    mass = particle.mass / 1000.0
    width = (particle.width or 0.0) / 1000.0
    if not mass > 0 or width / mass < _MIN_RELATIVE_WIDTH:
        width = 0.0
    return _Info(name, int(particle.pdgid), mass, width)


def _shipped_names() -> list[str]:
    return sorted(p.name for p in Path(data.basepath).glob("*.DEC"))


def _resolve_dec_file(name: str) -> Path:
    shipped = _shipped_names()
    if name in shipped:
        return (Path(data.basepath) / name).resolve()
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    raise ConfigError(
        f"decfile.dec_file = {name!r}: neither a table shipped with decaylanguage "
        f"({', '.join(shipped)}) nor an existing file"
    )


def _check_stable(names: list[str], table: _Table) -> frozenset[str]:
    for i, name in enumerate(names):
        try:
            particle = Particle.from_evtgen_name(table.real_name(name))
        except _LOOKUP_ERRORS:
            raise ConfigError(
                f"decfile.stable[{i}] = {name!r}: not a particle name known to the 'particle' "
                "package (EvtGen names, e.g. 'pi+', 'K_L0', 'anti-p-')"
            ) from None
        if particle.mass is None:
            raise ConfigError(f"decfile.stable[{i}] = {name!r}: the particle has no known mass")
    return frozenset(names)


def _check_mother(mother: str, table: _Table) -> None:
    if mother not in table.mothers:
        close = difflib.get_close_matches(mother, sorted(table.mothers), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(f"decfile.mother = {mother!r}: no decays of it in {table.name}{hint}")
    if table.info(mother) is None:
        raise ConfigError(f"decfile.mother = {mother!r}: the 'particle' package gives no mass")
    if table.modes(mother) is None:
        raise ConfigError(
            f"decfile.mother = {mother!r}: no mode with a positive branching fraction"
        )


# ----------------------------------------------------------------------------- sampling
def _mother_modes(
    table: _Table, cfg: DecFileChains
) -> tuple[list[tuple[str, ...]], np.ndarray] | None:
    """The mother's modes, restricted to ``cfg.mother_modes`` when given.

    Raises:
        ConfigError: a listed mode the table does not have (the table's modes named).
    """
    modes = table.modes(cfg.mother)
    if cfg.mother_modes is None or modes is None:
        return modes
    daughters, cumulative = modes
    fractions = np.diff(cumulative, prepend=0.0)
    wanted = [sorted(m) for m in cfg.mother_modes]
    missing = [m for m in wanted if m not in [sorted(fs) for fs in daughters]]
    if missing:
        listed = "; ".join(" ".join(fs) for fs in daughters[:8])
        raise ConfigError(
            f"decfile.mother_modes: {cfg.mother} -> {' '.join(missing[0])} is not in "
            f"{cfg.dec_file} (its modes: {listed}{' ...' if len(daughters) > 8 else ''})"
        )
    kept = [k for k, fs in enumerate(daughters) if sorted(fs) in wanted]
    return [daughters[k] for k in kept], np.cumsum(fractions[kept])


def _draw(
    table: _Table, cfg: DecFileChains, stable: frozenset[str], rng: np.random.Generator
) -> _Node:
    """One chain; stops early (``_Reject``) once it is too deep, too wide or unusable."""
    counts = {"nodes": 0, "leaves": 0}

    def known(name: str) -> _Info:
        info = table.info(name)
        if info is None:
            raise _Reject(f"reaching {name!r} (no mass known)")
        return info

    def grow(name: str, level: int) -> _Node:
        counts["nodes"] += 1
        if counts["nodes"] > _MAX_NODES:
            raise _Reject("larger than the node limit")
        if cfg.max_depth is not None and level > cfg.max_depth:
            raise _Reject("deeper than max_depth")
        if level > 1 and (name in stable or table.real_name(name) in stable):
            counts["leaves"] += 1
            if cfg.max_leaves is not None and counts["leaves"] > cfg.max_leaves:
                raise _Reject("outside the leaf-count range")
            return _Node(known(name))
        modes = _mother_modes(table, cfg) if level == 1 else table.modes(name)
        if modes is None:
            raise _Reject(f"reaching {name!r} (not stable, no decays)")
        daughters, cumulative = modes
        pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        fs = daughters[min(pick, len(daughters) - 1)]
        if len(fs) == 1:  # not a decay (K0 -> K_S0): the node becomes its daughter
            return grow(fs[0], level)
        return _Node(known(name), [grow(d, level + 1) for d in fs])

    return grow(cfg.mother, 1)


def _to_topology(root: _Node, use_widths: bool) -> Topology:
    """Number leaves first (reading order), then inner nodes (preorder)."""
    leaves: list[_Node] = []
    inner: list[_Node] = []
    parent_of: dict[int, _Node] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        (inner if node.children else leaves).append(node)
        for child in reversed(node.children):
            parent_of[id(child)] = node
            stack.append(child)
    nodes = leaves + inner
    index = {id(node): i for i, node in enumerate(nodes)}
    tree = DecayTree(
        [index[id(parent_of[id(n)])] if id(n) in parent_of else -1 for n in nodes],
        names=[n.info.name for n in nodes],
        pdg_ids=[n.info.pdg_id for n in nodes],
        masses=[n.info.mass for n in nodes],
    )
    widths = [n.info.width if use_widths and n.children else 0.0 for n in nodes]
    return Topology(tree, np.array(widths, dtype=np.float64))
