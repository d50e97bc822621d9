"""LCAS stage labels, their validity and exact LCAS decoding, checked against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import all_valid_lcas, decay_trees, labelled_lcas, one_hot_probs

from lcag.decode.scores import pair_log_scores
from lcag.decode.stages import decode_lcas
from lcag.errors import InvalidInputError
from lcag.matrix import tree_to_lcas
from lcag.stages import is_valid_lcas, lcas_to_tree, node_stages, tree_to_stage_lcas
from lcag.tree import DecayTree


def _symmetric(n: int, values: tuple[int, ...]) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    m[np.triu_indices(n, 1)] = values
    return m + m.T


@pytest.mark.parametrize(("n", "k"), [(3, 3), (4, 3), (4, 4)])
def test_validity_is_exactly_being_a_tree_labelling(n: int, k: int) -> None:
    valid = all_valid_lcas(n, k)
    for values in itertools.product(range(1, k + 1), repeat=n * (n - 1) // 2):
        m = _symmetric(n, values)
        assert is_valid_lcas(m) == (m.tobytes() in valid), m


@st.composite
def staged_trees(draw: st.DrawFn) -> tuple[DecayTree, dict[int, int]]:
    tree = draw(decay_trees(max_leaves=9))
    labels: dict[int, int] = {}
    for node in tree.preorder():
        if not tree.is_leaf(node):
            parent = tree.parent(node)
            low = int(tree.heights[node])  # room for the stages below
            top = low + 3 if parent < 0 else labels[parent] - 1
            labels[node] = draw(st.integers(low, top))
    return tree, labels


@given(staged_trees())
def test_lcas_to_tree_round_trips(staged: tuple[DecayTree, dict[int, int]]) -> None:
    tree, labels = staged
    m = labelled_lcas(tree, labels)
    assert is_valid_lcas(m)
    rebuilt, stages = lcas_to_tree(m)
    np.testing.assert_array_equal(tree_to_lcas(rebuilt, lambda v: int(stages[v])), m)
    for node in rebuilt.inner_nodes:
        parent = rebuilt.parent(node)
        assert parent < 0 or stages[parent] > stages[node]


def _score(m: np.ndarray, scores: np.ndarray) -> float:
    i, j = np.triu_indices(len(m), 1)
    return float(scores[i, j, m[i, j]].sum())


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_exact_lcas_decoding_is_the_brute_force_optimum(n: int, k: int, seed: int) -> None:
    probs = np.random.default_rng(seed).dirichlet(np.ones(k + 1), size=(n, n))
    decoded = decode_lcas(probs)
    assert decoded.tobytes() in all_valid_lcas(n, k)
    scores = pair_log_scores(probs)
    best = max(
        _score(np.frombuffer(b, np.int64).reshape(n, n), scores) for b in all_valid_lcas(n, k)
    )
    assert _score(decoded, scores) >= best - 1e-9


def test_decoding_recovers_a_valid_target_and_keeps_padding() -> None:
    tree = DecayTree.from_nested(((0, 1), ((2, 3), 4), 5))
    target = labelled_lcas(tree, {n: 2 * int(tree.heights[n]) for n in tree.inner_nodes})
    probs = one_hot_probs(target, 7)
    np.testing.assert_array_equal(decode_lcas(probs), target)
    batch = np.zeros((2, 7, 7, 7))
    batch[:, :6, :6] = probs
    mask = np.zeros((2, 7), dtype=bool)
    mask[:, :6] = True
    out = decode_lcas(batch, mask)
    np.testing.assert_array_equal(out[:, :6, :6], np.stack([target] * 2))
    assert (out[:, 6] == -1).all()


def test_stages_contract_unstaged_particles_and_reject_rising_ones() -> None:
    # B0 -> (rho0 -> pi+ pi-) (K_S0 -> pi+ pi-): the rho0 has no stage, so it is contracted
    tree = DecayTree.from_parents(
        [4, 4, 5, 5, 6, 6, -1], pdg_ids=[211, -211, 211, -211, 113, 310, 511]
    )
    np.testing.assert_array_equal(node_stages(tree)[4:], [5, 2, 5])
    m = tree_to_stage_lcas(tree)
    np.testing.assert_array_equal(m[0], [0, 5, 5, 5])
    np.testing.assert_array_equal(m[2], [5, 5, 0, 2])
    inside = DecayTree.from_parents([3, 3, 4, 4, -1], pdg_ids=[22, 22, 211, 421, 111])
    with pytest.raises(InvalidInputError, match="must not rise"):
        node_stages(inside)
    unstaged = DecayTree.from_parents([2, 2, -1], pdg_ids=[211, -211, 113])
    with pytest.raises(InvalidInputError, match="no stage"):
        node_stages(unstaged)


def test_upsilon_4s_event_decodes_into_its_two_b_mesons() -> None:
    from lcag.data_gen.config import DecFileChains
    from lcag.data_gen.decfile import sample_decfile_topologies

    chains = DecFileChains(
        mother="Upsilon(4S)", max_leaves=14, mother_modes=[["B0", "anti-B0"], ["B+", "B-"]]
    )
    topology = sample_decfile_topologies(chains, 1, np.random.default_rng(4))[0]
    tree = topology.tree
    target = tree_to_stage_lcas(tree)
    rng = np.random.default_rng(5)
    probs = 0.6 * one_hot_probs(target, 7) + 0.4 * rng.dirichlet(np.ones(7), size=target.shape)
    decoded = decode_lcas(probs)
    assert is_valid_lcas(decoded)
    rebuilt, stages = lcas_to_tree(decoded)
    assert stages[rebuilt.root] == 6
    b_mesons = list(rebuilt.children(rebuilt.root))
    assert [int(stages[c]) for c in b_mesons] == [5, 5]
    truth = {frozenset(tree.leaves_under(c)) for c in tree.children(tree.root)}
    assert {frozenset(rebuilt.leaves_under(c)) for c in b_mesons} == truth


@given(staged_trees(), st.integers(0, 2**31 - 1))
def test_subdominant_lcas_is_valid_below_and_keeps_valid_input(
    staged: tuple[DecayTree, dict[int, int]], seed: int
) -> None:
    from lcag.decode.stages import subdominant_lcas

    tree, labels = staged
    m = labelled_lcas(tree, labels).astype(np.int64)
    np.testing.assert_array_equal(subdominant_lcas(m[None])[0], m)
    n = len(m)
    noisy = m + np.random.default_rng(seed).integers(-1, 2, size=m.shape)
    noisy = np.maximum(np.triu(noisy, 1) + np.triu(noisy, 1).T, 1)
    np.fill_diagonal(noisy, 0)
    out = subdominant_lcas(noisy[None])[0]
    assert is_valid_lcas(out) or n < 2
    off = ~np.eye(n, dtype=bool)
    assert (out[off] <= noisy[off]).all()


def test_large_events_decode_to_valid_lcas() -> None:
    probs = np.random.default_rng(0).dirichlet(np.ones(7), size=(2, 18, 18))
    assert all(is_valid_lcas(m) for m in decode_lcas(probs))
