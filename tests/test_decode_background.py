"""Decoding with leaves outside the tree: class 0 as "not in the decay" (``background=True``),
checked against brute force over every leaf set and every tree on it."""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from strategies import (
    all_shapes,
    all_valid_lcas,
    decay_trees,
    float64_score_tolerance,
    one_hot_probs,
)

from lcag import decode, log_partition, tree_score, tree_to_lcag
from lcag.decode import top_k
from lcag.decode.scores import inner_node_masks
from lcag.decode.stages import decode_lcas
from lcag.stages import is_valid_lcas
from lcag.tree import DecayTree


def embedded(matrix: np.ndarray, leaves: tuple[int, ...], n: int) -> np.ndarray:
    """``matrix`` on ``leaves`` inside an ``(n, n)`` zero matrix (the others: background)."""
    out = np.zeros((n, n), dtype=np.int64)
    out[np.ix_(leaves, leaves)] = matrix
    return out


@cache
def all_lcags_with_background(n: int, max_class: int) -> np.ndarray:
    """Every valid LCAG on every leaf set of >= 2 of ``n`` leaves, zeros elsewhere."""
    found = []
    for size in range(2, n + 1):
        for leaves in itertools.combinations(range(n), size):
            for shape in all_shapes(tuple(range(size))):
                m = tree_to_lcag(DecayTree.from_nested(shape))
                if m.max() <= max_class:
                    found.append(embedded(m, leaves, n))
    return np.stack(found)


def random_probs(seed: int, n: int, C: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(C, 0.5), size=(n, n))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_background_decoding_is_the_brute_force_optimum(n, C, seed):
    probs = random_probs(seed, n, C)
    candidates = all_lcags_with_background(n, C - 1)
    scores = np.array([tree_score(m, probs) for m in candidates])
    best = decode(probs, background=True)
    assert any(np.array_equal(best, m) for m in candidates)
    rounding = float64_score_tolerance(n)
    assert tree_score(best, probs) >= scores.max() - 2 * rounding
    # the partition function sums over the same candidates
    np.testing.assert_allclose(
        log_partition(probs, background=True), logsumexp(scores), rtol=0, atol=1e-9
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 5), st.integers(0, 2**32 - 1))
def test_background_decoding_with_node_scores_is_the_brute_force_optimum(n, seed):
    rng = np.random.default_rng(seed)
    probs = random_probs(seed, n, 4)
    nodes = rng.normal(0.0, 2.0, size=1 << n)
    candidates = all_lcags_with_background(n, 3)
    scores = np.array([tree_score(m, probs, node_scores=nodes) for m in candidates])
    best = decode(probs, node_scores=nodes, background=True)
    assert tree_score(best, probs, node_scores=nodes) >= scores.max() - 1e-9
    np.testing.assert_allclose(
        log_partition(probs, node_scores=nodes, background=True),
        logsumexp(scores),
        rtol=0,
        atol=1e-9,
    )


def test_node_masks_leave_background_leaves_out():
    m = embedded(tree_to_lcag(DecayTree.from_nested((("leaf", "leaf"), "leaf"))), (0, 2, 3), 4)
    (masks,) = inner_node_masks(m[None], np.ones((1, 4), dtype=bool))
    assert sorted(masks.tolist()) == [0b0101, 0b1101]  # {0, 2} and the root {0, 2, 3}


