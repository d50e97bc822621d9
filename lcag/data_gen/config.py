"""Generation configs: what ``configs/data/*.yaml`` may hold, with defaults and checks.

A config file is the whole dataset: the same file and seed give the same bytes. Unknown keys,
wrong types and physically impossible settings are rejected with the key and value named.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lcag.errors import ConfigError

__all__ = [
    "BeamBackground",
    "ClusterResponse",
    "DecFileChains",
    "Detector",
    "Events",
    "GenerationConfig",
    "Kinematics",
    "Output",
    "PIDResponse",
    "RandomTopologies",
    "Stages",
    "Topologies",
    "TrackResponse",
    "dataset_splits",
    "load_config",
]

# A split's place here is its seed stream (shards draw from spawn key (SHARD_KEY, index, i)),
# so new splits are only ever appended. ``val_unknown`` exists only where configured.
SPLITS = ("train", "val", "test", "test_unknown", "val_unknown")
DEFAULT_STABLE = [
    "e-", "e+", "mu-", "mu+", "pi+", "pi-", "K+", "K-", "p+", "anti-p-", "gamma", "K_L0",
    "n0", "anti-n0",
]  # fmt: skip


@dataclass
class RandomTopologies:
    """Random decay topologies following the paper's protocol (masses in arbitrary units).

    Each particle draws ``min_children..max_children`` children uniformly; a child is a
    final-state particle at the depth limit, when no intermediate mass fits in what is left of
    its parent's mass, or at random with probability
    ``n_fs / (n_fs + intermediate_weight * n_intermediate)`` (list lengths, as in the paper).
    """

    root_mass: float = 100.0
    intermediate_masses: list[float] = field(
        default_factory=lambda: [90.0, 80.0, 70.0, 50.0, 25.0, 20.0, 10.0]
    )
    final_state_masses: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0, 12.0])
    max_depth: int = 8  # levels, the root being level 1
    min_children: int = 2
    max_children: int = 5
    intermediate_weight: float = 1.0
    relative_width: float = 0.0  # width / mass of intermediate particles (0: fixed masses)
    min_leaves: int = 2
    max_leaves: int | None = None
    unique: bool = True  # reject a topology isomorphic (masses included) to one already drawn


@dataclass
class DecFileChains:
    """Decay chains drawn from an EvtGen decay table by branching fraction (masses in GeV)."""

    mother: str = "B0"
    dec_file: str = "DECAY_BELLE2.DEC"  # a table shipped with decaylanguage, or a path
    stable: list[str] = field(default_factory=lambda: list(DEFAULT_STABLE))
    use_widths: bool = False  # Breit-Wigner line shapes with the particles' widths
    min_leaves: int = 2
    max_leaves: int | None = 12
    max_depth: int | None = None
    unique: bool = True  # distinct chains only (names compared, leaf order ignored)
    max_attempts: int = 100_000  # chains drawn before giving up on the requested count
    # only these decays of the mother (daughter names, any order), by their branching
    # fractions renormalised, e.g. [[B0, anti-B0], [B+, B-]] for Upsilon(4S) -> B B-bar
    mother_modes: list[list[str]] | None = None


@dataclass
class Topologies:
    """How many topologies: ``known`` ones feed train/val/test, ``unknown`` only test_unknown,
    ``val_unknown`` only the val_unknown split (a third set, disjoint from both: validation
    on topologies never trained on, which node-evidence weights and tree temperatures are
    chosen on; 0 leaves the split out)."""

    known: int = 200
    unknown: int = 50
    val_unknown: int = 0


@dataclass
class Events:
    """Events per topology and split."""

    train: int = 1000
    val: int = 100
    test: int = 100
    test_unknown: int = 100
    val_unknown: int = 100


@dataclass
class Kinematics:
    """Kinematics and realism (all realism off by default, as in the paper)."""

    unweight: bool = True  # accept-reject on phasespace's weight: uniform n-body phase space
    momentum_resolution: float = 0.0  # relative Gaussian smearing of each momentum component
    mother_momentum: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    background_mean: float = 0.0  # Poisson mean of extra leaves outside the tree (LCAG 0)
    background_momentum: float = 10.0  # mean |p| of background leaves (exponential)
    background_masses: list[float] | None = None  # default: the final-state masses


# ----------------------------------------------------------------------- detector response
# Defaults: the Belle detector's published performance (A. Abashian et al., "The Belle
# detector", Nucl. Instrum. Meth. A 479 (2002) 117), the reference Belle II's design report
# (T. Abe et al., arXiv:1011.0352) improves on: CDC sigma(pT)/pT = 0.19 % pT [GeV] (+) 0.30 %
# / beta; ECL sigma(E)/E = 0.066 % / E (+) 0.81 % / E^(1/4) (+) 1.34 %, which a / sqrt(E) + b
# with a = 0.0022 GeV^(1/2), b = 0.0134 follows within 0.04 % (absolute) from 0.1 to 5 GeV
# (least-squares fit).
# Angular resolutions, efficiencies, thresholds, PID response and beam background are
# round, illustrative values of the right order, not fits to published figures.
@dataclass
class TrackResponse:
    """Charged tracks (e, mu, pi, K, p): momentum from the curvature, angles from the hits.

    ``sigma(pT) / pT = a * pT (+) b / beta`` (added in quadrature; ``pt_resolution = [a, b]``,
    ``pT`` in GeV, ``beta`` of the true particle), Gaussian smearing of polar and azimuthal
    angle by ``angle_resolution`` (rad). The energy follows from the momentum and a mass
    hypothesis: with ``mass_hypothesis: pid`` (default) the species the track's PID likelihood
    ratios favour, as a reconstruction assigns it (a misidentified track gets the wrong
    mass), with ``true`` the true particle's mass (which hands the species to anything that
    reads ``E^2 - p^2``).
    A track is found with probability ``efficiency`` when its true ``pT >= min_pt``, never
    below.
    """

    pt_resolution: list[float] = field(default_factory=lambda: [0.0019, 0.0030])
    angle_resolution: float = 0.001
    efficiency: float = 0.95
    min_pt: float = 0.05
    mass_hypothesis: Literal["pid", "true"] = "pid"


@dataclass
class ClusterResponse:
    """Calorimeter clusters: ``sigma(E) / E = a / sqrt(E) + b`` (``energy_resolution =
    [a, b]``, E in GeV), Gaussian angles (rad), found with ``efficiency`` when the true
    energy is at least ``min_energy``. The momentum follows from the energy and the mass."""

    energy_resolution: list[float] = field(default_factory=lambda: [0.0022, 0.0134])
    angle_resolution: float = 0.01
    efficiency: float = 0.95
    min_energy: float = 0.02


def _neutral_hadrons() -> ClusterResponse:
    return ClusterResponse(
        energy_resolution=[0.5, 0.1], angle_resolution=0.05, efficiency=0.5, min_energy=0.2
    )


@dataclass
class PIDResponse:
    """Particle identification of tracks: ``response[s][h]`` is the probability that a track
    of true species ``s`` is identified as ``h``, species and hypotheses in the order
    e, mu, pi, K, p (rows sum to 1). Each track gets five likelihood ratios (the leaf
    features ``pid_e .. pid_p``, summing to 1): ``softmax(log(response[s]) + Gumbel noise)``,
    whose largest entry is ``h`` with exactly that probability."""

    response: list[list[float]] = field(
        default_factory=lambda: [
            [0.95, 0.01, 0.03, 0.005, 0.005],
            [0.01, 0.90, 0.08, 0.005, 0.005],
            [0.01, 0.03, 0.92, 0.03, 0.01],
            [0.005, 0.005, 0.08, 0.88, 0.03],
            [0.005, 0.005, 0.03, 0.06, 0.90],
        ]
    )


@dataclass
class BeamBackground:
    """Leaves from outside the tree (LCAG/LCAS class 0), Poisson-distributed per event:
    photons with ``E = min_energy + Exp(photon_energy)`` and pion tracks of either charge
    with ``pT = min_pt + Exp(track_pt)``, isotropic, as measured (thresholds of the tracks'
    and photons' responses)."""

    photons: float = 0.0  # Poisson mean per event
    photon_energy: float = 0.1  # GeV, mean above the threshold
    tracks: float = 0.0
    track_pt: float = 0.2  # GeV, mean above the threshold


@dataclass
class VertexResponse:
    """The production-vertex displacement of tracks (the leaf feature ``displacement``, cm):
    each long-lived ancestor (``ctau >= min_ctau`` mm, from ``particle``: K_S0, Lambda, D,
    B, ...) flies ``beta gamma c tau`` times an ``Exp(1)`` draw along its momentum before
    decaying, so a track's production vertex is the sum of its ancestors' flights; its
    distance from the interaction point is smeared by a Gaussian of ``resolution`` cm.
    Neutral leaves (no track to vertex) get 0; background tracks come from the interaction
    point. The 20 um default is an illustrative value of Belle II's vertexing scale."""

    resolution: float = 0.002  # cm
    min_ctau: float = 0.001  # mm: shorter-lived particles decay where they are made


@dataclass
class Detector:
    """A detector response per particle species (decay-table sources only: it reads each
    leaf's PDG id). An event is kept only when every leaf of its tree is reconstructed
    (efficiency and thresholds); lost events are replaced by new ones, so each topology keeps
    its configured event count and the kept events are those a full reconstruction sees.
    Leaves get features beyond ``(px, py, pz, E)``: ``charge``, ``is_photon`` and the PID
    likelihood ratios ``pid_e, pid_mu, pid_pi, pid_K, pid_p`` (0 for neutral leaves)."""

    tracks: TrackResponse = field(default_factory=TrackResponse)
    photons: ClusterResponse = field(default_factory=ClusterResponse)
    neutral_hadrons: ClusterResponse = field(default_factory=_neutral_hadrons)  # K_L0, n
    pid: PIDResponse = field(default_factory=PIDResponse)
    background: BeamBackground = field(default_factory=BeamBackground)
    vertex: VertexResponse | None = None  # `vertex: {}` adds the `displacement` feature


@dataclass
class Stages:
    """LCAS targets: the stage of each pair's lowest common ancestor (Belle II's graFEI).

    ``stages`` maps particle names (decay-table names, charge conjugates included) to stages
    >= 1; the default is graFEI's: Upsilon(4S) 6, B 5, D* and D_s* 4, D 3 (D_s added here),
    K_S0 2, pi0 and J/psi 1. Intermediate particles without a stage (rho, K*, eta, ...) are
    contracted: their children count as children of their parent, so a pair's LCAS is the
    stage of the lowest *staged* ancestor. The mother needs a stage.
    """

    stages: dict[str, int] | None = None


@dataclass
class Output:
    dtype: Literal["float32", "float64"] = "float32"
    events_per_shard: int = 20_000


@dataclass
class GenerationConfig:
    """The whole dataset: exactly one of ``random`` and ``decfile`` names the topology source."""

    seed: int = 0
    random: RandomTopologies | None = None
    decfile: DecFileChains | None = None
    topologies: Topologies = field(default_factory=Topologies)
    events: Events = field(default_factory=Events)
    kinematics: Kinematics = field(default_factory=Kinematics)
    output: Output = field(default_factory=Output)
    detector: Detector | None = None
    lcas: Stages | None = None

    def __post_init__(self) -> None:
        _check(self)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what manifests and ``generation.json`` record). Without
        val_unknown topologies the split's two keys are left out, so a config written before
        the split existed records, and generates, the bytes it did then."""
        data = dataclasses.asdict(self)
        if self.topologies.val_unknown == 0:
            del data["topologies"]["val_unknown"], data["events"]["val_unknown"]
        for key in ("detector", "lcas"):  # likewise for configs without these sections
            if data[key] is None:
                del data[key]
        if data.get("decfile") and data["decfile"]["mother_modes"] is None:
            del data["decfile"]["mother_modes"]
        return data


def dataset_splits(cfg: GenerationConfig) -> tuple[str, ...]:
    """The splits ``cfg`` writes: :data:`SPLITS`, ``val_unknown`` only with its topologies."""
    return tuple(s for s in SPLITS if s != "val_unknown" or cfg.topologies.val_unknown > 0)


def load_config(source: str | Path | dict[str, Any]) -> GenerationConfig:
    """Read a YAML file (or a dict) into a checked :class:`GenerationConfig`.

    Raises:
        ConfigError: an unknown key, a wrong type or an impossible value, with the file and key.
    """
    if isinstance(source, dict):
        return _build(GenerationConfig, source, "config", "<dict>")
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return _build(GenerationConfig, data, "config", str(path))


# ---------------------------------------------------------------------------------- checks
def _build(cls: type, data: dict[str, Any], where: str, file: str) -> Any:
    """Construct dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    import typing

    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        allowed = ", ".join(sorted(names))
        raise ConfigError(
            f"{file}: unknown key {where}.{unknown[0]} (allowed in {where}: {allowed})"
        )
    values = {}
    for key, value in data.items():
        values[key] = _coerce(hints[key], value, f"{where}.{key}", file)
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None


