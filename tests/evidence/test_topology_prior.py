"""The topology prior: tree counts, the known trees over an event's leaves, decoding and the
log-partition with the bonus, each against brute force over every valid tree (<= 5 leaves),
and a trained model's reconstructions under it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from strategies import decay_trees
from test_decode import all_valid_lcags

from lcag import Reconstructor, decode, is_valid_lcag, log_partition, tree_score
from lcag.data import LCAGDataset, collate
from lcag.evidence import TopologyCatalogue
from lcag.evidence.topologies import tree_key
from lcag.evidence.topology_prior import (
    apply_bonus,
    bonus_log_partition,
    known_bonus,
    known_candidates,
    known_scores,
    tree_count,
)
from lcag.matrix import tree_to_lcag

SPECIES_MASSES = (1.0, 2.0, 3.0)


def leaves_of(species: np.ndarray) -> np.ndarray:
    """Leaves ``(n, 4)`` at rest with the masses of ``species`` (so their species is read
    back from ``E^2 - p^2``)."""
    x = np.zeros((len(species), 4))
    x[:, 3] = np.array(SPECIES_MASSES)[species]
    return x


@st.composite
def catalogues(draw: st.DrawFn, n: int) -> tuple[TopologyCatalogue, np.ndarray]:
    """A catalogue of 1-4 random trees over ``n`` leaves of species 0..2 (every species
    present among them, so all three are learnt), and an event's leaf species."""
    events = []
    for _ in range(draw(st.integers(1, 4))):
        tree = draw(decay_trees(min_leaves=n, max_leaves=n, max_depth=4, max_children=3))
        species = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
        events.append({"x": leaves_of(species), "target": tree_to_lcag(tree)})
    events.append({"x": leaves_of(np.array([0, 1, 2])), "target": np.zeros((3, 3), int)})
    catalogue = TopologyCatalogue.fit(events)
    first = catalogue.species_of(events[0]["x"])
    order = draw(st.permutations(range(n)))
    return catalogue, first[np.array(order)]  # an event of the first tree's species


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_tree_count_is_the_number_of_valid_lcags_up_to_each_height(n):
    trees = all_valid_lcags(n)
    for height in range(1, n + 1):
        assert tree_count(n, height) == int((trees.max(axis=(1, 2)) <= height).sum())
    assert tree_count(1, 3) == 1
    assert tree_count(12, 11) == 188_666_182_784  # OEIS A000311, no height limit
    assert math.isclose(math.log(tree_count(7, 3)), float(log_partition(np.ones((7, 7, 4)))))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 5).flatmap(lambda n: catalogues(n)))
def test_known_trees_are_exactly_the_catalogued_ones_by_brute_force(case):
    catalogue, species = case
    n = len(species)
    found = catalogue.known_trees(species)
    assert len({t.tobytes() for t in found}) == len(found)  # distinct
    assert all(is_valid_lcag(t) for t in found)
    wanted = {
        t.tobytes() for t in all_valid_lcags(n) if tree_key(t, species) in set(catalogue.keys)
    }
    assert {t.astype(np.int64).tobytes() for t in found} == wanted
    assert len(found) >= 1  # the event is of a catalogued topology


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 5).flatmap(lambda n: catalogues(n)),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.0, 1.0, 6.0]),
    st.sampled_from([0.0, 0.7, 3.0, 40.0]),
)
def test_decoding_and_log_partition_with_the_bonus_match_brute_force(case, seed, scale, bonus):
    catalogue, species = case
    n = len(species)
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(n + 1, 0.5), size=(1, n, n))
    nodes = rng.normal(scale=scale, size=(1, 1 << n))
    mask = np.ones((1, n), dtype=bool)
    x = leaves_of(species)[None]
    known = known_candidates(catalogue, x, mask)
    values = known_scores(known, probs, mask, nodes)
    decoded = decode(probs, mask, node_scores=nodes)
    chosen = apply_bonus(decoded, tree_score(decoded, probs, mask, node_scores=nodes),
                         known, values, mask, bonus)  # fmt: skip
    assert is_valid_lcag(chosen[0])
    # brute force: every valid tree, score + bonus where it is of a training topology
    trees = all_valid_lcags(n)
    T = len(trees)
    scores = tree_score(trees, np.broadcast_to(probs, (T, n, n, n + 1)), np.ones((T, n), bool),
                        node_scores=np.broadcast_to(nodes, (T, 1 << n)))  # fmt: skip
    is_known = catalogue.contains(trees, np.broadcast_to(x, (T, n, 4)), np.ones((T, n), bool))
    total = scores + bonus * is_known
    mine = tree_score(chosen, probs, mask, node_scores=nodes)[0]
    mine += bonus * catalogue.contains(chosen, x, mask)[0]
    assert mine >= total.max() - 1e-9
    log_z = bonus_log_partition(log_partition(probs, mask, node_scores=nodes), values, bonus)
    assert log_z[0] == pytest.approx(logsumexp(total), abs=1e-9)
    np.testing.assert_allclose(np.sort(values[0]), np.sort(scores[is_known]), atol=1e-9)
    if bonus == 0:  # no bonus: the decoder's tree, bit for bit
        np.testing.assert_array_equal(chosen, decoded)