@given(decay_trees(max_leaves=12), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_confident_background_is_left_out_at_every_size(tree, n_background, seed):
    """Exactly (<= 10 leaves in all) and by setting leaves aside first (above)."""
    m = tree_to_lcag(tree)
    n = tree.n_leaves + n_background
    order = np.random.default_rng(seed).permutation(n)
    truth = embedded(m, tuple(order[: tree.n_leaves].tolist()), n)
    probs = one_hot_probs(truth, tree.depth + 1, floor=1e-3)
    np.testing.assert_array_equal(decode(probs, background=True), truth)
    without = decode(probs)
    assert (without[~np.eye(n, dtype=bool)] > 0).all()  # by default every leaf is in the tree


def test_batches_mix_exact_and_set_aside_events():
    """A 9-leaf event (decoded exactly) and a 13-leaf one (leaves set aside first), padded."""
    pair = ("leaf", "leaf")
    small = tree_to_lcag(DecayTree.from_nested((pair, pair)))
    large = tree_to_lcag(DecayTree.from_nested((pair,) * 5 + ("leaf",)))
    truths = [embedded(small, (1, 3, 4, 8), 13), embedded(large, tuple(range(2, 13)), 13)]
    probs = np.stack([one_hot_probs(t, 4) for t in truths])
    mask = np.ones((2, 13), dtype=bool)
    mask[0, 9:] = False
    decoded = decode(probs, mask, background=True)
    for k in range(2):
        real = np.flatnonzero(mask[k])
        np.testing.assert_array_equal(decoded[k][np.ix_(real, real)], truths[k][np.ix_(real, real)])
        assert (decoded[k][~mask[k]] == -1).all()


def test_top_k_with_background_returns_the_decoded_tree():
    probs = random_probs(1, 5, 3)
    ((tree, score),) = top_k(probs, 3, background=True)
    np.testing.assert_array_equal(tree, decode(probs, background=True))
    assert score == pytest.approx(tree_score(tree, probs))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 4), st.integers(2, 3), st.integers(0, 2**32 - 1))
def test_lcas_background_decoding_is_the_brute_force_optimum(n, k, seed):
    probs = random_probs(seed, n, k + 1)
    logp = np.log(np.maximum(probs, 1e-12))
    s = 0.5 * (logp + logp.transpose(1, 0, 2))
    iu = np.triu_indices(n, 1)

    def score(m: np.ndarray) -> float:
        return float(s[iu[0], iu[1], m[iu]].sum())

    candidates = [
        embedded(np.frombuffer(b, np.int64).reshape(size, size), leaves, n)
        for size in range(2, n + 1)
        for leaves in itertools.combinations(range(n), size)
        for b in all_valid_lcas(size, k)
    ]
    best = decode_lcas(probs, background=True)
    real = np.flatnonzero(best.any(axis=1))
    assert len(real) >= 2
    assert is_valid_lcas(best[np.ix_(real, real)])
    assert score(best) >= max(score(m) for m in candidates) - 1e-9


@pytest.mark.parametrize("target", ["lcag", "lcas"])
def test_the_module_and_reconstructor_decode_with_background_when_asked(target):
    import torch

    from lcag import Reconstructor
    from lcag.models import LCAGTransformer
    from lcag.module import LCAGModule

    truth = embedded(tree_to_lcag(DecayTree.from_nested((("leaf", "leaf"), "leaf"))), (0, 2, 4), 5)
    probs = one_hot_probs(truth, 3)[None]
    mask = np.ones((1, 5), dtype=bool)
    on = LCAGModule(LCAGTransformer(n_classes=3), node_evidence="none", target=target,
                    decode_background=True)  # fmt: skip
    off = LCAGModule(LCAGTransformer(n_classes=3), node_evidence="none", target=target)
    np.testing.assert_array_equal(on._decoder(probs, mask)[0], truth)
    assert (off._decoder(probs, mask)[0][~np.eye(5, dtype=bool)] > 0).all()
    reco = Reconstructor(on.model, torch.zeros(4), torch.ones(4), background=True, target=target)
    assert reco.background
    np.testing.assert_array_equal(reco.decode(probs, mask)[0], truth)
    from lcag.inference import Reconstruction

    result = Reconstruction(lcag=truth, probs=probs[0], score=0.0, target=target)
    np.testing.assert_array_equal(result.in_tree, [0, 2, 4])
    assert result.tree.n_leaves == 3
    from lcag.ntuple.cli import event_parents

    parents = event_parents(result)  # 5 leaves, then the tree's 2 inner nodes
    assert len(parents) == 7
    assert parents[1] == parents[3] == -2
    assert sorted(parents[[0, 2, 4]].tolist()) == [5, 5, 6] or sorted(
        parents[[0, 2, 4]].tolist()
    ) == [5, 6, 6]
    assert sorted(parents[5:].tolist()) in ([-1, 5], [-1, 6])
