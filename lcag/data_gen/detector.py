"""A detector response per particle species: what a Belle II-like detector measures of a leaf.

Each leaf of a decay-table tree is a charged track (e, mu, pi, K, p), a photon or a neutral
hadron (K_L0, n), read from its PDG id. :func:`measure` turns true 4-momenta into measured
leaf features and says which events a full reconstruction keeps; :func:`beam_background`
draws leaves from outside the tree. All draws have fixed shapes per call, so the output is a
function of the inputs and the generator's state.

Features per leaf (:data:`DETECTOR_FEATURES`): the measured ``(px, py, pz, E)``, ``charge``,
``is_photon`` and five PID likelihood ratios ``pid_e .. pid_p`` (summing to 1 for tracks, all
0 for neutral leaves). Species classes (:data:`SPECIES`) are what a particle-type head learns.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

from lcag.data_gen.config import ClusterResponse, Detector
from lcag.data_gen.topology import Topology
from lcag.errors import ConfigError

__all__ = [
    "DETECTOR_FEATURES",
    "PHOTON",
    "SPECIES",
    "beam_background",
    "leaf_species",
    "measure",
    "pid_features",
]

SPECIES = ("e", "mu", "pi", "K", "p", "gamma", "K_L0/n")  # leaf species classes 0..6
TRACKS = {11: 0, 13: 1, 211: 2, 321: 3, 2212: 4}  # |PDG id| -> species (and PID row)
PHOTON, NEUTRAL_HADRON = 5, 6
NEUTRAL_HADRONS = {130: NEUTRAL_HADRON, 2112: NEUTRAL_HADRON}
DETECTOR_FEATURES = ("px", "py", "pz", "E", "charge", "is_photon")
DETECTOR_FEATURES += ("pid_e", "pid_mu", "pid_pi", "pid_K", "pid_p")
PION_MASS = 0.13957039  # GeV (PDG), the mass of background tracks


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
        kind = {**TRACKS, 22: PHOTON, **NEUTRAL_HADRONS}.get(abs(pdg))
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
) -> tuple[np.ndarray, np.ndarray]:
    """Measured leaf features of ``E`` events of one topology, and which events are kept.

    Tracks: ``pT -> pT (1 + sigma N)``, ``sigma = a pT (+) b / beta``; polar and azimuthal
    angle smeared by the angular resolution; ``E`` from the true mass. Clusters (photons,
    neutral hadrons): the deposited (kinetic) energy ``T -> T (1 + sigma N)``,
    ``sigma = a / sqrt(T) + b``, clipped at 0, angles smeared; ``|p|`` from ``T`` and the mass.
    A leaf is found with its species' efficiency when its true ``pT`` (tracks) or ``T``
    (clusters) reaches the threshold; an event is kept when every leaf is found.

    Args:
        true: ``(E, L, 4)`` true leaf 4-momenta (GeV).
        masses: ``(L,)`` leaf masses.
        species: ``(L,)`` species classes (:func:`leaf_species`).
        charges: ``(L,)`` leaf charges.

    Returns:
        ``(E, L, 11)`` features (:data:`DETECTOR_FEATURES`) and ``(E,)`` bool kept.
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

    response = [_cluster(detector, s) for s in species]
    res = np.array([r.energy_resolution for r in response])  # (L, 2)
    sigma_t = res[:, 0] / np.sqrt(np.maximum(kinetic, 1e-12)) + res[:, 1]
    t_meas = np.maximum(kinetic * (1.0 + sigma_t * noise[..., 0]), 0.0)

    angle = np.array(
        [
            detector.tracks.angle_resolution if t else r.angle_resolution
            for t, r in zip(track, response, strict=True)
        ]
    )
    theta_meas = _reflect(theta + angle * noise[..., 1])
    phi_meas = phi + angle * noise[..., 2]
    sin_t, cos_t = np.sin(theta_meas), np.cos(theta_meas)
    p_cluster = np.sqrt(t_meas * (t_meas + 2.0 * masses))
    p_meas = np.where(track, pt_meas / np.maximum(sin_t, 1e-12), p_cluster)
    features = np.zeros((E, L, len(DETECTOR_FEATURES)))
    features[..., 0] = p_meas * sin_t * np.cos(phi_meas)
    features[..., 1] = p_meas * sin_t * np.sin(phi_meas)
    features[..., 2] = p_meas * cos_t
    features[..., 3] = np.where(track, np.hypot(p_meas, masses), t_meas + masses)
    features[..., 4] = charges
    features[..., 5] = species == PHOTON
    features[..., 6:] = pid_features(species, gumbel, detector)

    efficiency = np.array(
        [
            detector.tracks.efficiency if t else r.efficiency
            for t, r in zip(track, response, strict=True)
        ]
    )
    threshold = np.array(
        [
            detector.tracks.min_pt if t else r.min_energy
            for t, r in zip(track, response, strict=True)
        ]
    )
    visible = np.where(track, pt, kinetic) >= threshold
    found = (found_draw < efficiency) & visible
    return features, found.all(axis=1)


def _cluster(detector: Detector, species: int) -> ClusterResponse:
    return detector.neutral_hadrons if species == NEUTRAL_HADRON else detector.photons


def _reflect(theta: np.ndarray) -> np.ndarray:
    """Polar angles folded back into ``[0, pi]``."""
    theta = np.abs(theta)
    return np.where(theta > np.pi, 2.0 * np.pi - theta, theta)


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
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per event, Poisson numbers of beam-background photons and pion tracks, as measured.

    Photons: ``E = min_energy + Exp(photon_energy)``; tracks: either charge, ``pT = min_pt +
    Exp(track_pt)``; directions isotropic; tracks get pion PID responses.

    Returns:
        ``n_events`` feature arrays ``(k_e, 11)`` and ``n_events`` species arrays ``(k_e,)``.
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
    features = np.zeros((g + t, len(DETECTOR_FEATURES)))
    features[:, 0] = p * sin_theta * np.cos(phi)
    features[:, 1] = p * sin_theta * np.sin(phi)
    features[:, 2] = p * cos_theta
    features[:, 3] = np.concatenate([energy, np.hypot(p[g:], PION_MASS)])
    features[g:, 4] = charge
    features[:g, 5] = 1.0
    species = np.concatenate([np.full(g, PHOTON), np.full(t, TRACKS[211])]).astype(np.int8)
    features[g:, 6:] = pid_features(species[g:], gumbel, detector)
    photon_split = np.cumsum(n_photons)[:-1]
    track_split = np.cumsum(n_tracks)[:-1]
    out_features, out_species = [], []
    for ph_f, tr_f, ph_s, tr_s in zip(
        np.split(features[:g], photon_split),
        np.split(features[g:], track_split),
        np.split(species[:g], photon_split),
        np.split(species[g:], track_split),
        strict=True,
    ):
        out_features.append(np.concatenate([ph_f, tr_f]))
        out_species.append(np.concatenate([ph_s, tr_s]))
    return out_features, out_species


def acceptance_guess(species: Sequence[int], detector: Detector) -> float:
    """The efficiencies' product for one event of these leaf species (thresholds ignored)."""
    return float(
        np.prod(
            [
                detector.tracks.efficiency if s < PHOTON else _cluster(detector, s).efficiency
                for s in species
            ]
        )
    )
