"""Physics of the generated 4-momenta (phasespace at every node, boosts in numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from lcag.data_gen.config import Kinematics, RandomTopologies
from lcag.data_gen.kinematics import (
    NBodyEngine,
    add_background,
    boost,
    generate_events,
    sample_masses,
    smear,
)
from lcag.data_gen.topology import sample_random_topologies


def invariant_mass(p: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(p[..., 3] ** 2 - np.square(p[..., :3]).sum(-1), 0.0))


@pytest.fixture(scope="module")
def engine() -> NBodyEngine:
    return NBodyEngine()


@pytest.fixture(scope="module")
def topologies():
    cfg = RandomTopologies(max_depth=6, relative_width=0.0)
    return sample_random_topologies(cfg, 8, np.random.default_rng(3))


@pytest.mark.parametrize("unweight", [True, False])
def test_momentum_and_mass_conservation(engine, topologies, unweight):
    rng = np.random.default_rng(0)
    blocks = generate_events(topologies, [300] * 8, rng, engine, Kinematics(unweight=unweight))
    # float64 (eps 2.2e-16) through at most 5 decays and boosts of momenta <= 100: sums off by
    # ~1e-13. A mass from E^2 - p^2 loses a factor (E / m)^2: <= 100 for inner nodes (m >= 10),
    # <= 1e4 for the lightest leaves (m = 1), so ~1e-14 and ~1e-12 relative; the bounds keep
    # 2-5 orders of magnitude of room.
    for topology, block in zip(topologies, blocks, strict=True):
        tree = topology.tree
        for node in tree.inner_nodes:
            parent = block.momenta[:, node]
            children = block.momenta[:, list(tree.children(node))].sum(axis=1)
            scale = np.abs(parent).max(axis=1, keepdims=True)
            assert np.abs(children - parent).max() / scale.min() < 1e-6
            np.testing.assert_allclose(invariant_mass(parent), tree.masses[node], rtol=1e-9)
        np.testing.assert_allclose(
            invariant_mass(block.leaves),
            np.broadcast_to(tree.masses[: tree.n_leaves], block.leaves.shape[:2]),
            rtol=1e-6,
            atol=1e-9,
        )
        np.testing.assert_allclose(block.leaves.sum(axis=1), [[0, 0, 0, 100.0]] * 300, atol=1e-9)


def test_mother_boost_moves_the_sum(engine, topologies):
    kin = Kinematics(mother_momentum=[3.0, -4.0, 12.0])
    (block,) = generate_events(topologies[:1], [200], np.random.default_rng(1), engine, kin)
    total = block.leaves.sum(axis=1)
    expected = [3.0, -4.0, 12.0, np.sqrt(9 + 16 + 144 + 100.0**2)]
    # float64 sums of leaves of E <= 101 (~1e-13); the total's mass has (E / m)^2 ~ 1
    np.testing.assert_allclose(total, np.broadcast_to(expected, total.shape), atol=1e-8)
    np.testing.assert_allclose(invariant_mass(total), 100.0, rtol=1e-12)


def test_same_seed_same_bits(engine, topologies):
    runs = [
        generate_events(topologies, [50] * 8, np.random.default_rng(9), engine, Kinematics())
        for _ in range(2)
    ]
    for a, b in zip(*runs, strict=True):
        assert a.momenta.tobytes() == b.momenta.tobytes()


def test_unweighting_gives_uniform_phase_space(engine):
    # Unweighted events must reproduce the weight-averaged |p| of raw phasespace decays,
    # which the raw (weighted) events, kept as they come, miss by many standard errors.
    ratios = np.tile([0.05, 0.3, 0.2], (40_000, 1))
    rng = np.random.default_rng(4)
    raw, weights = engine.raw(ratios, rng)
    p_raw = np.linalg.norm(raw[:, 0, :3], axis=1)
    expected = np.average(p_raw, weights=weights)
    ceiling = np.full(len(ratios), weights.max() * 1.1)
    kept = engine.decay(ratios, rng, ceiling)
    p_kept = np.linalg.norm(kept[:, 0, :3], axis=1)
    error = p_kept.std() / np.sqrt(len(p_kept))
    assert abs(p_kept.mean() - expected) < 4 * error
    assert abs(p_raw.mean() - expected) > 10 * error  # the raw sample really is biased
    # a unit-mass parent at rest: sums of 3 momenta < 1 in float64, ~1e-16
    np.testing.assert_allclose(kept.sum(axis=1), np.tile([0, 0, 0, 1.0], (40_000, 1)), atol=1e-12)


@pytest.mark.parametrize("relative_width", [0.02, 0.2])
def test_breit_wigner_masses_stay_kinematically_allowed(relative_width):
    cfg = RandomTopologies(relative_width=relative_width)
    (topology,) = sample_random_topologies(cfg, 1, np.random.default_rng(11))
    tree = topology.tree
    masses = sample_masses(topology, 5000, np.random.default_rng(0))
    low = topology.thresholds()
    for node in tree.inner_nodes:
        kids = list(tree.children(node))
        assert (masses[:, kids].sum(axis=1) <= masses[:, node] + 1e-9).all()
        assert (masses[:, node] >= low[node] - 1e-9).all()
        if node != tree.root:
            assert masses[:, node].std() > 0  # really varies
            if relative_width < 0.1:  # narrow: centred on the nominal mass
                median = np.median(masses[:, node])
                assert abs(median - tree.masses[node]) < 0.02 * tree.masses[node]
    assert (masses[:, tree.root] == 100.0).all()


def test_smearing_keeps_leaf_masses():
    rng = np.random.default_rng(2)
    leaves = np.zeros((1000, 3, 4))
    leaves[..., :3] = rng.normal(size=(1000, 3, 3)) * 10
    masses = np.array([1.0, 2.0, 5.0])
    leaves[..., 3] = np.sqrt(np.square(leaves[..., :3]).sum(-1) + masses**2)
    smeared = smear(leaves, masses, 0.01, rng)
    # E recomputed from the smeared p in float64; E^2 - p^2 at |p| ~ 30, m >= 1: ~1e-13
    np.testing.assert_allclose(
        invariant_mass(smeared), np.broadcast_to(masses, (1000, 3)), rtol=1e-6
    )
    relative = smeared[..., :3] / leaves[..., :3] - 1
    assert 0.008 < relative.std() < 0.012
    assert smear(leaves, masses, 0.0, rng) is leaves


def test_background_leaves():
    rng = np.random.default_rng(3)
    kin = Kinematics(background_mean=2.0, background_momentum=5.0)
    extra = add_background(4000, kin, [1.0, 2.0], rng)
    counts = np.array([len(e) for e in extra])
    assert abs(counts.mean() - 2.0) < 0.1
    stacked = np.concatenate(extra)
    assert set(np.round(invariant_mass(stacked), 6)) <= {1.0, 2.0}
    assert abs(np.linalg.norm(stacked[:, :3], axis=1).mean() - 5.0) < 0.3
    assert all(len(e) == 0 for e in add_background(5, Kinematics(), [1.0], rng))


def test_boost_of_a_particle_at_rest_gives_the_frame():
    frame = np.array([[1.0, 2.0, 3.0, np.sqrt(14 + 25.0)]])
    at_rest = np.array([[0.0, 0.0, 0.0, 5.0]])
    np.testing.assert_allclose(boost(at_rest, frame, np.array([5.0])), frame, rtol=1e-12)


def test_prepare_traces_without_changing_any_decay(engine):
    """A worker traces phasespace before its first shard; the decays it then makes are those of
    an engine that traced on first use (each phasespace call is reseeded from ``rng``)."""
    ratios = np.random.default_rng(1).uniform(0.05, 0.3, size=(500, 3))
    reference = engine.raw(ratios, np.random.default_rng(7))
    prepared = NBodyEngine(chunk_size=engine.chunk_size)
    prepared.prepare([3, 2, 3])
    assert sorted(prepared._generators) == [2, 3]
    momenta, weights = prepared.raw(ratios, np.random.default_rng(7))
    np.testing.assert_array_equal(momenta, reference[0])
    np.testing.assert_array_equal(weights, reference[1])
