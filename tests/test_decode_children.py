"""Children-count scores in decoding: exact decoding, the log-partition and top-k checked
against brute force over every valid tree (up to six leaves)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import EPS64, decay_trees
from test_decode_nodes import brute_force_scores, node_tolerance

from lcag import InvalidInputError, decode, is_valid_lcag, log_partition, top_k, tree_score
from lcag.decode.children import children_counts


@st.composite
def events(draw: st.DrawFn, max_leaves: int = 6) -> tuple:
    """``(probs (L, L, C), nodes (2^L,), children (2^L, K), scale)``, C = L + 1."""
    L = draw(st.integers(2, max_leaves))
    K = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.5, 3.0, 20.0]))
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(L + 1, draw(st.sampled_from([0.1, 0.5, 2.0]))), size=(L, L))
    nodes = rng.normal(scale=scale, size=1 << L)
    children = rng.normal(scale=scale, size=(1 << L, K))
    return probs, nodes, children, scale


def brute_force(probs, nodes, children) -> tuple[np.ndarray, np.ndarray]:
    """Every valid LCAG on ``L`` leaves and its score, children-count terms added by hand."""
    trees, base = brute_force_scores(probs, nodes)
    K = children.shape[1]
    extra = [sum(children[S, min(c - 2, K - 1)] for S, c in children_counts(t)) for t in trees]
    return trees, base + np.array(extra)


def tolerance(probs, scale) -> float:
    return 2 * node_tolerance(len(probs), scale)


def test_children_counts_of_a_known_tree():
    from lcag import DecayTree, tree_to_lcag

    M = tree_to_lcag(DecayTree.from_nested(((0, 1, 2), (3, 4))))
    assert sorted(children_counts(M)) == [(0b00111, 3), (0b11000, 2), (0b11111, 2)]


@given(decay_trees(max_leaves=12))
def test_children_counts_match_the_tree(tree):
    from lcag import tree_to_lcag

    expected = sorted(
        (sum(1 << int(leaf) for leaf in tree.leaves_under(node)), len(tree.children(node)))
        for node in tree.inner_nodes
    )
    assert children_counts(tree_to_lcag(tree)) == expected


@given(events())
def test_exact_decoding_is_the_brute_force_optimum(event):
    probs, nodes, children, scale = event
    _, scores = brute_force(probs, nodes, children)
    best = decode(probs, node_scores=nodes, children_scores=children)
    assert is_valid_lcag(best)
    got = tree_score(best, probs, node_scores=nodes, children_scores=children)
    assert got >= scores.max() - 2 * tolerance(probs, scale)


@given(events())
def test_log_partition_is_the_brute_force_log_sum_exp(event):
    probs, nodes, children, scale = event
    _, scores = brute_force(probs, nodes, children)
    expected = np.logaddexp.reduce(scores)
    slack = tolerance(probs, scale) + len(scores) * (4 * EPS64 + np.exp(-40.0))
    got = log_partition(probs, node_scores=nodes, children_scores=children)
    assert got == pytest.approx(expected, abs=slack)


@given(events(max_leaves=5), st.integers(1, 6))
def test_top_k_are_the_k_best_of_brute_force(event, k):
    probs, nodes, children, scale = event
    _, scores = brute_force(probs, nodes, children)
    found = top_k(probs, k, node_scores=nodes, children_scores=children)
    expected = np.sort(scores)[::-1][:k]
    got = np.array([score for _, score in found])
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance(probs, scale))
    assert len({lcag.tobytes() for lcag, _ in found}) == len(found)
    for lcag, _ in found:
        assert is_valid_lcag(lcag)


def test_a_forbidden_count_is_never_chosen():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(6), size=(5, 5))
    children = np.zeros((1 << 5, 2))
    children[:, 0] = -np.inf  # no binary splits: every node has 3 or more children
    best = decode(probs, children_scores=children)
    assert all(count >= 3 for _, count in children_counts(best))


def test_batches_read_children_scores_by_original_leaf():
    rng = np.random.default_rng(3)
    N, L = 10, 6
    probs = rng.dirichlet(np.ones(L + 1), size=(N, L, L))
    mask = rng.random((N, L)) < 0.75
    children = rng.normal(scale=3.0, size=(N, 1 << L, 3))
    decoded = decode(probs, mask, children_scores=children)
    partition = log_partition(probs, mask, children_scores=children)
    for e in range(N):
        real = np.flatnonzero(mask[e])
        n = len(real)
        if n < 2:
            continue
        bits = [sum(1 << int(real[k]) for k in range(n) if s >> k & 1) for s in range(1 << n)]
        alone = probs[e][np.ix_(real, real)]
        sub = children[e, bits]
        one = decode(alone, children_scores=sub)
        slack = tolerance(alone, 3.0)
        assert tree_score(
            decoded[e][np.ix_(real, real)], alone, children_scores=sub
        ) == pytest.approx(tree_score(one, alone, children_scores=sub), abs=slack)
        assert partition[e] == pytest.approx(log_partition(alone, children_scores=sub), abs=slack)


def test_bad_children_scores_are_named():
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=(3, 3))
    with pytest.raises(InvalidInputError, match="children_scores: expected shape"):
        decode(probs, children_scores=np.zeros((7, 2)))
    with pytest.raises(InvalidInputError, match="must be < \\+inf"):
        decode(probs, children_scores=np.full((8, 2), np.nan))
    with pytest.raises(InvalidInputError, match="exact decoding only"):
        decode(probs, children_scores=np.zeros((8, 2)), method="approx")


def test_when_no_tree_scores_above_minus_infinity_the_flat_tree_comes_back():
    probs = np.full((4, 4, 5), 0.2)
    kids = np.full((16, 3), -np.inf)
    assert log_partition(probs, children_scores=kids) == -np.inf
    flat = decode(probs, children_scores=kids)
    assert is_valid_lcag(flat)
    np.testing.assert_array_equal(flat, 1 - np.eye(4, dtype=np.int64))
