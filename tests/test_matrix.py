"""Trees <-> LCAG / LCAS matrices, validity, permutations and canonical forms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import decay_trees

from lcag import DecayTree, InvalidInputError, InvalidLCAGError, permute
from lcag.matrix import (
    canonical_form,
    is_valid_lcag,
    lcag_to_tree,
    lcag_to_trees,
    tree_to_lcag,
    tree_to_lcas,
    trees_to_lcag,
    validate_lcag,
)

DESIGN_LCAG = np.array(
    [
        [0, 1, 3, 3, 3],
        [1, 0, 3, 3, 3],
        [3, 3, 0, 1, 2],
        [3, 3, 1, 0, 2],
        [3, 3, 2, 2, 0],
    ]
)


def test_design_worked_example():
    tree = DecayTree.from_nested((("e", "f"), (("g", "h"), "i")))
    np.testing.assert_array_equal(tree_to_lcag(tree), DESIGN_LCAG)
    assert lcag_to_tree(DESIGN_LCAG) == tree


def test_leaves_are_pulled_down():
    # a -> (b -> x y) z: b has height 1, a height 2; a leaf hanging off the root stays 0.
    M = tree_to_lcag(DecayTree.from_nested(((0, 1), 2)))
    np.testing.assert_array_equal(M, [[0, 1, 2], [1, 0, 2], [2, 2, 0]])


@given(decay_trees())
def test_round_trip(tree):
    M = tree_to_lcag(tree)
    assert lcag_to_tree(M) == tree
    assert is_valid_lcag(M)


@given(decay_trees())
def test_matrix_is_symmetric_with_zero_diagonal(tree):
    M = tree_to_lcag(tree)
    np.testing.assert_array_equal(M, M.T)
    assert not np.diag(M).any()
    off = M[~np.eye(tree.n_leaves, dtype=bool)]
    assert off.min() >= 1
    assert off.max() == tree.depth - 1


@given(decay_trees(), st.randoms(use_true_random=False))
def test_permuting_leaves_permutes_the_matrix(tree, random):
    order = np.array(random.sample(range(tree.n_leaves), tree.n_leaves))
    np.testing.assert_array_equal(
        tree_to_lcag(tree.permute_leaves(order)), permute(tree_to_lcag(tree), order)
    )


@given(decay_trees(), st.randoms(use_true_random=False))
def test_canonical_form_ignores_leaf_order(tree, random):
    order = np.array(random.sample(range(tree.n_leaves), tree.n_leaves))
    M = tree_to_lcag(tree)
    np.testing.assert_array_equal(canonical_form(M), canonical_form(permute(M, order)))
    assert lcag_to_tree(canonical_form(M)).isomorphic(tree)


# --------------------------------------------------------------------- corruptions
def _reason(matrix) -> str:
    with pytest.raises(InvalidLCAGError) as info:
        lcag_to_tree(matrix)
    return info.value.reason


@given(decay_trees(), st.data())
def test_one_sided_change_is_asymmetric(tree, data):
    M = tree_to_lcag(tree)
    i, j = data.draw(
        st.sampled_from([(a, b) for a in range(len(M)) for b in range(len(M)) if a != b])
    )
    M[i, j] += data.draw(st.integers(1, 5))
    assert _reason(M) == InvalidLCAGError.ASYMMETRIC
    assert is_valid_lcag(M) is False


@given(decay_trees(), st.data())
def test_non_zero_diagonal_is_rejected(tree, data):
    M = tree_to_lcag(tree)
    i = data.draw(st.integers(0, len(M) - 1))
    M[i, i] = data.draw(st.integers(1, 7))
    with pytest.raises(InvalidLCAGError, match=f"row {i}") as info:
        validate_lcag(M)
    assert info.value.reason == InvalidLCAGError.NON_ZERO_DIAGONAL
    assert info.value.where == (i,)


@given(decay_trees(), st.data())
def test_fractional_entry_is_non_integer(tree, data):
    M = tree_to_lcag(tree).astype(float)
    i, j = data.draw(st.sampled_from([(a, b) for a in range(len(M)) for b in range(a + 1, len(M))]))
    M[i, j] = M[j, i] = M[i, j] + data.draw(st.sampled_from([0.5, -0.25, np.nan]))
    assert _reason(M) == InvalidLCAGError.NON_INTEGER


@given(decay_trees(), st.data())
def test_zero_off_diagonal_is_non_positive(tree, data):
    M = tree_to_lcag(tree)
    i, j = data.draw(st.sampled_from([(a, b) for a in range(len(M)) for b in range(a + 1, len(M))]))
    M[i, j] = M[j, i] = data.draw(st.integers(-3, 0))
    assert _reason(M) == InvalidLCAGError.NON_POSITIVE


@given(decay_trees(), st.data())
def test_joining_across_a_subtree_breaks_the_ultrametric(tree, data):
    # Leaves i, j share an ancestor below the one they share with k. Setting M[i, k] to
    # M[i, j] claims k joins i early while j, which sits with i, still joins k late.
    M = tree_to_lcag(tree)
    L = len(M)
    triples = [
        (i, j, k)
        for i in range(L)
        for j in range(L)
        for k in range(L)
        if len({i, j, k}) == 3 and M[i, j] < M[i, k]
    ]
    assume(triples)
    i, j, k = data.draw(st.sampled_from(triples))
    M[i, k] = M[k, i] = M[i, j]
    with pytest.raises(InvalidLCAGError, match="exceeds max") as info:
        validate_lcag(M)
    assert info.value.reason == InvalidLCAGError.NOT_ULTRAMETRIC


@given(decay_trees(), st.integers(2, 3))
def test_skipping_levels_is_a_level_gap(tree, factor):
    # Stretching all heights keeps an ultrametric but leaves nodes with no child one level below.
    M = tree_to_lcag(tree) * factor
    with pytest.raises(InvalidLCAGError, match="has no child at level") as info:
        validate_lcag(M)
    assert info.value.reason == InvalidLCAGError.LEVEL_GAP


@pytest.mark.parametrize(
    ("matrix", "reason"),
    [
        (np.zeros((2, 3)), InvalidLCAGError.NOT_SQUARE),
        (np.zeros((0, 0)), InvalidLCAGError.NOT_SQUARE),
        (np.array([["a", "b"], ["b", "a"]]), InvalidLCAGError.NON_INTEGER),
        (np.array([[0, 10**9], [10**9, 0]]), InvalidLCAGError.LEVEL_GAP),
        (np.array([[0, np.inf], [np.inf, 0]]), InvalidLCAGError.NON_INTEGER),
    ],
)
def test_malformed_matrices(matrix, reason):
    assert _reason(matrix) == reason


def test_valid_inputs_in_other_dtypes():
    assert lcag_to_tree(DESIGN_LCAG.astype(np.float32)) == lcag_to_tree(DESIGN_LCAG)
    assert lcag_to_tree(DESIGN_LCAG.tolist()) == lcag_to_tree(DESIGN_LCAG)
    assert lcag_to_tree([[0]]).n_leaves == 1


# -------------------------------------------------------------------------- batches
@given(st.lists(decay_trees(max_leaves=9), min_size=1, max_size=6), st.data())
def test_batched_validity_matches_single_checks(trees, data):
    matrices, mask = trees_to_lcag(trees)
    # corrupt a random subset of events in a random way
    for n in range(len(trees)):
        if data.draw(st.booleans()):
            L = trees[n].n_leaves
            i, j = data.draw(st.integers(0, L - 1)), data.draw(st.integers(0, L - 1))
            matrices[n, i, j] += data.draw(st.integers(-1, 2))
    expected = [is_valid_lcag(m[k][:, k]) for m, k in zip(matrices, mask, strict=False)]
    np.testing.assert_array_equal(is_valid_lcag(matrices, mask), expected)
    # padded entries never matter
    matrices[~(mask[:, :, None] & mask[:, None, :])] = 99
    np.testing.assert_array_equal(is_valid_lcag(matrices, mask), expected)


def test_batched_validity_handles_leaves_anywhere():
    M = np.full((1, 7, 7), -1)
    real = np.array([0, 2, 3, 5, 6])
    M[0][np.ix_(real, real)] = DESIGN_LCAG
    mask = np.isin(np.arange(7), real)[None]
    assert is_valid_lcag(M, mask).tolist() == [True]
    assert lcag_to_trees(M, mask)[0] == lcag_to_tree(DESIGN_LCAG)


def test_batched_tree_decoding_names_the_event():
    batch = np.stack([DESIGN_LCAG, DESIGN_LCAG * 2])
    with pytest.raises(InvalidLCAGError, match="event 1"):
        lcag_to_trees(batch)


@given(st.lists(decay_trees(max_leaves=8), min_size=1, max_size=5), st.data())
def test_batched_permute_matches_single(trees, data):
    matrices, _ = trees_to_lcag(trees)
    L = matrices.shape[1]
    orders = np.stack([data.draw(st.permutations(range(L))) for _ in trees])
    batched = permute(matrices, orders)
    for n in range(len(trees)):
        np.testing.assert_array_equal(batched[n], permute(matrices[n], orders[n]))


def test_permute_rejects_bad_orders():
    with pytest.raises(InvalidInputError, match="not a permutation"):
        permute(DESIGN_LCAG, [0, 0, 1, 2, 3])
    with pytest.raises(InvalidInputError, match="order: expected"):
        permute(DESIGN_LCAG, [0, 1])


# ------------------------------------------------------------------------------ LCAS
def test_lcas_labels_pairs_by_ancestor_stage():
    tree = DecayTree(
        [5, 5, 6, 6, 7, 7, 7, -1], names=["K+", "pi-", "pi+", "pi-", "pi+", "D0", "K_S0", "B+"]
    )
    stages = {"D0": 2, "K_S0": 1, "B+": 5}
    M = tree_to_lcas(tree, stages)
    assert M[0, 1] == 2  # K+ pi- from the D0
    assert M[2, 3] == 1  # pi+ pi- from the K_S0
    assert M[0, 2] == M[1, 4] == 5  # across the B+
    np.testing.assert_array_equal(M, tree_to_lcas(tree, lambda node: stages[tree.names[node]]))


def test_lcas_by_pdg_id_and_missing_stage():
    tree = DecayTree([2, 2, -1], names=["a", "b", "X"], pdg_ids=[1, 2, 511])
    assert tree_to_lcas(tree, {511: 3})[0, 1] == 3
    with pytest.raises(InvalidInputError, match="no stage for node 2"):
        tree_to_lcas(tree, {"Y": 1})
    with pytest.raises(InvalidInputError, match="stages start at 1"):
        tree_to_lcas(tree, lambda node: 0)
