"""A detector response per particle species: what a Belle II-like detector measures of a leaf.

Each leaf of a decay-table tree is a charged track (e, mu, pi, K, p), a photon or a neutral
hadron (K_L0, n), read from its PDG id. :func:`measure` turns true 4-momenta into measured
leaf features and says which events a full reconstruction keeps; :func:`beam_background`
draws leaves from outside the tree. All draws have fixed shapes per call, so the output is a
function of the inputs and the generator's state.

Features per leaf (:data:`DETECTOR_FEATURES`): the measured ``(px, py, pz, E)``, ``charge``,
``is_photon`` and five PID likelihood ratios ``pid_e .. pid_p`` (summing to 1 for tracks, all
0 for neutral leaves), and with a ``vertex`` response the tracks' production-vertex
``displacement`` (:func:`detector_features`). Species classes (:data:`SPECIES`) are what a
particle-type head learns.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

from lcag.data_gen.config import ClusterResponse, Detector, VertexResponse
from lcag.data_gen.topology import Topology
from lcag.errors import ConfigError

__all__ = [
    "DETECTOR_FEATURES",
    "PHOTON",
    "SPECIES",
    "acceptance_guess",
    "background_species",
    "beam_background",
    "detector_features",
    "hypothesis_masses",
    "leaf_species",
    "measure",
    "momentum_covariance",
    "pid_features",
    "production_displacement",
]

SPECIES = ("e", "mu", "pi", "K", "p", "gamma", "K_L0/n")  # leaf species classes 0..6
TRACKS = {11: 0, 13: 1, 211: 2, 321: 3, 2212: 4}  # |PDG id| -> species (and PID row)
PHOTON, NEUTRAL_HADRON = 5, 6
SPECIES_OF_PDG = {**TRACKS, 22: PHOTON, 130: NEUTRAL_HADRON, 2112: NEUTRAL_HADRON}  # |PDG id|
DETECTOR_FEATURES = ("px", "py", "pz", "E", "charge", "is_photon")
DETECTOR_FEATURES += ("pid_e", "pid_mu", "pid_pi", "pid_K", "pid_p")
PION_MASS = 0.13957039  # GeV (PDG), the mass of background tracks
# GeV (PDG): e, mu, pi, K, p, the mass hypotheses of tracks (the PID's order)
TRACK_MASSES = np.array([0.00051099895, 0.1056583755, PION_MASS, 0.493677, 0.93827208816])
DISPLACEMENT = DETECTOR_FEATURES.index("pid_p") + 1  # its column, after the PID


def detector_features(detector: Detector) -> tuple[str, ...]:
    """The leaf feature columns a detector writes: :data:`DETECTOR_FEATURES`, and
    ``displacement`` with a ``vertex`` response."""
    return DETECTOR_FEATURES + (("displacement",) if detector.vertex is not None else ())


def production_displacement(
    true: np.ndarray, topology: Topology, vertex: VertexResponse, rng: np.random.Generator
) -> np.ndarray:
    """True distance ``(E, L)`` (cm) of each leaf's production vertex from the interaction
    point: the summed flights of its long-lived ancestors (:class:`VertexResponse`).

    Args:
        true: ``(E, L, 4)`` true leaf 4-momenta (GeV) of events of ``topology``.
    """
    tree = topology.tree
    E, L, _ = true.shape
    lifetimes = {node: _ctau_mm(int(tree.pdg_ids[node])) for node in tree.inner_nodes}
    flying = [node for node, ctau in lifetimes.items() if ctau >= vertex.min_ctau]
    draws = rng.exponential(size=(E, len(flying)))  # proper decay lengths in units of c tau
    flights = {}  # long-lived node -> (E, 3) its flight (mm)
    for column, node in enumerate(flying):
        p4 = true[:, list(tree.leaves_under(node))].sum(axis=1)  # (E, 4)
        mass = np.sqrt(np.maximum(p4[:, 3] ** 2 - np.square(p4[:, :3]).sum(1), 1e-12))
        flights[node] = p4[:, :3] / mass[:, None] * (lifetimes[node] * draws[:, column, None])
    produced = np.zeros((E, L, 3))  # each leaf's production vertex (mm)
    for leaf in range(L):
        for ancestor in tree.ancestors(leaf):
            if ancestor in flights:
                produced[:, leaf] += flights[ancestor]
    return np.linalg.norm(produced, axis=-1) / 10.0  # mm -> cm


@cache
def _ctau_mm(pdg: int) -> float:
    """``c tau`` (mm) of a particle from ``particle`` (0 where unknown or not finite)."""
    from particle import Particle

    try:
        ctau = Particle.from_pdgid(pdg).ctau
    except RuntimeError:  # an id particle does not know (ParticleNotFound): decays in place
        return 0.0
    return float(ctau) if ctau is not None and np.isfinite(ctau) else 0.0


def leaf_species(topology: Topology) -> tuple[np.ndarray, np.ndarray]:
    """Species class ``(L,)`` int8 and charge ``(L,)`` float64 of each leaf of ``topology``.

    Raises:
        ConfigError: a leaf without a PDG id, or one the detector does not see (a neutrino,
            a quark), naming it.
    """
    tree = topology.tree
    if tree.pdg_ids is None:
        raise ConfigError("detector: the topologies carry no PDG ids; use a 'decfile' source")
    species = np.empty(tree.n_leaves, dtype=np.int8)
    charges = np.empty(tree.n_leaves)
    for leaf in tree.leaves:
        pdg = int(tree.pdg_ids[leaf])
        kind = SPECIES_OF_PDG.get(abs(pdg))
        if kind is None:
            raise ConfigError(
                f"detector: leaf {leaf} ({tree.label(leaf)}, PDG id {pdg}) of a "
                f"{tree.label(tree.root)} decay is neither a track (e, mu, pi, K, p), a photon "
                "nor a neutral hadron (K_L0, n): the detector has no response for it"
            )
        species[leaf] = kind
        charges[leaf] = _charge(pdg)
    return species, charges


@cache
def _charge(pdg: int) -> float:
    from particle import Particle

    return float(Particle.from_pdgid(pdg).charge)


def measure(
    true: np.ndarray,
    masses: np.ndarray,
    species: np.ndarray,
    charges: np.ndarray,
    detector: Detector,
    rng: np.random.Generator,
    displacement: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Measured leaf features of ``E`` events of one topology, and which events are kept.

    Tracks: ``pT -> pT (1 + sigma N)``, ``sigma = a pT (+) b / beta``; polar and azimuthal
    angle smeared by the angular resolution; ``E`` from the mass hypothesis (the PID's
    favourite species, or the true mass: ``tracks.mass_hypothesis``). Clusters (photons,
    neutral hadrons): the deposited (kinetic) energy ``T -> T (1 + sigma N)``,
    ``sigma = a / sqrt(T) + b``, clipped at 0, angles smeared; ``|p|`` from ``T`` and the mass.
    A leaf is found with its species' efficiency when its true ``pT`` (tracks) or ``T``
    (clusters) reaches the threshold; an event is kept when every leaf is found.

    Args:
        true: ``(E, L, 4)`` true leaf 4-momenta (GeV).
        masses: ``(L,)`` leaf masses.
        species: ``(L,)`` species classes (:func:`leaf_species`).
        charges: ``(L,)`` leaf charges.
        displacement: ``(E, L)`` true production-vertex distances (cm,
            :func:`production_displacement`); needed with a ``vertex`` response, whose
            resolution smears them (tracks; neutral leaves get 0).

    Returns:
        ``(E, L, F)`` features (:func:`detector_features`) and ``(E,)`` bool kept.
    """
    E, L, _ = true.shape
    noise = rng.standard_normal((E, L, 3))
    found_draw = rng.random((E, L))
    gumbel = rng.gumbel(size=(E, L, 5))
    track = species < PHOTON
    pt = np.hypot(true[..., 0], true[..., 1])
    p = np.linalg.norm(true[..., :3], axis=-1)
    theta = np.arctan2(pt, true[..., 2])
    phi = np.arctan2(true[..., 1], true[..., 0])
    kinetic = np.maximum(true[..., 3] - masses, 0.0)

    a, b = detector.tracks.pt_resolution
    beta = p / np.maximum(true[..., 3], 1e-12)
    sigma_pt = np.hypot(a * pt, b / np.maximum(beta, 1e-12))
    pt_meas = np.maximum(pt * (1.0 + sigma_pt * noise[..., 0]), 1e-9)

    leaf = _leaf_response(species, detector)
    sigma_t = leaf["res_a"] / np.sqrt(np.maximum(kinetic, 1e-12)) + leaf["res_b"]
    t_meas = np.maximum(kinetic * (1.0 + sigma_t * noise[..., 0]), 0.0)

    theta_meas = _reflect(theta + leaf["angle"] * noise[..., 1])
    phi_meas = phi + leaf["angle"] * noise[..., 2]
    sin_t, cos_t = np.sin(theta_meas), np.cos(theta_meas)
    p_cluster = np.sqrt(t_meas * (t_meas + 2.0 * masses))
    p_meas = np.where(track, pt_meas / np.maximum(sin_t, 1e-12), p_cluster)
    features = np.zeros((E, L, len(detector_features(detector))))
    features[..., 0] = p_meas * sin_t * np.cos(phi_meas)
    features[..., 1] = p_meas * sin_t * np.sin(phi_meas)
    features[..., 2] = p_meas * cos_t
    pid = pid_features(species, gumbel, detector)
    track_mass = hypothesis_masses(pid, masses, detector)
    features[..., 3] = np.where(track, np.hypot(p_meas, track_mass), t_meas + masses)
    features[..., 4] = charges
    features[..., 5] = species == PHOTON
    features[..., 6:DISPLACEMENT] = pid
    if detector.vertex is not None:
        if displacement is None:
            raise ValueError("measure: a vertex response needs the true displacements")
        smeared = displacement + detector.vertex.resolution * rng.standard_normal((E, L))
        features[..., DISPLACEMENT] = np.where(track, smeared, 0.0)

    visible = np.where(track, pt, kinetic) >= leaf["threshold"]
    found = (found_draw < leaf["efficiency"]) & visible
    return features, found.all(axis=1)


