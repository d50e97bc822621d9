"""Convert HepMC3 generator events into lcag's on-disk format (``lcag-generate --from-hepmc``).

Every decay of a chosen mother (PDG ids) in every event becomes one lcag event:

1. **Finding decays.** A particle whose PDG id is a mother and that has an end vertex starts a
   decay. A mother found inside another mother's decay (a generator copy, or ``--mother
   413,421`` with a D*+ -> D0 pi+) belongs to that outer decay and starts none of its own.
2. **The tree.** The decay is followed down until a particle is stable (``stable``, by
   default the decay-table chains' :data:`~lcag.data_gen.config.DEFAULT_STABLE`); those are
   the leaves, whatever the generator did with them afterwards. A particle whose end vertex has
   a single outgoing particle (a generator copy, a recoil, ``K0 -> K_S0``) is not a decay: the
   node is collapsed into that particle, as the decay-table chains do. Nodes carry PDG ids,
   EvtGen names, nominal masses and widths (GeV) from the ``particle`` package. A decay is
   skipped (and counted in the manifest's ``config["skipped"]``) when it reaches a particle
   that is neither stable nor decayed (a neutrino), a vertex with several incoming particles
   (a string), or a PDG id ``particle`` gives no mass; one with more than ``max_leaves``
   leaves stops the conversion with an error.
3. **Topologies.** Decays are grouped by their canonical topology string (PDG ids, children in
   sorted order, e.g. ``511(-211,413(211,421(-211,321)))``); each topology's leaves are in the
   canonical depth-first order, so ``order[e, k]`` names the topology leaf event leaf ``k`` is.
   A topology is *unseen* (``test_unknown`` only) when the SHA-256 of ``"<seed>:<string>"``,
   read as a fraction of 2^64, falls below ``unseen_fraction``, and ``val_unknown`` only when it
   falls in the ``val_unseen_fraction`` above that: the split depends only on the topology and
   the seed, not on which other files are converted. Known topologies get ids ``0..K-1`` in
   order of first appearance, unseen ones follow, then those of ``val_unknown``.
4. **Events.** Leaf 4-momenta ``(px, py, pz, E)`` in GeV, in the mother's rest frame (the
   frame of the sum of the leaves' 4-momenta; the default, as the simulator's shards) or in
   the lab as stored. The simulator's detector response is applied on top:
   :func:`~lcag.data_gen.kinematics.smear` (relative momentum resolution, E from the leaf's
   nominal mass) and :func:`~lcag.data_gen.kinematics.add_background`. Decays of known
   topologies go to ``train``, ``val`` or ``test`` by one uniform number each, drawn in input
   order from ``SeedSequence(seed, spawn_key=(3,))``.
5. **Shards.** Each split's events, ordered by topology and then input order, are cut into
   shards of ``events_per_shard``; shard ``i`` of split ``s`` shuffles leaves and draws
   smearing and background from ``SeedSequence(seed, spawn_key=(2, s, i))``, as the
   simulator's shards do, so the same files and seed give the same bytes. The directory is
   claimed and shards are published with the simulator's writer: a rerun verifies finished
   shards by checksum and writes only the missing ones (the files are read again).

Inputs are checked before anything is written: a file must start with the HepMC3 ASCII header
and end with its end-of-listing line (else it is truncated), and the reader must return as
many events as the file has event lines (else a malformed event stopped it).

``pyhepmc`` is an optional dependency (``pip install 'lcag[hepmc]'``).
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import json
import lzma
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from lcag.data_gen.config import DEFAULT_STABLE, SPLITS, DecFileChains, Kinematics, Output
from lcag.data_gen.shards import TopologyTable, shard_path
from lcag.data_gen.topology import Topology
from lcag.data_gen.writer import (
    SHARD_KEY,
    ShardPlan,
    _shard_is_done,
    _shuffled,
    claim_directory,
    publish_shard,
    write_manifest,
)
from lcag.errors import ConfigError, DatasetError, MissingDependencyError
from lcag.matrix import tree_to_lcag
from lcag.tree import DecayTree

__all__ = [
    "Decay",
    "HepMCOptions",
    "add_cli_options",
    "convert_hepmc",
    "options_from_cli",
    "parse_mothers",
]

SPLIT_KEY = 3  # spawn_key of the train/val/test draws (0, 1, 2: the simulator's streams)
MAX_LEAVES = 127  # order and lcag are stored as int8
_MAX_NODES = 500  # nodes per decay: a guard against malformed event graphs
_HEADER = b"HepMC::Asciiv3"
_FOOTER = b"HepMC::Asciiv3-END_EVENT_LISTING"
_OTHER_FORMATS = {
    b"HepMC::IO_GenEvent": "a HepMC2 file",
    b"<LesHouchesEvents": "a Les Houches (LHEF) file",
}
_DECOMPRESSORS: dict[str, Callable[[BinaryIO], BinaryIO]] = {
    ".gz": lambda raw: gzip.GzipFile(fileobj=raw),
    ".bz2": bz2.BZ2File,
    ".xz": lzma.LZMAFile,
}


@dataclass(frozen=True)
class HepMCOptions:
    """What to take from HepMC3 files and how to store it (all of it goes in the manifest).

    Attributes:
        mothers: PDG ids whose decays become events.
        stable: EvtGen names of the particles that are leaves.
        frame: ``"rest"`` (the mother's rest frame) or ``"lab"`` (as stored).
        max_leaves: a decay with more leaves is an error (at most 127).
        unseen_fraction: the share of topologies kept for ``test_unknown``.
        val_unseen_fraction: the share of topologies kept for ``val_unknown`` (validation on
            topologies neither training nor the test sees; 0: no such split).
        val_fraction, test_fraction: the shares of known-topology decays for val and test.
        momentum_resolution, background_mean, background_momentum: the simulator's detector
            response (:class:`~lcag.data_gen.config.Kinematics`).
        seed: seeds the unseen split, the train/val/test draws, shuffling and detector.
        dtype, events_per_shard: as the simulator's ``output``.
    """

    mothers: tuple[int, ...]
    stable: tuple[str, ...] = tuple(DEFAULT_STABLE)
    frame: Literal["rest", "lab"] = "rest"
    max_leaves: int = DecFileChains().max_leaves or MAX_LEAVES
    unseen_fraction: float = 0.2
    val_unseen_fraction: float = 0.0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    momentum_resolution: float = Kinematics().momentum_resolution
    background_mean: float = Kinematics().background_mean
    background_momentum: float = Kinematics().background_momentum
    seed: int = 0
    dtype: Literal["float32", "float64"] = Output().dtype
    events_per_shard: int = Output().events_per_shard

    def __post_init__(self) -> None:
        object.__setattr__(self, "mothers", tuple(self.mothers))
        object.__setattr__(self, "stable", tuple(self.stable))
        _check_options(self)

    @property
    def kinematics(self) -> Kinematics:
        """The detector response as the simulator's config holds it."""
        return Kinematics(
            momentum_resolution=self.momentum_resolution,
            background_mean=self.background_mean,
            background_momentum=self.background_momentum,
        )


@dataclass(frozen=True)
class Decay:
    """One decay found in a file.

    Attributes:
        key: the canonical topology string.
        tree: the decay tree, leaves in canonical order, with PDG ids, names, masses.
        widths: ``(n_nodes,)`` total widths (GeV), 0 for leaves.
        leaves: ``(L, 4)`` float64 leaf 4-momenta in GeV, in the lab, canonical leaf order.
        where: ``"<file>: event <number>: particle <id>"``, for messages.
    """

    key: str
    tree: DecayTree
    widths: np.ndarray
    leaves: np.ndarray
    where: str


@dataclass
class _Scan:
    """What reading the files found besides the decays."""

    events: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


# ---------------------------------------------------------------------------------- driver
def convert_hepmc(
    files: Sequence[str | Path],
    out: str | Path,
    options: HepMCOptions,
    *,
    overwrite: bool = False,
    progress: bool = True,
    on_shard: Callable[[ShardPlan], None] | None = None,
) -> dict[str, Any]:
    """Convert the decays of ``options.mothers`` in HepMC3 ``files`` into a dataset in ``out``.

    Args:
        files: HepMC3 ASCII files (``.gz``, ``.bz2``, ``.xz`` compressed too), read in order.
        out: the dataset directory (empty, or one of this same conversion, which is finished).
        options: what to take and how to store it.
        overwrite: replace a dataset of another conversion or config in ``out``.
        progress: a progress bar over the bytes read.
        on_shard: called after each shard this run writes.

    Returns:
        The manifest (also written to ``out/manifest.json``).

    Raises:
        MissingDependencyError: ``pyhepmc`` is not installed.
        DatasetError: a file is missing or not HepMC3, no usable decay of the mothers was
            found, a decay has more than ``options.max_leaves`` leaves (file, event and
            particle named), or ``out`` holds another dataset.
    """
    _pyhepmc()
    paths = [Path(f) for f in files]
    if not paths:
        raise ConfigError("--from-hepmc: no input files given")
    inputs = [_describe_input(path) for path in paths]
    expected = [info["events"] for info in inputs]
    # through JSON, so that a rerun compares it with what generation.json holds
    config: dict[str, Any] = json.loads(
        json.dumps({"source": "hepmc", "files": inputs, **_recorded(options)})
    )
    out = Path(out)
    claim_directory(out, config, overwrite)
    scan = _Scan()
    decays = list(_read_all(paths, expected, options, scan, progress))
    if not decays:
        raise DatasetError(_no_decays_message(paths, options, scan))

    topologies, topology_of, n_known, first_val = _topologies(decays, options)
    table = TopologyTable.from_topologies(topologies, n_known)
    splits = _assign_splits(topology_of, n_known, first_val, options)
    plans, members = _plan_shards(topology_of, splits, options.events_per_shard)
    base = [tree_to_lcag(t.tree) for t in topologies]
    for plan in plans:
        if _shard_is_done(out, plan):
            continue
        chosen = members[plan.split, plan.index]
        groups = _shard_groups(plan, chosen, decays, topologies, base, table, options)
        publish_shard(
            shard_path(out, plan.split, plan.index),
            groups,
            table,
            np.dtype(options.dtype),
            split=plan.split,
            index=plan.index,
        )
        if on_shard:
            on_shard(plan)
    return write_manifest(
        out,
        config={
            **config,
            "events_read": scan.events,
            "decays": len(decays),
            "skipped": dict(sorted(scan.skipped.items())),
            "topology_keys": [_key(t.tree) for t in topologies],
        },
        shards=plans,
        table=table,
        n_classes=max(t.depth for t in topologies),
        units="GeV",
        dtype=options.dtype,
    )


# ----------------------------------------------------------------------------- the options
def _check_options(o: HepMCOptions) -> None:
    if not o.mothers:
        raise ConfigError("--mother: no PDG id given")
    for value in o.mothers:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value == 0:
            raise ConfigError(f"--mother {value!r}: expected a non-zero PDG id")
    if not o.stable:
        raise ConfigError("--stable: the list of stable particles is empty")
    stable = _stable_ids(o.stable)
    clash = sorted(set(o.mothers) & stable)
    if clash:
        raise ConfigError(f"--mother {clash[0]}: the particle is in the stable list (--stable)")
    if o.frame not in ("rest", "lab"):
        raise ConfigError(f"--frame {o.frame!r}: expected 'rest' or 'lab'")
    if not 2 <= o.max_leaves <= MAX_LEAVES:
        raise ConfigError(f"--max-leaves {o.max_leaves}: expected 2..{MAX_LEAVES}")
    if not 0 <= o.unseen_fraction < 1:
        raise ConfigError(f"--unseen-fraction {o.unseen_fraction}: expected 0 <= value < 1")
    if not 0 <= o.val_unseen_fraction < 1 - o.unseen_fraction:
        raise ConfigError(
            f"--val-unseen-fraction {o.val_unseen_fraction}: expected 0 <= value < 1 - "
            f"--unseen-fraction ({1 - o.unseen_fraction:g}), so that topologies are left for "
            "training"
        )
    for name, value in (("--val-fraction", o.val_fraction), ("--test-fraction", o.test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name} {value}: expected 0 <= value < 1")
    if not o.val_fraction + o.test_fraction < 1:
        raise ConfigError(
            f"--val-fraction {o.val_fraction} + --test-fraction {o.test_fraction}: "
            "nothing left for train (the sum must be below 1)"
        )
    if not 0 <= o.momentum_resolution < 1:
        raise ConfigError(f"--momentum-resolution {o.momentum_resolution}: expected 0 <= value < 1")
    if o.background_mean < 0 or o.background_momentum <= 0:
        raise ConfigError(
            "--background-mean must be >= 0 and --background-momentum > 0, got "
            f"{o.background_mean} and {o.background_momentum}"
        )
    if o.dtype not in ("float32", "float64"):
        raise ConfigError(f"--dtype {o.dtype!r}: expected 'float32' or 'float64'")
    if o.events_per_shard < 1:
        raise ConfigError(f"--events-per-shard {o.events_per_shard}: must be at least 1")


def parse_mothers(text: str) -> tuple[int, ...]:
    """``"511,-511"`` or ``"B0,anti-B0"`` (EvtGen names) -> PDG ids.

    Raises:
        ConfigError: an entry is neither an integer nor a particle name.
    """
    from particle import Particle

    ids = []
    for part in (p.strip() for p in text.split(",")):
        try:
            ids.append(int(part))
            continue
        except ValueError:
            pass
        try:
            ids.append(int(Particle.from_evtgen_name(part).pdgid))
        except Exception:  # particle raises several kinds for unknown names
            raise ConfigError(
                f"--mother {part!r}: neither a PDG id nor a particle name (e.g. 511 or B0)"
            ) from None
    return tuple(ids)


_CLI = {  # option -> (field, type, metavar, help)
    "mother": ("mothers", str, "PDG[,PDG]", "PDG ids (or EvtGen names) of the mothers"),
    "stable": ("stable", str, "NAME[,NAME]",
               "EvtGen names of the leaves (default: the DEC-file chains' set)"),
    "frame": ("frame", str, "rest|lab", "leaf momenta in the mother's rest frame or the lab"),
    "max-leaves": ("max_leaves", int, "N", "a decay with more leaves is an error"),
    "unseen-fraction": ("unseen_fraction", float, "X", "share of topologies for test_unknown"),
    "val-unseen-fraction": ("val_unseen_fraction", float, "X",
                            "share of topologies for val_unknown (default 0: none)"),
    "val-fraction": ("val_fraction", float, "X", "share of known-topology decays for val"),
    "test-fraction": ("test_fraction", float, "X", "share of known-topology decays for test"),
    "momentum-resolution": ("momentum_resolution", float, "X", "relative momentum smearing"),
    "background-mean": ("background_mean", float, "X", "Poisson mean of background leaves"),
    "background-momentum": ("background_momentum", float, "GEV",
                            "mean |p| of background leaves"),
    "seed": ("seed", int, "N", "seeds the splits, leaf shuffling and detector response"),
    "dtype": ("dtype", str, "float32|float64", "feature dtype on disk"),
    "events-per-shard": ("events_per_shard", int, "N", "most events per shard"),
}  # fmt: skip


def add_cli_options(group: Any) -> None:
    """Add the ``--from-hepmc`` options to an argparse group (all default to ``None``; the
    help shows :class:`HepMCOptions`' defaults)."""
    defaults = {f.name: f.default for f in dataclasses.fields(HepMCOptions)}
    for option, (name, kind, metavar, text) in _CLI.items():
        shown = "" if name in ("mothers", "stable") else f" (default: {defaults[name]})"
        group.add_argument(
            f"--{option}", type=kind, default=None, metavar=metavar, help=text + shown
        )


def options_from_cli(args: Any) -> HepMCOptions | None:
    """The options of an ``lcag-generate`` command line; ``None`` without ``--from-hepmc``.

    Raises:
        ConfigError: a ``--from-hepmc`` option without ``--from-hepmc``, no ``--mother``,
            or a value out of range.
    """
    given = {
        option: getattr(args, option.replace("-", "_"))
        for option in _CLI
        if getattr(args, option.replace("-", "_"), None) is not None
    }
    if getattr(args, "from_hepmc", None) is None:
        if given:
            raise ConfigError(f"--{next(iter(given))} applies to --from-hepmc only")
        return None
    if "mother" not in given:
        raise ConfigError("--from-hepmc needs --mother PDG[,PDG] (e.g. --mother 511,-511)")
    values = {_CLI[option][0]: value for option, value in given.items()}
    values["mothers"] = parse_mothers(values["mothers"])
    if "stable" in values:
        values["stable"] = tuple(s.strip() for s in values["stable"].split(",") if s.strip())
    return HepMCOptions(**values)


@functools.lru_cache(maxsize=8)
def _stable_ids(names: tuple[str, ...]) -> frozenset[int]:
    from particle import Particle

    ids = set()
    for i, name in enumerate(names):
        try:
            ids.add(int(Particle.from_evtgen_name(name).pdgid))
        except Exception:  # particle raises several kinds for unknown names
            raise ConfigError(
                f"--stable[{i}] = {name!r}: not a particle name known to the 'particle' "
                "package (EvtGen names, e.g. 'pi+', 'K_L0', 'anti-p-')"
            ) from None
    return frozenset(ids)


@functools.cache
def _particle(pdg_id: int) -> tuple[str, float, float] | None:
    """``(EvtGen name, mass, width)`` in GeV of a PDG id, or ``None`` when unknown."""
    from particle import Particle

    try:
        particle = Particle.from_pdgid(pdg_id)
    except Exception:  # particle raises several kinds for unknown ids
        return None
    if particle.mass is None:
        return None
    return _name(pdg_id), particle.mass / 1000.0, (particle.width or 0.0) / 1000.0


# ------------------------------------------------------------------------------- the files
def _pyhepmc() -> Any:
    try:
        import pyhepmc
    except ImportError:
        raise MissingDependencyError(
            "reading HepMC3 files needs pyhepmc: pip install 'lcag[hepmc]' "
            "(or pip install 'pyhepmc>=2.13')"
        ) from None
    return pyhepmc


def _describe_input(path: Path) -> dict[str, Any]:
    """Name, size, SHA-256 and event count of an input file, after checking that it is a
    complete HepMC3 ASCII file."""
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    if not path.is_file():
        raise DatasetError(f"{path}: not a file")
    events, tail = 0, b""
    with _open(path) as (handle, _):
        try:
            header = handle.read(256)
            block = header
            while block:
                events += (tail[-1:] + block).count(b"\nE ")
                tail = (tail + block)[-64:]
                block = handle.read(1 << 20)
        except (OSError, EOFError, ValueError) as exc:  # e.g. a broken compressed stream
            raise DatasetError(f"{path}: cannot read it ({exc})") from None
    if _HEADER not in header:
        kind = next((what for mark, what in _OTHER_FORMATS.items() if mark in header), None)
        raise DatasetError(
            f"{path}: {kind + ', ' if kind else ''}not a HepMC3 ASCII file "
            f"(no {_HEADER.decode()} header)"
        )
    if not tail.rstrip().endswith(_FOOTER):
        raise DatasetError(
            f"{path}: truncated, the file does not end with {_FOOTER.decode()} (an interrupted "
            "write or copy); regenerate or re-copy it"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as raw:
        for block in iter(lambda: raw.read(1 << 20), b""):
            digest.update(block)
    size = path.stat().st_size
    return {"name": path.name, "bytes": size, "sha256": digest.hexdigest(), "events": events}


@contextlib.contextmanager
def _open(path: Path) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """``with _open(path) as (handle, raw)``: the decompressed stream and the file below it."""
    with open(path, "rb") as raw:
        decompressor = _DECOMPRESSORS.get(path.suffix)
        if decompressor is None:
            yield raw, raw
        else:
            with decompressor(raw) as handle:
                yield handle, raw


def _read_all(
    paths: Sequence[Path],
    expected: Sequence[int],
    options: HepMCOptions,
    scan: _Scan,
    progress: bool,
) -> Iterator[Decay]:
    with _Progress(progress, sum(p.stat().st_size for p in paths)) as advance:
        for path, events in zip(paths, expected, strict=True):
            yield from _read_file(path, events, options, scan, advance)


def _read_file(
    path: Path,
    expected: int,
    options: HepMCOptions,
    scan: _Scan,
    advance: Callable[[int], None],
) -> Iterator[Decay]:
    """The decays of one file; ``expected`` is its number of event lines."""
    pyhepmc = _pyhepmc()
    mothers = np.array(sorted(options.mothers))
    stable = _stable_ids(options.stable)
    with _open(path) as (handle, raw), pyhepmc.open(handle, format="HepMC3") as reader:
        position = 0
        index = 0
        while True:
            try:
                event = reader.read()
            except (RuntimeError, OSError, EOFError, ValueError) as exc:
                raise DatasetError(f"{path}: cannot read the event after {index} ({exc})") from None
            if event is None:
                break
            scan.events += 1
            yield from _event_decays(event, index, path, mothers, stable, options, scan)
            index += 1
            now = raw.tell()
            advance(now - position)
            position = now
        advance(path.stat().st_size - position)
    if index != expected:
        raise DatasetError(
            f"{path}: event {index}: the HepMC3 reader stopped there, after {index} of the "
            f"{expected} events in the file (a malformed line; its message is above)"
        )


def _event_decays(
    event: Any,
    index: int,
    path: Path,
    mothers: np.ndarray,
    stable: frozenset[int],
    options: HepMCOptions,
    scan: _Scan,
) -> Iterator[Decay]:
    """The decays of one event, outermost mothers only, in particle order."""
    pids = np.asarray(event.numpy.particles.pid)
    candidates = np.flatnonzero(np.isin(pids, mothers))
    if not candidates.size:
        return
    particles = event.particles
    unit = 1e-3 if event.momentum_unit == _pyhepmc().Units.MEV else 1.0
    number = event.event_number
    label = f"{path}: event {number}" if number == index else f"{path}: event {number} (#{index})"
    built = []
    inside: set[int] = set()
    for i in candidates:
        particle = particles[int(i)]
        if particle.end_vertex is None:
            continue  # not decayed in this file
        walk = _Walk(stable)
        node = walk.follow(particle)
        inside |= walk.visited - {particle.id}
        built.append((particle, node, walk))
    for particle, node, walk in built:
        if particle.id in inside:
            continue
        where = f"{label}: particle {particle.id} ({_name(particle.pid)})"
        if walk.problem is None and not node[1]:
            walk.problem = f"ending as one {_name(node[0])} (a copy chain, not a decay)"
        if walk.problem is not None:
            scan.skipped[walk.problem] += 1
            continue
        n_leaves = _count_leaves(node)
        if n_leaves > options.max_leaves:
            raise DatasetError(
                f"{where}: the decay has {n_leaves} leaves, more than --max-leaves "
                f"{options.max_leaves} (raise it, at most {MAX_LEAVES}, or choose other mothers)"
            )
        yield _as_decay(node, unit, where)


@functools.cache
def _name(pdg_id: int) -> str:
    """The EvtGen name of a PDG id (``"PDG <id>"`` when ``particle`` does not know it)."""
    from particle import Particle

    try:
        particle = Particle.from_pdgid(int(pdg_id))
    except Exception:  # particle raises several kinds for unknown ids
        return f"PDG {pdg_id}"
    return getattr(particle, "evtgen_name", None) or particle.name


# ------------------------------------------------------------------------------ the trees
# A node is (pdg id, children, particle); a leaf has no children.
_Node = tuple[int, list, Any]


class _Walk:
    """Follow a decay down to stable particles, collapsing single-child nodes.

    ``problem`` is the first reason the decay is unusable (``None`` when it is usable);
    ``visited`` holds the id of every particle met, copies included.
    """

    def __init__(self, stable: frozenset[int]) -> None:
        self.stable = stable
        self.visited: set[int] = set()
        self.problem: str | None = None

    def follow(self, particle: Any) -> _Node:
        try:
            return self._follow(particle)
        except _Stop:
            return (int(particle.pid), [], particle)

    def _follow(self, particle: Any) -> _Node:
        while True:
            self._visit(particle)
            if particle.pid in self.stable:
                return (int(particle.pid), [], particle)
            vertex = particle.end_vertex
            if vertex is None:
                self._fail(f"reaching {_name(particle.pid)} (neither stable nor decayed)")
                return (int(particle.pid), [], particle)
            if len(vertex.particles_in) != 1:
                self._fail("a vertex with several incoming particles (not a decay tree)")
            outgoing = vertex.particles_out
            if not outgoing:
                self._fail(f"{_name(particle.pid)} decaying into nothing")
                return (int(particle.pid), [], particle)
            if len(outgoing) > 1:
                break
            particle = outgoing[0]  # a copy, a recoil or K0 -> K_S0: not a decay
        if _particle(int(particle.pid)) is None:
            self._fail(f"PDG id {particle.pid} (the 'particle' package gives no mass)")
        return (int(particle.pid), [self._follow(child) for child in outgoing], particle)

    def _visit(self, particle: Any) -> None:
        if particle.id in self.visited:
            self._fail("a particle reached twice (not a decay tree)")
            raise _Stop
        self.visited.add(particle.id)
        if len(self.visited) > _MAX_NODES:
            self._fail(f"more than {_MAX_NODES} particles")
            raise _Stop

    def _fail(self, reason: str) -> None:
        if self.problem is None:
            self.problem = reason


class _Stop(Exception):  # noqa: N818 - control flow inside _Walk only
    pass


def _count_leaves(node: _Node) -> int:
    return 1 if not node[1] else sum(_count_leaves(child) for child in node[1])


def _canonical(node: _Node) -> tuple[str, _Node]:
    """The node's topology string, and the node with children sorted by theirs (recursively)."""
    pdg_id, children, particle = node
    if not children:
        return str(pdg_id), node
    parts = sorted((_canonical(child) for child in children), key=lambda part: part[0])
    text = f"{pdg_id}({','.join(key for key, _ in parts)})"
    return text, (pdg_id, [kid for _, kid in parts], particle)


def _as_decay(node: _Node, unit: float, where: str) -> Decay:
    """Number leaves first (canonical depth-first order), then inner nodes (preorder)."""
    key, root = _canonical(node)
    leaves: list[_Node] = []
    inner: list[_Node] = []
    parent_of: dict[int, _Node] = {}
    stack = [root]
    while stack:
        current = stack.pop()
        (inner if current[1] else leaves).append(current)
        for kid in reversed(current[1]):
            parent_of[id(kid)] = current
            stack.append(kid)
    nodes = leaves + inner
    index = {id(n): i for i, n in enumerate(nodes)}
    infos = [_particle(n[0]) for n in nodes]
    tree = DecayTree(
        [index[id(parent_of[id(n)])] if id(n) in parent_of else -1 for n in nodes],
        names=[info[0] for info in infos],
        pdg_ids=[n[0] for n in nodes],
        masses=[info[1] for info in infos],
    )
    widths = np.array([info[2] if n[1] else 0.0 for n, info in zip(nodes, infos, strict=True)])
    momenta = [leaf[2].momentum for leaf in leaves]
    leaf_momenta = np.array([[p.px, p.py, p.pz, p.e] for p in momenta], dtype=np.float64)
    return Decay(key=key, tree=tree, widths=widths, leaves=leaf_momenta * unit, where=where)


def _key(tree: DecayTree) -> str:
    """The canonical topology string of a tree with PDG ids (as :func:`_canonical`)."""

    def text(node: int) -> str:
        kids = sorted(text(c) for c in tree.children(node))
        own = str(int(tree.pdg_ids[node]))
        return f"{own}({','.join(kids)})" if kids else own

    return text(tree.root)


# -------------------------------------------------------------------- topologies and splits
def _recorded(options: HepMCOptions) -> dict[str, Any]:
    """The options a dataset records; without a val_unknown share the key is left out, so a
    conversion records what it did before the split existed."""
    data = dataclasses.asdict(options)
    if not options.val_unseen_fraction:
        del data["val_unseen_fraction"]
    return data


def _unseen_side(key: str, options: HepMCOptions) -> str | None:
    """``test_unknown`` or ``val_unknown`` for a topology kept from training, else ``None``."""
    digest = hashlib.sha256(f"{options.seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < options.unseen_fraction:
        return "test_unknown"
    if u < options.unseen_fraction + options.val_unseen_fraction:
        return "val_unknown"
    return None


def _topologies(
    decays: Sequence[Decay], options: HepMCOptions
) -> tuple[list[Topology], np.ndarray, int, int]:
    """Distinct topologies (known first, then test_unknown's, then val_unknown's, each set in
    order of first appearance), each decay's topology id ``(D,)``, the number of known
    topologies and the id of the first of val_unknown.

    Raises:
        DatasetError: every topology fell to the unseen side.
    """
    first: dict[str, int] = {}
    for i, decay in enumerate(decays):
        first.setdefault(decay.key, i)
    side = {key: _unseen_side(key, options) for key in first}
    keys = [k for where in (None, "test_unknown", "val_unknown") for k in first if side[k] == where]
    n_known = sum(side[k] is None for k in keys)
    if n_known == 0:
        raise DatasetError(
            f"all {len(keys)} topologies found are unseen ones with --unseen-fraction "
            f"{options.unseen_fraction} and --seed {options.seed}, none is left for training; "
            "lower --unseen-fraction or convert more events"
        )
    ids = {key: i for i, key in enumerate(keys)}
    topologies = [Topology(decays[first[k]].tree, decays[first[k]].widths) for k in keys]
    first_val = n_known + sum(side[k] == "test_unknown" for k in keys)
    topology_of = np.array([ids[d.key] for d in decays], dtype=np.int64)
    return topologies, topology_of, n_known, first_val


def _assign_splits(
    topology_of: np.ndarray, n_known: int, first_val: int, options: HepMCOptions
) -> np.ndarray:
    """``(D,)`` index into ``SPLITS`` of every decay (topologies from ``first_val`` on:
    ``val_unknown``)."""
    known = topology_of < n_known
    rng = np.random.default_rng(np.random.SeedSequence(options.seed, spawn_key=(SPLIT_KEY,)))
    u = rng.random(int(known.sum()))
    drawn = np.where(
        u < options.test_fraction,
        SPLITS.index("test"),
        np.where(u < options.test_fraction + options.val_fraction, SPLITS.index("val"), 0),
    )
    split = np.full(len(topology_of), SPLITS.index("test_unknown"), dtype=np.int64)
    split[topology_of >= first_val] = SPLITS.index("val_unknown")
    split[known] = drawn
    return split


def _plan_shards(
    topology_of: np.ndarray, splits: np.ndarray, per_shard: int
) -> tuple[list[ShardPlan], dict[tuple[str, int], np.ndarray]]:
    """Each split's decays by topology then input order, cut into shards.

    Returns:
        The shard plans, and per ``(split, index)`` the decay indices of that shard.
    """
    plans: list[ShardPlan] = []
    members: dict[tuple[str, int], np.ndarray] = {}
    for s, split in enumerate(SPLITS):
        mine = np.flatnonzero(splits == s)
        mine = mine[np.argsort(topology_of[mine], kind="stable")]
        for index, start in enumerate(range(0, len(mine), per_shard)):
            part = mine[start : start + per_shard]
            ids, counts = np.unique(topology_of[part], return_counts=True)
            pieces = tuple((int(t), int(c)) for t, c in zip(ids, counts, strict=True))
            plans.append(ShardPlan(split, index, pieces))
            members[split, index] = part
    return plans, members


# ------------------------------------------------------------------------------- the shards
def _shard_groups(
    plan: ShardPlan,
    members: np.ndarray,
    decays: Sequence[Decay],
    topologies: Sequence[Topology],
    base: Sequence[np.ndarray],
    table: TopologyTable,
    options: HepMCOptions,
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """A shard's events grouped by leaf count, as the simulator's writer makes them."""
    from lcag.data_gen.kinematics import add_background, boost, smear

    rng = np.random.default_rng(
        np.random.SeedSequence(
            options.seed, spawn_key=(SHARD_KEY, SPLITS.index(plan.split), plan.index)
        )
    )
    kinematics = options.kinematics
    final_state = table.final_state_masses()
    groups: dict[int, list[tuple]] = {}
    start = 0
    for tid, count in plan.pieces:
        chosen = members[start : start + count]
        start += count
        leaves = np.stack([decays[i].leaves for i in chosen])  # (E, L, 4)
        if options.frame == "rest":
            total = leaves.sum(axis=1, keepdims=True)  # (E, 1, 4)
            mass = np.sqrt(np.maximum(total[..., 3] ** 2 - np.square(total[..., :3]).sum(-1), 0))
            frame = np.concatenate([-total[..., :3], total[..., 3:]], axis=-1)
            leaves = boost(leaves, frame, mass)
        topology = topologies[tid]
        leaves = smear(leaves, topology.tree.masses[: topology.n_leaves],
                       kinematics.momentum_resolution, rng)  # fmt: skip
        background = add_background(len(leaves), kinematics, final_state, rng)
        for n_extra in sorted({len(b) for b in background}):
            events = [e for e, b in enumerate(background) if len(b) == n_extra]
            extra = np.stack([background[e] for e in events]) if n_extra else None
            part = _shuffled(tid, leaves[events], extra, base[tid], rng)
            groups.setdefault(part[0].shape[1], []).append(part)
    return {
        n: tuple(np.concatenate([p[k] for p in parts]) for k in range(4))
        for n, parts in groups.items()
    }


# ------------------------------------------------------------------------------ reporting
def _no_decays_message(paths: Sequence[Path], options: HepMCOptions, scan: _Scan) -> str:
    names = ", ".join(f"{m} ({_name(m)})" for m in options.mothers)
    where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} and {len(paths) - 1} more files"
    if scan.skipped:
        reasons = "; ".join(f"{n} {why}" for why, n in scan.skipped.most_common(3))
        return (
            f"{where}: no usable decay of {names} in {scan.events} events: all "
            f"{sum(scan.skipped.values())} found were skipped ({reasons})"
        )
    return f"{where}: no decay of {names} found in {scan.events} events"


class _Progress:
    """A rich progress bar over the bytes of the input files (or nothing)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("reading HepMC3"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self._progress.start()
        task = self._progress.add_task("bytes", total=self.total)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()
