"""The learnt decay grammar: phase-space volumes, counts learnt from trees, tree likelihoods."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import trapezoid

from lcag import decode, is_valid_lcag, top_k
from lcag.evidence.grammar import DecayGrammar, log_massless_phase_space, phase_space, tree_nodes
from lcag.matrix import tree_to_lcag
from lcag.tree import DecayTree


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_phase_space_of_massless_children_is_the_closed_form(k):
    closed = math.exp(log_massless_phase_space(np.array(100.0), np.array([k]))[0])
    assert float(phase_space(100.0, [1e-9] * k)) == pytest.approx(closed, rel=1e-6)


def test_two_body_phase_space_vanishes_at_threshold_and_grows_above():
    assert float(phase_space(5.0, [3.0, 2.0])) == 0.0
    volumes = [float(phase_space(m, [3.0, 2.0])) for m in (5.5, 8.0, 20.0)]
    assert volumes == sorted(volumes)
    # p* / (4 pi M) at M = 10, m = 3, 2: p* = sqrt((100 - 25)(100 - 1)) / 20
    assert float(phase_space(10.0, [3.0, 2.0])) == pytest.approx(
        math.sqrt(75 * 99) / 20 / (40 * math.pi)
    )


def test_three_body_phase_space_is_the_integral_of_two_body_ones():
    M, m = 10.0, (1.0, 2.0, 3.0)
    s = np.linspace((m[1] + m[2]) ** 2, (M - m[0]) ** 2, 200_001)
    integrand = np.array(
        [
            float(phase_space(M, [m[0], math.sqrt(x)]) * phase_space(math.sqrt(x), [m[1], m[2]]))
            for x in s[::100]
        ]
    )
    numeric = trapezoid(integrand, s[::100]) / (2 * math.pi)
    assert float(phase_space(M, list(m))) == pytest.approx(numeric, rel=1e-3)


def _trees() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Two training trees, leaves first: 100 -> (20 -> 1 2) 3 and
    100 -> (20 -> 1 1) (50 -> 2 3 5)."""
    first = np.array([3, 3, 4, 4, -1]), [1, 2, 3, 20, 100]
    second = np.array([5, 5, 6, 6, 6, 7, 7, -1]), [1, 1, 2, 3, 5, 20, 50, 100]
    out = []
    for parents, masses in (first, second):
        inner = np.isin(np.arange(len(parents)), parents)
        out.append((parents, np.array(masses, dtype=float), np.where(inner, 0.4, 0.0)))
    return out


def test_counts_are_learnt_from_the_training_trees():
    grammar = DecayGrammar.from_trees(_trees(), resolution=0.01, alpha=0.0)
    assert grammar.roots.tolist() == [100.0]
    assert grammar.types.tolist() == [20.0, 50.0]
    assert grammar.species.tolist() == [1.0, 2.0, 3.0, 5.0]
    # the root has 2 children twice; particle 20 two children twice; 50 three once
    assert np.exp(grammar.log_count[0, 2]) == pytest.approx(1.0)
    assert np.exp(grammar.log_count[2, 3]) == pytest.approx(1.0)
    # children of the root: 20 twice, 50 once, species 3 once
    children = np.exp(grammar.log_child[0])
    assert children.tolist() == pytest.approx([0.5, 0.25, 0.0, 0.0, 0.25, 0.0])
    # nothing decays into something heavier than itself, even smoothed
    smoothed = DecayGrammar.from_trees(_trees(), resolution=0.01, alpha=0.5)
    assert np.exp(smoothed.log_child[1, 1]) == 0.0  # 20 -> 50


def test_to_dict_round_trips():
    grammar = DecayGrammar.from_trees(_trees(), resolution=0.01)
    back = DecayGrammar.from_dict(grammar.to_dict())
    for name, value in grammar.__dict__.items():
        np.testing.assert_array_equal(getattr(back, name), value)


def _event(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Leaves of 100 -> (20 -> 1 2) 3, mother at rest, exact masses; the true LCAG."""
    from lcag.data_gen.kinematics import boost

    def two_body(M, m1, m2):
        p = math.sqrt((M**2 - (m1 + m2) ** 2) * (M**2 - (m1 - m2) ** 2)) / (2 * M)
        v = rng.normal(size=3)
        v *= p / np.linalg.norm(v)
        return (np.append(v, math.hypot(p, m1)), np.append(-v, math.hypot(p, m2)))

    x20, c = two_body(100.0, 20.0, 3.0)
    a, b = two_body(20.0, 1.0, 2.0)
    a, b = boost(np.stack([a, b]), x20[None], np.array([20.0]))
    leaves = np.stack([a, b, c])
    truth = tree_to_lcag(DecayTree.from_nested(((0, 1), 2)))
    return leaves, truth


def test_the_true_tree_is_the_most_likely_on_an_exact_event():
    grammar = DecayGrammar.from_trees(_trees(), resolution=0.0)
    leaves, truth = _event(np.random.default_rng(0))
    others = [tree_to_lcag(DecayTree.from_nested(shape)) for shape in (((0, 2), 1), ((1, 2), 0))]
    flat = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    values = grammar.log_likelihood([truth, *others, flat], leaves)
    assert values[0] == values.max()
    assert np.isfinite(values[0])
    assert [b for b, _ in tree_nodes(truth)] == [0b011, 0b111]


def test_proposals_decode_to_valid_trees_with_the_true_one_among_them():
    grammar = DecayGrammar.from_trees(_trees(), resolution=0.0)
    leaves, truth = _event(np.random.default_rng(1))
    nodes, children = grammar.proposal_scores(leaves)
    assert nodes.shape == (8,)
    assert children.shape == (8, grammar.log_count.shape[1] - 1)
    uniform = np.full((3, 3, 4), 0.25)
    best = decode(uniform, node_scores=nodes, children_scores=children)
    assert is_valid_lcag(best)
    found = [M for M, _ in top_k(uniform, 4, node_scores=nodes, children_scores=children)]
    assert any(np.array_equal(M, truth) for M in found)


def test_from_dataset_learns_only_the_training_topologies(tiny_data):
    from lcag.data import LCAGDataset

    grammar = DecayGrammar.from_dataset(tiny_data)
    table = LCAGDataset(tiny_data, "train").topology_table()
    inner = set()
    for index in np.flatnonzero(table.known):
        tree = table.topology(int(index)).tree
        inner |= {float(tree.masses[v]) for v in tree.inner_nodes if v != tree.root}
    assert set(grammar.types.tolist()) == inner
    assert grammar.resolution == LCAGDataset(tiny_data, "train").manifest["config"][
        "kinematics"
    ].get("momentum_resolution", 0.0)
    # each parent's children-count and child distributions are normalised where it decays
    assert np.allclose(np.exp(grammar.log_count).sum(1), 1.0)
    assert np.allclose(np.exp(grammar.log_child).sum(1), 1.0)