def _coerce(hint: Any, value: Any, where: str, file: str) -> Any:
    import types
    import typing

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where, file)
    if dataclasses.is_dataclass(hint):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: {where} must be a mapping, got {value!r}")
        return _build(hint, value, where, file)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{file}: {where} must be one of {list(args)}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: {where} must be a mapping, got {value!r}")
        return {
            _coerce(args[0], k, f"{where} key", file): _coerce(args[1], v, f"{where}.{k}", file)
            for k, v in value.items()
        }
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{file}: {where} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]", file) for i, v in enumerate(value)]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{file}: {where} must be true or false, got {value!r}")
    if hint is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{file}: {where} must be an integer, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{file}: {where} must be a string, got {value!r}")
    if hint is float and not isinstance(value, float):
        raise ConfigError(f"{file}: {where} must be a number, got {value!r}")
    return value


def _check(cfg: GenerationConfig) -> None:
    if (cfg.random is None) == (cfg.decfile is None):
        raise ConfigError("set exactly one topology source: 'random' or 'decfile'")
    if cfg.random is not None:
        _check_random(cfg.random)
    if cfg.decfile is not None:
        d = cfg.decfile
        _at_least("decfile.min_leaves", d.min_leaves, 2)
        if d.max_leaves is not None:
            _at_least("decfile.max_leaves", d.max_leaves, d.min_leaves)
            if d.max_leaves > 127:
                raise ConfigError(f"decfile.max_leaves = {d.max_leaves}: at most 127 leaves")
        if d.max_depth is not None:
            _at_least("decfile.max_depth", d.max_depth, 2)
        if not d.stable:
            raise ConfigError("decfile.stable: the list of stable particles is empty")
    _at_least("topologies.known", cfg.topologies.known, 1)
    _at_least("topologies.unknown", cfg.topologies.unknown, 0)
    _at_least("topologies.val_unknown", cfg.topologies.val_unknown, 0)
    for split in SPLITS:
        _at_least(f"events.{split}", getattr(cfg.events, split), 0)
    k = cfg.kinematics
    if not 0 <= k.momentum_resolution < 1:
        raise ConfigError(
            f"kinematics.momentum_resolution = {k.momentum_resolution}: expected 0 <= value < 1"
        )
    if len(k.mother_momentum) != 3:
        raise ConfigError(
            f"kinematics.mother_momentum = {k.mother_momentum}: expected [px, py, pz]"
        )
    if k.background_mean < 0 or k.background_momentum <= 0:
        raise ConfigError(
            "kinematics.background_mean must be >= 0 and background_momentum > 0, got "
            f"{k.background_mean} and {k.background_momentum}"
        )
    if k.background_masses is not None and any(m < 0 for m in k.background_masses):
        raise ConfigError(f"kinematics.background_masses = {k.background_masses}: negative mass")
    _at_least("output.events_per_shard", cfg.output.events_per_shard, 1)
    if cfg.detector is not None:
        _check_detector(cfg)
    if cfg.lcas is not None:
        if cfg.decfile is None:
            raise ConfigError("lcas: stages come from particle names; use a 'decfile' source")
        for name, stage in (cfg.lcas.stages or {}).items():
            if stage < 1:
                raise ConfigError(f"lcas.stages.{name} = {stage}: stages start at 1")