def _leaf_response(species: Sequence[int], detector: Detector) -> dict[str, np.ndarray]:
    """Per leaf ``(L,)``: the response parameters of its species (track or cluster):
    ``angle``, ``efficiency``, ``threshold`` (min pT or min kinetic energy) and the cluster
    energy resolution ``res_a``, ``res_b`` (unused for tracks)."""
    rows = []
    for s in species:
        cluster = _cluster(detector, s)
        part = detector.tracks if s < PHOTON else cluster
        threshold = detector.tracks.min_pt if s < PHOTON else cluster.min_energy
        rows.append((part.angle_resolution, part.efficiency, threshold, *cluster.energy_resolution))
    table = np.array(rows, dtype=np.float64).reshape(len(rows), 5)
    keys = ("angle", "efficiency", "threshold", "res_a", "res_b")
    return {key: table[:, k] for k, key in enumerate(keys)}


def _cluster(detector: Detector, species: int) -> ClusterResponse:
    return detector.neutral_hadrons if species == NEUTRAL_HADRON else detector.photons


def _reflect(theta: np.ndarray) -> np.ndarray:
    """Polar angles folded back into ``[0, pi]``."""
    theta = np.abs(theta)
    return np.where(theta > np.pi, 2.0 * np.pi - theta, theta)


