"""Decoding per-pair probabilities into the most probable valid LCAG."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    all_shapes,
    assert_same_tree_or_tied,
    decay_trees,
    float64_score_tolerance,
    one_hot_probs,
)

from lcag import InvalidInputError, decode, decode_argmax, is_valid_lcag, tree_score, tree_to_lcag
from lcag.tree import DecayTree


# ---------------------------------------------------------------- brute-force reference
@cache
def all_valid_lcags(n_leaves: int) -> np.ndarray:
    """Every valid LCAG on ``n_leaves`` labelled leaves (2752 for six leaves)."""
    trees = (DecayTree.from_nested(shape) for shape in all_shapes(tuple(range(n_leaves))))
    return np.stack([tree_to_lcag(t) for t in trees])


def test_brute_force_reference_counts_every_tree():
    # Numbers of rooted trees without single-child nodes on n labelled leaves (OEIS A000311).
    assert [len(all_valid_lcags(n)) for n in range(2, 7)] == [1, 4, 26, 236, 2752]


def random_probs(seed: int, L: int, C: int, concentration: float) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(C, concentration), size=(L, L))


# -------------------------------------------------------------------------- properties
@given(decay_trees(), st.integers(0, 3))
def test_one_hot_probabilities_give_back_the_tree(tree, extra_classes):
    M = tree_to_lcag(tree)
    C = tree.depth + extra_classes
    np.testing.assert_array_equal(decode(one_hot_probs(M, C)), M)
    np.testing.assert_array_equal(decode(one_hot_probs(M, C), method="approx"), M)


@given(
    st.integers(2, 6),
    st.integers(2, 7),
    st.sampled_from([0.2, 1.0, 5.0]),
    st.integers(0, 2**32 - 1),
)
def test_exact_beats_every_valid_tree(L, C, concentration, seed):
    probs = random_probs(seed, L, C, concentration)
    candidates = all_valid_lcags(L)
    candidates = candidates[candidates.max(axis=(1, 2)) <= C - 1]
    brute = max(tree_score(m, probs) for m in candidates)
    best = decode(probs, method="exact")
    assert is_valid_lcag(best)
    assert best.max() <= C - 1
    # the decoder sums pair scores in another order than tree_score: float64 rounding only
    rounding = float64_score_tolerance(L)
    assert tree_score(best, probs) >= brute - 2 * rounding
    approx = decode(probs, method="approx")
    assert is_valid_lcag(approx)
    assert tree_score(approx, probs) <= brute  # one of the candidates, scored the same way


@given(decay_trees(max_leaves=10), st.integers(0, 2**32 - 1))
def test_valid_argmax_is_kept(tree, seed):
    # When each pair's favourite class already forms a valid LCAG, no tree can score higher.
    M = tree_to_lcag(tree)
    rng = np.random.default_rng(seed)
    probs = (
        one_hot_probs(M, tree.depth + 1, floor=0.0) * 0.6
        + rng.dirichlet(np.ones(tree.depth + 1), size=M.shape) * 0.4
    )
    probs = 0.5 * (probs + probs.transpose(1, 0, 2))
    assert is_valid_lcag(decode_argmax(probs))
    # equal, unless another tree ties with the argmax within the float64 rounding of a score
    assert_same_tree_or_tied(
        decode(probs), decode_argmax(probs), probs, float64_score_tolerance(tree.n_leaves)
    )


@given(st.integers(0, 2**32 - 1), st.sampled_from([4, 8]))
def test_batches_with_masks_are_valid_and_match_single_events(seed, C):
    rng = np.random.default_rng(seed)
    N, L = 6, 14
    mask = np.zeros((N, L), dtype=bool)
    for n, size in enumerate(rng.integers(1, L + 1, size=N)):
        mask[n, rng.choice(L, size=size, replace=False)] = True  # real leaves anywhere
    probs = rng.dirichlet(np.ones(C), size=(N, L, L))
    out = decode(probs, mask)
    assert out.shape == (N, L, L)
    assert is_valid_lcag(out, mask).all()
    pad = ~(mask[:, :, None] & mask[:, None, :])
    assert (out[pad] == -1).all()
    for n in range(N):
        real = np.flatnonzero(mask[n])
        sub = probs[n][np.ix_(real, real)]
        # The subset sums go through BLAS (tensordot) with shapes that depend on the batch, so
        # they may round differently: equal trees, unless two trees tie within that rounding.
        assert_same_tree_or_tied(
            out[n][np.ix_(real, real)], decode(sub), sub, float64_score_tolerance(len(real))
        )


def test_auto_switches_to_the_approximation_above_ten_leaves():
    probs = random_probs(7, 11, 5, 1.0)
    np.testing.assert_array_equal(decode(probs), decode(probs, method="approx"))
    np.testing.assert_array_equal(decode(probs, exact_max_leaves=11), decode(probs, method="exact"))
    # both trees scored by tree_score; the exact optimum is exact up to the DP's own rounding
    rounding = float64_score_tolerance(11)
    exact = tree_score(decode(probs, method="exact"), probs)
    assert exact >= tree_score(decode(probs), probs) - 2 * rounding


def test_argmax_may_be_invalid_and_decode_never_is():
    probs = random_probs(3, 8, 6, 0.3)
    assert not is_valid_lcag(decode_argmax(probs))
    assert is_valid_lcag(decode(probs))
    assert tree_score(decode_argmax(probs), probs) >= tree_score(decode(probs), probs)


def test_asymmetric_probabilities_are_averaged():
    probs = random_probs(11, 5, 4, 1.0)
    sym = np.exp(0.5 * (np.log(probs) + np.log(probs.transpose(1, 0, 2))))
    # log(exp(s)) is s up to an ulp or two: the same tree, unless two trees tie within that
    assert_same_tree_or_tied(decode(probs), decode(sym), sym, float64_score_tolerance(5))


def test_single_leaf_and_two_classes():
    np.testing.assert_array_equal(decode(np.ones((1, 1, 3))), [[0]])
    star = decode(random_probs(0, 6, 2, 1.0))  # only height 1 exists: a star
    assert (star[~np.eye(6, dtype=bool)] == 1).all()


@pytest.mark.parametrize(
    ("probs", "kwargs", "message"),
    [
        (np.ones((3, 4, 5)), {}, r"expected shape \(L, L, C\)"),
        (np.ones((3, 3, 1)), {}, "C >= 2"),
        (np.full((3, 3, 3), np.nan), {}, r"probs\[0, 1, 0\] = nan"),
        (-np.ones((2, 3, 3, 3)), {}, r"probs\[0, 0, 1, 0\] = -1.0"),
        (np.ones((3, 3, 3)), {"mask": np.ones(3, dtype=bool)}, "only for a batch"),
        (np.ones((2, 3, 3, 3)), {"mask": np.ones((2, 4), dtype=bool)}, "mask: expected bool"),
        (np.ones((3, 3, 3)), {"method": "greedy"}, "method: expected"),
    ],
)
def test_bad_input_is_named(probs, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        decode(probs, **kwargs)


def test_nan_on_the_diagonal_or_padding_is_ignored():
    probs = random_probs(5, 4, 4, 1.0)
    probs[np.arange(4), np.arange(4)] = np.nan
    assert is_valid_lcag(decode(probs))
    batch = np.stack([probs, probs])
    mask = np.array([[True] * 4, [True, True, False, False]])
    batch[1, 2:] = np.nan
    batch[1, :, 2:] = np.nan
    assert is_valid_lcag(decode(batch, mask), mask).all()