def _check_detector(cfg: GenerationConfig) -> None:
    d, k = cfg.detector, cfg.kinematics
    if cfg.decfile is None:
        raise ConfigError(
            "detector: the response depends on each leaf's species (PDG id); use a 'decfile' "
            "source, or kinematics.momentum_resolution for random topologies"
        )
    if k.momentum_resolution > 0 or k.background_mean > 0:
        raise ConfigError(
            "detector and kinematics.momentum_resolution / background_mean both set: the "
            "detector section replaces them (detector.tracks, detector.background)"
        )
    pairs = [("tracks.pt_resolution", d.tracks.pt_resolution)]
    pairs += [(f"{n}.energy_resolution", getattr(d, n).energy_resolution)
              for n in ("photons", "neutral_hadrons")]  # fmt: skip
    for key, values in pairs:
        if len(values) != 2 or any(v < 0 for v in values):
            raise ConfigError(f"detector.{key} = {values}: expected [a, b], both >= 0")
    for name in ("tracks", "photons", "neutral_hadrons"):
        part = getattr(d, name)
        if not 0 < part.efficiency <= 1:
            raise ConfigError(
                f"detector.{name}.efficiency = {part.efficiency}: expected 0 < value <= 1"
            )
        if part.angle_resolution < 0:
            raise ConfigError(f"detector.{name}.angle_resolution = {part.angle_resolution}: < 0")
    if d.tracks.min_pt < 0 or d.photons.min_energy < 0 or d.neutral_hadrons.min_energy < 0:
        raise ConfigError("detector: thresholds (min_pt, min_energy) must be >= 0")
    response = d.pid.response
    if len(response) != 5 or any(len(row) != 5 for row in response):
        raise ConfigError(
            "detector.pid.response: expected 5 rows of 5 (true e, mu, pi, K, p x identified as)"
        )
    for i, row in enumerate(response):
        if any(v < 0 for v in row) or abs(sum(row) - 1) > 1e-6:
            raise ConfigError(
                f"detector.pid.response[{i}] = {row}: probabilities >= 0 summing to 1"
            )
    if d.vertex is not None and (d.vertex.resolution < 0 or d.vertex.min_ctau <= 0):
        raise ConfigError(
            f"detector.vertex: resolution = {d.vertex.resolution} must be >= 0 and min_ctau = "
            f"{d.vertex.min_ctau} > 0"
        )
    b = d.background
    for key in ("photons", "photon_energy", "tracks", "track_pt"):
        if getattr(b, key) < 0 or (key.endswith(("energy", "pt")) and getattr(b, key) == 0):
            raise ConfigError(
                f"detector.background.{key} = {getattr(b, key)}: means must be >= 0 (spectra > 0)"
            )


