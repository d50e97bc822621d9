"""The combinatorial (invariant-mass) baseline: exact on exact data, always valid trees, the
likelihood per node, its kinematic fit and its tuning on events of known trees."""

from __future__ import annotations

import numpy as np
import pytest

from lcag import DecayTree, is_valid_lcag, tree_to_lcag
from lcag.baselines import CombinatorialBaseline
from lcag.baselines.combinatorial import METHODS, kinematic_fit, node_log_ratio, subset_masses
from lcag.data import LCAGDataset, collate
from lcag.data_gen.kinematics import boost
from lcag.errors import InvalidInputError
from lcag.evaluate import baseline_for

PAPER_MASSES = [90.0, 80.0, 70.0, 50.0, 25.0, 20.0, 10.0]
CASCADE = DecayTree.from_nested(((0, 1), (2, 3)))  # 100 -> X(50) Y(20), X -> 0 1, Y -> 2 3


def _two_body(mass: np.ndarray, m1: float, m2: float, rng: np.random.Generator) -> np.ndarray:
    """``(E, 2, 4)`` an isotropic two-body decay of masses ``mass (E,)`` in its rest frame."""
    p = np.sqrt((mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2)) / (2 * mass)
    direction = rng.normal(size=(len(mass), 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    q = p[:, None] * direction
    first = np.column_stack([q, np.sqrt(p**2 + m1**2)])
    second = np.column_stack([-q, np.sqrt(p**2 + m2**2)])
    return np.stack([first, second], axis=1)


def cascades(n: int, seed: int, resolution: float = 0.0, width: float = 0.0) -> np.ndarray:
    """``(n, 4, 4)`` events of :data:`CASCADE` at rest: leaf masses 2, 3, 1, 5; X and Y with
    Cauchy line shapes of ``width`` per cent of their mass; each component smeared by
    ``resolution``, E recomputed from the leaf mass (as ``lcag-generate`` does)."""
    rng = np.random.default_rng(seed)
    m_x = 50 + width / 100 * 50 / 2 * np.tan(np.pi * (rng.random(n) - 0.5)).clip(-5, 5)
    m_y = 20 + width / 100 * 20 / 2 * np.tan(np.pi * (rng.random(n) - 0.5)).clip(-5, 5)
    top = np.zeros((n, 2, 4))
    p = np.sqrt((100**2 - (m_x + m_y) ** 2) * (100**2 - (m_x - m_y) ** 2)) / 200
    top[:, 0, 2], top[:, 1, 2] = p, -p
    top[:, 0, 3], top[:, 1, 3] = np.hypot(p, m_x), np.hypot(p, m_y)
    x = boost(_two_body(m_x, 2.0, 3.0, rng), top[:, :1], m_x[:, None])
    y = boost(_two_body(m_y, 1.0, 5.0, rng), top[:, 1:], m_y[:, None])
    leaves = np.concatenate([x, y], axis=1)
    masses = np.array([2.0, 3.0, 1.0, 5.0])
    leaves[..., :3] *= 1 + resolution * rng.standard_normal(leaves[..., :3].shape)
    leaves[..., 3] = np.sqrt(np.square(leaves[..., :3]).sum(-1) + masses**2)
    return leaves


@pytest.mark.parametrize("method", METHODS)
def test_reconstructs_exact_tiny_events(tiny_data, method):
    dataset = LCAGDataset(tiny_data, "test")
    events = dataset.__getitems__(range(len(dataset)))
    batch = collate(events)
    baseline = CombinatorialBaseline(PAPER_MASSES, method=method)
    matrices = baseline.lcag(batch["x"].numpy().astype(np.float64), batch["mask"].numpy())
    right = 0
    for matrix, event in zip(matrices, events, strict=True):
        target = event["target"].copy()
        np.fill_diagonal(target, 0)
        right += np.array_equal(matrix, target)
    assert right / len(events) >= 0.999


def test_baseline_for_tunes_on_validation_and_keeps_exact_data_exact(tiny_data):
    dataset = LCAGDataset(tiny_data, "test")
    tuned = baseline_for(dataset, max_leaves=8)
    assert tuned.method == "likelihood"
    assert tuned.total_momentum == [0.0, 0.0, 0.0, 100.0]  # mother at rest, root mass 100
    assert tuned.mass_weights is not None  # counted on the validation trees
    window = baseline_for(dataset, max_leaves=8, method="window")
    assert window.method == "window"
    assert window.total_momentum is None
    events = dataset.__getitems__(range(0, len(dataset), 3))
    leaves = [e["x"].astype(np.float64) for e in events]
    truth = [e["target"] for e in events]
    assert tuned.perfect_rate(leaves, truth) >= 0.999
    assert window.perfect_rate(leaves, truth) >= 0.999


@pytest.mark.parametrize("method", METHODS)
def test_smeared_events_still_give_valid_trees(method):
    rng = np.random.default_rng(0)
    events = []
    for n in rng.integers(1, 10, size=40):
        p = rng.normal(size=(n, 3)) * 10
        events.append(np.column_stack([p, np.sqrt((p**2).sum(1) + 1.0)]))
    baseline = CombinatorialBaseline(
        PAPER_MASSES, resolution=0.01, method=method, total_momentum=[0, 0, 0, 100]
    )
    for event, tree in zip(events, baseline.reconstruct(events), strict=True):
        assert tree.n_leaves == len(event)
        assert is_valid_lcag(tree_to_lcag(tree))


def test_likelihood_weighs_evidence_where_the_window_counts_candidates():
    # Leaves 0, 1 make exactly 50; {1, 2} and {0, 3} sit 2.8 sigma from two listed masses.
    # The window takes the two weak candidates (more sets win), the likelihood the one good node.
    (event,) = cascades(1, seed=3)
    mass, sigma = subset_masses(event, 0.01)
    weak = [0b0110, 0b1001]
    listed = [50.0] + [float(mass[s] + 2.8 * sigma[s]) for s in weak]
    assert abs(mass[0b0011] - 50.0) < 1e-9
    window = CombinatorialBaseline(listed, resolution=0.01, method="window")
    likelihood = CombinatorialBaseline(listed, resolution=0.01)
    assert window.reconstruct([event])[0] == DecayTree.from_nested(((1, 2), (0, 3)))
    assert likelihood.reconstruct([event])[0] == DecayTree.from_nested(((0, 1), 2, 3))


def test_a_near_coincidence_on_exact_data_is_no_node():
    # Exact masses: leaves 0, 1, 2 miss a listed mass by 3.5 tolerances. Within the tolerance's
    # sharp Gaussian that would still outscore the background; beyond `window` it counts 0.
    (event,) = cascades(1, seed=4)
    mass, _ = subset_masses(event, 0.0)
    listed = [50.0, float(mass[0b0111] * (1 + 3.5e-6))]
    exact = CombinatorialBaseline(listed)
    assert exact.reconstruct([event])[0] == DecayTree.from_nested(((0, 1), 2, 3))
    loose = CombinatorialBaseline(listed, window=5.0)
    assert loose.reconstruct([event])[0] == DecayTree.from_nested((((0, 1), 2), 3))


def test_node_log_ratio_peaks_at_the_mass_and_follows_the_line_shape():
    masses, weights = np.array([50.0]), np.array([1.0])
    mass = np.array([0.0, 0.0, 0.0, 48.0, 0.0, 50.0, 50.5, 100.0])  # subsets of 3 leaves
    sigma = np.full(8, 0.3)
    narrow = node_log_ratio(mass, sigma, masses, np.array([0.0]), weights)
    wide = node_log_ratio(mass, sigma, masses, np.array([2.0]), weights)
    assert np.isneginf(narrow[[0, 1, 2, 4, 7]]).all()  # single leaves, empty set, the event
    assert narrow[5] > narrow[6] > 0
    assert np.isneginf(narrow[3])  # 6.7 sigma: beyond the window
    uncut = node_log_ratio(mass, sigma, masses, np.array([0.0]), weights, window=np.inf)
    assert uncut[6] == narrow[6]
    assert narrow[5] > wide[5]  # a width spreads the same probability wider
    assert wide[3] > uncut[3] + 10  # Breit-Wigner tails against Gaussian ones
    # normalised: the Voigt profile integrates to 1 (ratio = log(density * m_L))
    grid, step = np.linspace(30, 70, 4001, retstep=True)
    densities = [
        np.exp(node_log_ratio(np.array([0, 0, 0, m, 0, 0, 0, 100.0]), sigma, masses,
                              np.array([2.0]), weights)[3]) / 100
        for m in grid
    ]  # fmt: skip
    assert 0.95 < np.sum(densities) * step < 1.0  # the Cauchy tails beyond +-20 hold ~3 %


def test_kinematic_fit_meets_the_constraints_and_sharpens_masses():
    events = cascades(300, seed=1, resolution=0.01)
    total = np.array([0.0, 0.0, 0.0, 100.0])
    pulls, plain, fitted = [], [], []
    for event in events:
        momenta, covariance = kinematic_fit(event, 0.01, total)
        assert np.allclose(momenta.sum(0), total, atol=1e-6)
        assert covariance.shape == (12, 12)
        mass, sigma = subset_masses(event, 0.01, total)
        pulls.append((mass[0b0011] - 50.0) / sigma[0b0011])
        fitted.append(sigma[0b0011])
        plain.append(subset_masses(event, 0.01)[1][0b0011])
    assert 0.85 < np.std(pulls) < 1.15  # the propagated resolution describes the spread
    assert np.median(np.array(fitted) / np.array(plain)) < 0.9


def test_tuning_finds_parameters_at_least_as_good_on_its_events():
    events = cascades(150, seed=2, resolution=0.01, width=2.0)
    truth = [CASCADE] * len(events)
    listed, widths = [50.0, 20.0, 70.0], [1.0, 0.4, 1.4]
    untuned = CombinatorialBaseline(listed, widths, resolution=0.01, node_penalty=-30.0)
    assert untuned.perfect_rate(events, truth) == 0.0  # no node is worth -30
    tuned = untuned.tune(events, truth)
    assert tuned.node_penalty != -30.0
    assert tuned.perfect_rate(events, truth) > 0.8
    default = CombinatorialBaseline(listed, widths, resolution=0.01)
    assert tuned.perfect_rate(events, truth) >= default.perfect_rate(events, truth)
    weights = np.asarray(tuned.mass_weights)
    assert weights[2] < min(weights[0], weights[1])  # 70 is never a node here
    lcag_truth = [tree_to_lcag(CASCADE)] * len(events)  # matrices work as truth too
    assert tuned == untuned.tune(events, lcag_truth)


def test_bad_input_is_refused():
    baseline = CombinatorialBaseline(PAPER_MASSES, max_leaves=6)
    with pytest.raises(InvalidInputError, match="has 7 leaves, at most 6"):
        baseline.reconstruct([np.ones((7, 4))])
    with pytest.raises(InvalidInputError, match="3 features per leaf"):
        baseline.reconstruct(np.ones((2, 3, 3)))
    with pytest.raises(InvalidInputError, match="positive intermediate masses"):
        CombinatorialBaseline([])
    with pytest.raises(InvalidInputError, match="method = 'chi2'"):
        CombinatorialBaseline(PAPER_MASSES, method="chi2")
    with pytest.raises(InvalidInputError, match="resolution_scale = 0"):
        CombinatorialBaseline(PAPER_MASSES, resolution_scale=0)
    with pytest.raises(InvalidInputError, match="mass_weights: expected 7"):
        CombinatorialBaseline(PAPER_MASSES, mass_weights=[1.0])
    with pytest.raises(InvalidInputError, match="total_momentum"):
        CombinatorialBaseline(PAPER_MASSES, total_momentum=[50, 0, 0, 10])
    events = list(cascades(2, seed=0))
    with pytest.raises(InvalidInputError, match="only 'likelihood' is tuned"):
        CombinatorialBaseline(PAPER_MASSES, method="window").tune(events, [CASCADE] * 2)
    with pytest.raises(InvalidInputError, match="truth: 1 trees for 2 events"):
        baseline.tune(events, [CASCADE])
    with pytest.raises(InvalidInputError, match=r"truth\[1\]: a tree of 3 leaves"):
        baseline.tune(events, [CASCADE, DecayTree.from_nested(((0, 1), 2))])