def hypothesis_masses(pid: np.ndarray, masses: np.ndarray, detector: Detector) -> np.ndarray:
    """The mass ``(...)`` a reconstruction gives each track: that of the species its PID
    likelihood ratios ``pid (..., 5)`` favour (``tracks.mass_hypothesis: pid``), or the true
    ``masses (...)`` (``true``)."""
    if detector.tracks.mass_hypothesis == "true":
        return np.broadcast_to(masses, pid.shape[:-1])
    return TRACK_MASSES[pid.argmax(axis=-1)]


def pid_features(species: np.ndarray, gumbel: np.ndarray, detector: Detector) -> np.ndarray:
    """PID likelihood ratios ``(..., 5)``: ``softmax(log(response[s]) + gumbel)`` for tracks.

    Args:
        species: ``(...)`` species classes; neutral leaves get zeros.
        gumbel: ``(..., 5)`` standard Gumbel draws.
    """
    response = np.asarray(detector.pid.response, dtype=np.float64)
    track = species < PHOTON
    logits = np.log(np.maximum(response[np.where(track, species, 0)], 1e-300)) + gumbel
    logits -= logits.max(axis=-1, keepdims=True)
    ratios = np.exp(logits)
    ratios /= ratios.sum(axis=-1, keepdims=True)
    return np.where(track[..., None], ratios, 0.0)


