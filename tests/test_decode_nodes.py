"""Node scores in decoding, the log-partition over valid trees, and the k best trees, each
checked against brute force over every valid tree (up to six leaves)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import EPS64, MAX_LOG_SCORE, assert_same_tree_or_tied, n_pairs
from test_decode import all_valid_lcags

from lcag import InvalidInputError, decode, is_valid_lcag, log_partition, top_k, tree_score
from lcag.decode.scores import inner_node_masks, pair_log_scores


def node_tolerance(n_leaves: int, node_scale: float) -> float:
    """float64 rounding between two sums of one tree's pair and node scores taken in other
    orders: ``k^2 eps max|term|`` over ``k`` pair and node terms (a sum of ``k`` terms rounds by
    at most ``k eps`` of the running magnitude, itself at most ``k max|term|``)."""
    terms = n_pairs(n_leaves) + n_leaves
    return terms**2 * EPS64 * max(MAX_LOG_SCORE, 4 * node_scale)


@st.composite
def events(draw: st.DrawFn, max_leaves: int = 6) -> tuple[np.ndarray, np.ndarray, float]:
    """``(probs (L, L, C), node_scores (2^L,), scale)`` with C = L + 1, so every tree fits."""
    L = draw(st.integers(2, max_leaves))
    seed = draw(st.integers(0, 2**32 - 1))
    concentration = draw(st.sampled_from([0.1, 0.5, 2.0]))
    scale = draw(st.sampled_from([0.0, 0.5, 3.0, 20.0]))
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(L + 1, concentration), size=(L, L))
    nodes = rng.normal(scale=scale, size=1 << L)
    return probs, nodes, scale


def brute_force_scores(probs: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every valid LCAG ``(T, L, L)`` on ``L`` leaves and its score ``(T,)``."""
    L = probs.shape[0]
    trees = all_valid_lcags(L)
    T = len(trees)
    scores = tree_score(
        trees,
        np.broadcast_to(probs, (T, *probs.shape)),
        np.ones((T, L), dtype=bool),
        node_scores=np.broadcast_to(nodes, (T, len(nodes))),
    )
    return trees, scores


@given(events())
def test_exact_decoding_with_node_scores_is_the_brute_force_optimum(event):
    probs, nodes, scale = event
    _, scores = brute_force_scores(probs, nodes)
    best = decode(probs, node_scores=nodes, method="exact")
    assert is_valid_lcag(best)
    tolerance = node_tolerance(len(probs), scale)
    # both sides round by up to the tolerance
    assert tree_score(best, probs, node_scores=nodes) >= scores.max() - 2 * tolerance


@given(events())
def test_approximate_decoding_with_node_scores_is_valid_and_no_better_than_exact(event):
    probs, nodes, scale = event
    approx = decode(probs, node_scores=nodes, method="approx")
    exact = decode(probs, node_scores=nodes, method="exact")
    assert is_valid_lcag(approx)
    tolerance = node_tolerance(len(probs), scale)
    assert tree_score(approx, probs, node_scores=nodes) <= (
        tree_score(exact, probs, node_scores=nodes) + tolerance
    )