def _check_random(r: RandomTopologies) -> None:
    _at_least("random.max_depth", r.max_depth, 2)
    if r.max_depth > 127:
        raise ConfigError(f"random.max_depth = {r.max_depth}: at most 127 levels")
    _at_least("random.min_children", r.min_children, 2)
    _at_least("random.max_children", r.max_children, r.min_children)
    _at_least("random.min_leaves", r.min_leaves, 2)
    if r.max_leaves is not None:
        _at_least("random.max_leaves", r.max_leaves, r.min_leaves)
        if r.max_leaves > 127:
            raise ConfigError(f"random.max_leaves = {r.max_leaves}: at most 127 leaves")
    if not r.final_state_masses:
        raise ConfigError("random.final_state_masses: empty list")
    for key, masses in (
        ("final_state_masses", r.final_state_masses),
        ("intermediate_masses", r.intermediate_masses),
    ):
        for i, m in enumerate(masses):
            if not m > 0:
                raise ConfigError(f"random.{key}[{i}] = {m}: masses must be positive")
    shared = set(r.intermediate_masses) & set(r.final_state_masses)
    if shared:
        raise ConfigError(
            f"random: mass {sorted(shared)[0]} is both intermediate and final-state; particles "
            "are told apart by mass, so the lists must not overlap"
        )
    lightest = min(r.final_state_masses)
    # Every decaying particle needs room for at least min_children of the lightest final state.
    for key, m in [("root_mass", r.root_mass)] + [
        (f"intermediate_masses[{i}]", m) for i, m in enumerate(r.intermediate_masses)
    ]:
        if not m > r.min_children * lightest:
            raise ConfigError(
                f"random.{key} = {m}: below threshold, a decay into {r.min_children} of the "
                f"lightest final-state particle ({lightest}) needs more than "
                f"{r.min_children * lightest}"
            )
    for i, m in enumerate(r.intermediate_masses):
        if m >= r.root_mass:
            raise ConfigError(
                f"random.intermediate_masses[{i}] = {m}: must be below root_mass {r.root_mass}"
            )
    if not 0 <= r.relative_width < 0.5:
        raise ConfigError(f"random.relative_width = {r.relative_width}: expected 0 <= value < 0.5")
    if r.intermediate_weight < 0:
        raise ConfigError(f"random.intermediate_weight = {r.intermediate_weight}: must be >= 0")


def _at_least(key: str, value: int, lowest: int) -> None:
    if value < lowest:
        raise ConfigError(f"{key} = {value}: must be at least {lowest}")