def beam_background(
    n_events: int, detector: Detector, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per event, Poisson numbers of beam-background photons and pion tracks, as measured.

    Photons: ``E = min_energy + Exp(photon_energy)``; tracks: either charge, ``pT = min_pt +
    Exp(track_pt)``; directions isotropic; tracks get pion PID responses. Each event lists its
    photons first; :func:`background_species` gives the leaves' species.

    Returns:
        ``n_events`` feature arrays ``(k_e, F)`` (:func:`detector_features`; tracks from the
        interaction point, their displacement smeared about 0).
    """
    bg = detector.background
    n_photons = rng.poisson(bg.photons, size=n_events)
    n_tracks = rng.poisson(bg.tracks, size=n_events)
    g, t = int(n_photons.sum()), int(n_tracks.sum())
    energy = detector.photons.min_energy + rng.exponential(bg.photon_energy, size=g)
    pt = detector.tracks.min_pt + rng.exponential(bg.track_pt, size=t)
    cos_theta = rng.uniform(-1.0, 1.0, size=g + t)
    phi = rng.uniform(0.0, 2.0 * np.pi, size=g + t)
    charge = np.where(rng.random(t) < 0.5, -1.0, 1.0)
    gumbel = rng.gumbel(size=(t, 5))
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    p = np.concatenate([energy, pt / np.maximum(sin_theta[g:], 1e-12)])
    features = np.zeros((g + t, len(detector_features(detector))))
    features[:, 0] = p * sin_theta * np.cos(phi)
    features[:, 1] = p * sin_theta * np.sin(phi)
    features[:, 2] = p * cos_theta
    pid = pid_features(np.full(t, TRACKS[211]), gumbel, detector)
    track_mass = hypothesis_masses(pid, np.full(t, PION_MASS), detector)
    features[:, 3] = np.concatenate([energy, np.hypot(p[g:], track_mass)])
    features[g:, 4] = charge
    features[:g, 5] = 1.0
    features[g:, 6:DISPLACEMENT] = pid
    if detector.vertex is not None:
        features[g:, DISPLACEMENT] = detector.vertex.resolution * rng.standard_normal(t)
    # photons of all events, then tracks: a stable sort by event lists each event's photons
    # first, then its tracks
    event = np.concatenate(
        [np.repeat(np.arange(n_events), n_photons), np.repeat(np.arange(n_events), n_tracks)]
    )
    order = np.argsort(event, kind="stable")
    return np.split(features[order], np.cumsum(n_photons + n_tracks)[:-1])


def background_species(features: np.ndarray) -> np.ndarray:
    """Species ``(...)`` int8 of background leaves ``(..., 11)``: photons or pions."""
    return np.where(features[..., 5] > 0, PHOTON, TRACKS[211]).astype(np.int8)


def acceptance_guess(species: Sequence[int], detector: Detector) -> float:
    """The efficiencies' product for one event of these leaf species (thresholds ignored)."""
    return float(np.prod(_leaf_response(species, detector)["efficiency"]))


def momentum_covariance(features: np.ndarray, detector: Detector) -> np.ndarray:
    """The measurement covariance ``(..., 3, 3)`` of each leaf's ``(px, py, pz)``, as
    :func:`measure` smears it, evaluated at the measured values.

    Tracks (``charge != 0``): independent errors on ``pT`` (``sigma(pT) = pT (a pT (+) b /
    beta)``), polar and azimuthal angle, ``pz = pT cot(theta)``. Clusters (photons by
    ``is_photon``, else neutral hadrons): independent errors on the kinetic energy ``T``
    (``sigma(T) = T (a / sqrt(T) + b)``, so ``sigma(|p|) = E / |p| sigma(T)``) and the two
    angles. Linear propagation to the Cartesian components.

    Args:
        features: ``(..., F)`` measured leaves, ``(px, py, pz, E, charge, is_photon)`` first.
    """
    p3, energy = features[..., :3], features[..., 3]
    charge, photon = features[..., 4], features[..., 5]
    pt = np.maximum(np.hypot(p3[..., 0], p3[..., 1]), 1e-12)
    p = np.maximum(np.linalg.norm(p3, axis=-1), 1e-12)
    theta = np.arctan2(pt, p3[..., 2])
    phi = np.arctan2(p3[..., 1], p3[..., 0])
    sin_t, cos_t, sin_p, cos_p = np.sin(theta), np.cos(theta), np.sin(phi), np.cos(phi)
    track = charge != 0
    mass = np.sqrt(np.maximum(energy**2 - p**2, 0.0))
    kinetic = np.maximum(energy - mass, 1e-12)

    a, b = detector.tracks.pt_resolution
    beta = p / np.maximum(energy, 1e-12)
    sigma_pt = pt * np.hypot(a * pt, b / np.maximum(beta, 1e-12))
    photons, hadrons, is_photon = detector.photons, detector.neutral_hadrons, photon > 0
    res_a = np.where(is_photon, photons.energy_resolution[0], hadrons.energy_resolution[0])
    res_b = np.where(is_photon, photons.energy_resolution[1], hadrons.energy_resolution[1])
    sigma_p = energy / p * kinetic * (res_a / np.sqrt(kinetic) + res_b)
    cluster_angle = np.where(is_photon, photons.angle_resolution, hadrons.angle_resolution)
    angle = np.where(track, detector.tracks.angle_resolution, cluster_angle)

    # columns: d(px, py, pz) / d(magnitude, theta, phi), magnitude pT (tracks) or |p| (clusters)
    jacobian = np.zeros((*features.shape[:-1], 3, 3))
    zero = np.zeros_like(pt)
    d_magnitude = np.where(
        track[..., None],
        np.stack([cos_p, sin_p, cos_t / np.maximum(sin_t, 1e-12)], -1),
        np.stack([sin_t * cos_p, sin_t * sin_p, cos_t], -1),
    )
    d_theta = np.where(
        track[..., None],
        np.stack([zero, zero, -pt / np.maximum(sin_t, 1e-12) ** 2], -1),
        np.stack([p * cos_t * cos_p, p * cos_t * sin_p, -p * sin_t], -1),
    )
    d_phi = np.stack([-pt * sin_p, pt * cos_p, zero], -1)
    jacobian[..., 0], jacobian[..., 1], jacobian[..., 2] = d_magnitude, d_theta, d_phi
    sigma = np.stack([np.where(track, sigma_pt, sigma_p), angle, angle], -1)
    scaled = jacobian * sigma[..., None, :]
    return scaled @ np.swapaxes(scaled, -1, -2)