def dendrogram_clusters(probs: np.ndarray) -> set[int]:
    """The leaf sets (bit masks) of the average-linkage dendrogram of the expected pair height,
    the approximate decoder's search space, by scipy's UPGMA (examples with tied distances,
    which two implementations may break differently, are skipped)."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    L = probs.shape[0]
    s = pair_log_scores(probs)[..., 1:]  # heights 1..C-1
    w = np.exp(s - s.max(-1, keepdims=True))
    dist = (w * np.arange(1, s.shape[-1] + 1)).sum(-1) / w.sum(-1)
    np.fill_diagonal(dist, 0.0)
    upper = dist[np.triu_indices(L, 1)]
    assume(len(np.unique(upper)) == len(upper))
    sets = [1 << i for i in range(L)]
    for a, b, _, _ in linkage(squareform(dist, checks=False), method="average"):
        sets.append(sets[int(a)] | sets[int(b)])
    return set(sets)


@given(events(max_leaves=5))
def test_approximate_decoding_with_node_scores_is_the_best_over_its_dendrogram(event):
    probs, nodes, scale = event
    trees, scores = brute_force_scores(probs, nodes)
    clusters = dendrogram_clusters(probs)
    L = len(probs)
    inner = inner_node_masks(trees, np.ones((len(trees), L), dtype=bool))
    allowed = np.array([set(m.tolist()) <= clusters for m in inner])
    approx = decode(probs, node_scores=nodes, method="approx")
    tolerance = node_tolerance(L, scale)
    # a contracted merge is no node: its node score must not count
    assert tree_score(approx, probs, node_scores=nodes) >= scores[allowed].max() - 2 * tolerance


@given(events(max_leaves=5))
def test_log_partition_above_the_exact_limit_sums_the_dendrograms_trees(event):
    probs, nodes, scale = event
    trees, scores = brute_force_scores(probs, nodes)
    L = len(probs)
    inner = inner_node_masks(trees, np.ones((len(trees), L), dtype=bool))
    allowed = np.array([set(m.tolist()) <= dendrogram_clusters(probs) for m in inner])
    expected = np.logaddexp.reduce(scores[allowed])
    got = log_partition(probs, node_scores=nodes, exact_max_leaves=1)  # the approximation
    tolerance = node_tolerance(L, scale)
    assert got == pytest.approx(expected, abs=2 * tolerance)
    # a lower bound of the exact log-partition, and the decoded tree's probability is <= 1
    assert got <= log_partition(probs, node_scores=nodes) + 2 * tolerance
    approx = decode(probs, node_scores=nodes, method="approx")
    assert tree_score(approx, probs, node_scores=nodes) <= got + 2 * tolerance


def test_a_contracted_merge_earns_no_node_score():
    probs = np.full((3, 3, 3), 1e-3)
    probs[..., 1] = 0.9  # every pair prefers height 1 (the flat tree)
    probs[0, 1, 1] = probs[1, 0, 1] = 0.99  # leaves 0 and 1 merge first
    nodes = np.zeros(8)
    nodes[0b011] = 100.0  # but {0, 1} is surely a particle
    expected = [[0, 1, 2], [1, 0, 2], [2, 2, 0]]
    for method in ("exact", "approx"):
        assert decode(probs, node_scores=nodes, method=method).tolist() == expected


@given(events())
def test_log_partition_is_the_brute_force_log_sum_exp(event):
    probs, nodes, scale = event
    _, scores = brute_force_scores(probs, nodes)
    expected = np.logaddexp.reduce(scores)
    # Each term's score rounds by the tree tolerance; log-sum-exp passes that on unchanged,
    # plus its own rounding (a few eps per addition of ~#trees terms) and the pruned terms
    # (each below e^-40 of the running sum).
    tolerance = node_tolerance(len(probs), scale) + len(scores) * (4 * EPS64 + np.exp(-40.0))
    assert log_partition(probs, node_scores=nodes) == pytest.approx(expected, abs=tolerance)


@given(events(), st.integers(1, 8))
def test_top_k_are_the_k_best_of_brute_force(event, k):
    probs, nodes, scale = event
    _, scores = brute_force_scores(probs, nodes)
    found = top_k(probs, k, node_scores=nodes)
    expected = np.sort(scores)[::-1][:k]
    assert len(found) == len(expected)
    tolerance = node_tolerance(len(probs), scale)
    got = np.array([score for _, score in found])
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
    assert len({lcag.tobytes() for lcag, _ in found}) == len(found)  # distinct trees
    for lcag, score in found:
        assert is_valid_lcag(lcag)
        assert tree_score(lcag, probs, node_scores=nodes) == pytest.approx(score, abs=tolerance)


@given(events(), st.integers(1, 8))
def test_top_k_above_the_exact_limit_are_distinct_valid_trees_by_score(event, k):
    probs, nodes, scale = event
    assume(len(probs) >= 3)
    _, scores = brute_force_scores(probs, nodes)
    found = top_k(probs, k, node_scores=nodes, exact_max_leaves=2)  # the approximate decoder
    tolerance = node_tolerance(len(probs), scale)
    assert 1 <= len(found) <= k
    assert len({lcag.tobytes() for lcag, _ in found}) == len(found)
    got = [score for _, score in found]
    assert got == sorted(got, reverse=True)
    for lcag, score in found:
        assert is_valid_lcag(lcag)
        assert tree_score(lcag, probs, node_scores=nodes) == pytest.approx(score, abs=tolerance)
    assert got[0] <= scores.max() + tolerance
    approx = decode(probs, node_scores=nodes, method="approx")
    assert approx.tobytes() in {lcag.tobytes() for lcag, _ in found}


def test_top_k_above_ten_leaves_starts_from_the_true_tree():
    from strategies import one_hot_probs

    from lcag import DecayTree, tree_to_lcag

    truth = tree_to_lcag(DecayTree.from_nested((((0, 1), 2), (3, 4, (5, 6)), ((7, 8), 9, 10), 11)))
    probs = one_hot_probs(truth, 13, floor=0.02)
    found = top_k(probs, 4)
    assert len(found) == 4
    np.testing.assert_array_equal(found[0][0], truth)
    assert len({lcag.tobytes() for lcag, _ in found}) == 4
    assert all(is_valid_lcag(lcag) for lcag, _ in found)
    # node scores in the event's own indexing, one event of a padded batch
    nodes = np.zeros((1, 1 << 13))
    batch = np.zeros((1, 13, 13, 13))
    batch[0, :12, :12] = probs
    mask = np.arange(13)[None] < 12
    padded = top_k(batch, 4, mask, node_scores=nodes)[0]
    for (M, score), (M0, score0) in zip(padded, found, strict=True):
        np.testing.assert_array_equal(M[:12, :12], M0)
        assert (M[12] == -1).all()
        assert score == pytest.approx(score0)


@given(events(max_leaves=7))
def test_zero_node_scores_change_nothing(event):
    probs, nodes, _ = event
    zeros = np.zeros_like(nodes)
    for method in ("exact", "approx"):
        np.testing.assert_array_equal(
            decode(probs, node_scores=zeros, method=method), decode(probs, method=method)
        )
    M = decode(probs)
    assert tree_score(M, probs, node_scores=zeros) == tree_score(M, probs)


def test_batches_with_padding_read_node_scores_by_original_leaf():
    rng = np.random.default_rng(3)
    N, L, C = 12, 6, 6
    probs = rng.dirichlet(np.ones(C), size=(N, L, L))
    mask = rng.random((N, L)) < 0.75
    nodes = rng.normal(scale=3.0, size=(N, 1 << L))
    decoded = decode(probs, mask, node_scores=nodes)
    partition = log_partition(probs, mask, node_scores=nodes)
    best = top_k(probs, 2, mask, node_scores=nodes)
    for e in range(N):
        real = np.flatnonzero(mask[e])
        n = len(real)
        if n < 2:
            continue
        bits = [sum(1 << int(real[k]) for k in range(n) if s >> k & 1) for s in range(1 << n)]
        sub = nodes[e, bits]
        alone = probs[e][np.ix_(real, real)]
        # the subset sums' float64 rounding depends on the batch's shape (BLAS): equal trees,
        # or two that tie within that rounding
        assert_same_tree_or_tied(
            decoded[e][np.ix_(real, real)],
            decode(alone, node_scores=sub),
            alone,
            node_tolerance(n, 3.0),
            node_scores=sub,
        )
        assert partition[e] == pytest.approx(log_partition(alone, node_scores=sub), abs=1e-9)
        assert best[e][0][1] == pytest.approx(top_k(alone, 1, node_scores=sub)[0][1], abs=1e-9)
        assert (best[e][0][0][~mask[e]] == -1).all()


def test_tree_probabilities_sum_to_one_over_all_trees():
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(5), size=(4, 4))
    nodes = rng.normal(size=16)
    _, scores = brute_force_scores(probs, nodes)
    total = np.exp(scores - log_partition(probs, node_scores=nodes)).sum()
    assert total == pytest.approx(1.0, abs=1e-12)


def test_inner_node_masks_of_a_known_tree():
    # ((0, 1), (2, 3), 4): inner nodes {0, 1}, {2, 3} and the root.
    M = np.array(
        [[0, 1, 2, 2, 2], [1, 0, 2, 2, 2], [2, 2, 0, 1, 2], [2, 2, 1, 0, 2], [2, 2, 2, 2, 0]]
    )
    (masks,) = inner_node_masks(M[None], np.ones((1, 5), dtype=bool))
    assert sorted(masks.tolist()) == [0b00011, 0b01100, 0b11111]


def test_bad_node_scores_are_named():
    probs = np.full((3, 3, 3), 1 / 3)
    with pytest.raises(InvalidInputError, match=r"node_scores: expected shape \(8,\)"):
        decode(probs, node_scores=np.zeros(4))
    with pytest.raises(InvalidInputError, match=r"node_scores\[3\] = nan"):
        decode(probs, node_scores=np.array([0, 0, 0, np.nan, 0, 0, 0, 0]))
    with pytest.raises(InvalidInputError, match="k: expected at least 1"):
        top_k(probs, 0)


def test_a_forbidden_node_is_never_chosen():
    probs = np.full((4, 4, 4), 0.25)
    probs[0, 1] = probs[1, 0] = [0.01, 0.97, 0.01, 0.01]  # the pair favours {0, 1} as a node
    nodes = np.zeros(16)
    nodes[0b0011] = -np.inf
    best = decode(probs, node_scores=nodes)
    (masks,) = inner_node_masks(best[None], np.ones((1, 4), dtype=bool))
    assert 0b0011 not in masks.tolist()