def test_the_bonus_grows_with_the_trees_a_known_one_stands_out_from():
    none = known_bonus(-math.inf, np.array([4, 10]), np.array([3, 3]), 9)
    np.testing.assert_array_equal(none, 0.0)  # off
    unknown = known_bonus(2.0, np.array([10]), np.array([0]), 9)
    np.testing.assert_array_equal(unknown, 0.0)  # no known tree: nothing to favour
    small, large = known_bonus(0.0, np.array([4, 10]), np.array([3, 3]), 9)
    assert small == pytest.approx(math.log1p(26 / 3))
    assert large == pytest.approx(math.log1p(tree_count(10, 9) / 3))
    assert known_bonus(0.0, np.array([10]), np.array([30]), 9)[0] < large  # more known trees


def test_a_trained_model_decodes_and_ranks_under_the_topology_prior(checkpoint, tiny_data):
    reco = Reconstructor.from_checkpoint(checkpoint)
    assert len(reco.catalogue.trees) == len(reco.catalogue.keys) > 0  # trees are catalogued
    assert np.isfinite(reco.topology_log_odds) or reco.topology_log_odds == -math.inf
    dataset = LCAGDataset(tiny_data, "test")
    events = [e for e in dataset.__getitems__(range(0, len(dataset), 3)) if len(e["x"]) <= 6]
    batch = collate(events)
    x, mask = batch["x"].numpy(), batch["mask"].numpy()
    reco.topology_log_odds = 30.0  # a strong prior: every event of a known tree gets one
    found = reco.reconstruct([e["x"] for e in events], top_k=3)
    known = known_candidates(reco.catalogue, x, mask)
    for trees, reconstruction in zip(known, found, strict=True):
        assert len(trees) > 0  # test events are of training topologies
        assert reconstruction.known_topology
        assert 0.0 < reconstruction.probability <= 1.0
        first, p_first = reconstruction.alternatives[0]
        np.testing.assert_array_equal(first, reconstruction.lcag)  # the same best tree
        assert p_first == pytest.approx(reconstruction.probability)
        probabilities = [p for _, p in reconstruction.alternatives]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1.0 + 1e-9
    reco.topology_log_odds = -math.inf  # off: node evidence alone
    plain = reco.reconstruct([e["x"] for e in events])
    nodes = reco.node_scores(x, mask)
    expected = decode(reco.probabilities(x, mask), mask, node_scores=nodes)
    for k, reconstruction in enumerate(plain):
        n = len(events[k]["x"])
        np.testing.assert_array_equal(reconstruction.lcag, expected[k][:n, :n])


def test_known_scores_of_a_padded_batch_are_each_trees_score():
    rng = np.random.default_rng(5)
    L, C = 5, 5
    mask = np.array([[True, True, True, False, False], [True, False, True, True, True]])
    probs = rng.dirichlet(np.ones(C), size=(2, L, L))
    nodes = rng.normal(size=(2, 1 << L))
    candidates = [all_valid_lcags(3)[:3], np.zeros((0, 4, 4), dtype=np.int64)]
    candidates[1] = all_valid_lcags(4)[[0, 7, 20]]
    values = known_scores(candidates, probs, mask, nodes)
    for e, trees in enumerate(candidates):
        real = np.flatnonzero(mask[e])
        for tree, value in zip(trees, values[e], strict=True):
            padded = np.full((L, L), -1)
            padded[np.ix_(real, real)] = tree
            expected = tree_score(padded[None], probs[e : e + 1], mask[e : e + 1],
                                  node_scores=nodes[e : e + 1])[0]  # fmt: skip
            assert value == pytest.approx(expected, abs=1e-9)
    assert [len(v) for v in known_scores([np.zeros((0, 3, 3))] * 2, probs, mask)] == [0, 0]
