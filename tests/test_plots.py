"""Report figures: the tree diagrams' layout, the marking of wrong nodes, examples.png."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from hypothesis import given
from matplotlib.colors import to_rgba
from strategies import decay_trees

from lcag import DecayTree, InvalidInputError, tree_to_lcag
from lcag.plots import Example, plot_examples
from lcag.tree_plot import (
    differing_nodes,
    draw_tree,
    inner_leaf_sets,
    invariant_mass,
    layout_tree,
    leaf_sets,
)

PNG = b"\x89PNG\r\n\x1a\n"

# truth: 0 1 from one particle, 2 3 from another, both and 4 from the root
TRUTH = DecayTree.from_nested(((0, 1), (2, 3), 4))
# prediction: 0 1 right, but 2 with them and 3 with 4
PREDICTED = DecayTree.from_nested((((0, 1), 2), (3, 4)))


@given(decay_trees(max_leaves=12))
def test_layout_is_tidy(tree):
    for mode in ("height", "depth"):
        xy = layout_tree(tree, y=mode)
        assert xy.shape == (tree.n_nodes, 2)
        x, y = xy[:, 0], xy[:, 1]
        assert sorted(x[: tree.n_leaves]) == list(range(tree.n_leaves))  # one unit apart
        for node in tree.inner_nodes:
            kids = list(tree.children(node))
            assert x[node] == pytest.approx(np.mean(x[kids]))
            under = x[list(tree.leaves_under(node))]
            assert under.min() <= x[node] <= under.max()
            # a subtree's leaves are side by side: no other leaf between them, no crossing
            assert under.max() - under.min() == len(under) - 1
            assert (y[node] > y[kids]).all()  # parent above its children
        if mode == "height":
            np.testing.assert_array_equal(y, tree.heights)
        else:
            for node in range(tree.n_nodes):
                parent = tree.parent(node)
                expected = tree.depth - 1 if parent < 0 else y[parent] - 1
                assert y[node] == expected


def test_layout_of_a_known_tree():
    xy = layout_tree(TRUTH)
    # leaves in depth-first order 0 1 2 3 4 at x = 0..4; (0 1) at 0.5, (2 3) at 2.5
    np.testing.assert_array_equal(xy[:5, 0], [0, 1, 2, 3, 4])
    sets = leaf_sets(TRUTH)
    x_of = {sets[n]: xy[n] for n in TRUTH.inner_nodes}
    np.testing.assert_array_equal(x_of[frozenset({0, 1})], [0.5, 1])
    np.testing.assert_array_equal(x_of[frozenset({2, 3})], [2.5, 1])
    np.testing.assert_array_equal(x_of[frozenset(range(5))], [(0.5 + 2.5 + 4) / 3, 2])
    with pytest.raises(InvalidInputError, match="height"):
        layout_tree(TRUTH, y="width")


def test_differing_nodes_are_the_leaf_sets_not_in_the_other_tree():
    assert inner_leaf_sets(TRUTH) == {frozenset({0, 1}), frozenset({2, 3}), frozenset(range(5))}
    assert differing_nodes(PREDICTED, TRUTH) == {frozenset({0, 1, 2}), frozenset({3, 4})}
    assert differing_nodes(TRUTH, PREDICTED) == {frozenset({2, 3})}  # missed
    assert differing_nodes(TRUTH, TRUTH.permute_leaves([0, 1, 2, 3, 4])) == set()
    # the same shape over other leaves is another tree
    assert differing_nodes(TRUTH.permute_leaves([0, 2, 1, 3, 4]), TRUTH) == {
        frozenset({0, 2}),
        frozenset({1, 3}),
    }
    # a truth over event leaves 1..4 (leaf 0 is background): compared in event indices
    sub = DecayTree.from_nested(((0, 1), (2, 3)))
    assert differing_nodes(PREDICTED, sub, reference_leaf_ids=[1, 2, 3, 4]) == {
        frozenset({0, 1}),
        frozenset({0, 1, 2}),
        frozenset(range(5)),
    }  # its (2 3) is the event's {3, 4}, a node of PREDICTED


@given(decay_trees(max_leaves=8), decay_trees(max_leaves=8))
def test_nothing_differs_exactly_between_equal_trees(a, b):
    if a.n_leaves != b.n_leaves:
        return
    same = not differing_nodes(a, b) and not differing_nodes(b, a)
    assert same == (a == b)


def test_draw_tree_marks_the_wrong_nodes_in_red():
    figure, axis = plt.subplots()
    try:
        marked = draw_tree(axis, PREDICTED, compare_to=TRUTH, mark_color="red")
        assert marked == {frozenset({0, 1, 2}), frozenset({3, 4})}
        leaves, inner = axis.collections  # the two scatters: leaves, then inner nodes
        assert len(leaves.get_offsets()) == 5
        colors = [tuple(c) for c in inner.get_facecolors()]
        assert len(colors) == PREDICTED.n_nodes - PREDICTED.n_leaves
        assert colors.count(to_rgba("red")) == 2
        # the red squares sit where the wrong nodes are
        xy = layout_tree(PREDICTED)
        sets = leaf_sets(PREDICTED)
        red = {tuple(p) for p, c in zip(inner.get_offsets(), colors, strict=True)
               if c == to_rgba("red")}  # fmt: skip
        assert red == {tuple(xy[n]) for n in PREDICTED.inner_nodes if sets[n] in marked}
        assert draw_tree(axis, TRUTH) == set()  # nothing to compare with: nothing marked
    finally:
        plt.close(figure)


def test_node_labels_name_and_mass():
    momenta = np.array([[1.0, 0, 0, 2], [-1.0, 0, 0, 2], [0, 3.0, 0, 5], [0, -3.0, 0, 5],
                        [0, 0, 0, 1.0]])  # fmt: skip
    # TRUTH's inner nodes: 5 the root, 6 = (0 1), 7 = (2 3)
    assert [TRUTH.leaves_under(n) for n in TRUTH.inner_nodes] == [(0, 1, 2, 3, 4), (0, 1), (2, 3)]
    named = DecayTree(TRUTH.parents, names=["a", "b", "c", "d", "e", "R", "X", "Y"],
                      masses=[1, 1, 1, 1, 1, 20.0, 3.5, float("nan")])  # fmt: skip
    figure, axis = plt.subplots()
    try:
        draw_tree(axis, named, momenta=momenta)
        texts = {t.get_text() for t in axis.texts}
        assert {"0\na", "4\ne", "X\nm=3.5", "R\nm=20"} <= texts
        assert "Y\nm=10" in texts  # no nominal mass: the invariant mass of leaves 2 and 3
        axis.clear()
        draw_tree(axis, PREDICTED)  # neither names nor masses nor momenta: leaf indices
        assert sorted(t.get_text() for t in axis.texts) == ["0", "1", "2", "3", "4"]
        with pytest.raises(InvalidInputError, match="momenta"):
            draw_tree(axis, PREDICTED, momenta=momenta[:3])
    finally:
        plt.close(figure)


def test_invariant_mass():
    momenta = np.array([[3.0, 0, 0, 5], [-3.0, 0, 0, 5], [0, 0, 0, 0.5]])
    assert invariant_mass(momenta, {0, 1}) == pytest.approx(10.0)
    assert invariant_mass(momenta, [2]) == pytest.approx(0.5)
    assert invariant_mass(np.array([[1.0, 0, 0, 1 - 1e-12]]), [0]) == 0.0  # rounding: not NaN


def test_examples_png_is_written(tmp_path):
    named = DecayTree(TRUTH.parents, names=["pi+", "pi-", "K+", "K-", "gamma", "B", "rho0",
                      "phi"], masses=[0.14, 0.14, 0.49, 0.49, 0.0, 5.28, 0.775, 1.02])  # fmt: skip
    order = np.array([3, 0, 4, 1, 2])  # the event's leaf k is the tree's leaf order[k]
    truth = tree_to_lcag(named.permute_leaves(order))
    true_tree = named.permute_leaves(order)
    wrong = tree_to_lcag(PREDICTED)
    momenta = np.abs(np.random.default_rng(0).normal(size=(5, 4))) + np.array([0, 0, 0, 3])
    example = Example("test", truth, {"decoded": wrong, "full": truth}, momenta=momenta,
                      true_tree=true_tree, true_leaves=np.arange(5), event=7)  # fmt: skip
    # a background leaf (LCAG row 0) stays outside the true tree
    background = np.zeros((6, 6), dtype=np.int64)
    background[1:, 1:] = tree_to_lcag(TRUTH)
    with_background = Example("test_unknown", background, {"full": tree_to_lcag(
        DecayTree.from_nested(((0, 1, 2), (3, 4), 5)))})  # fmt: skip
    legacy = ("test", tree_to_lcag(TRUTH), wrong)  # (split, truth, predicted) still works
    path = tmp_path / "examples.png"
    plot_examples([example, with_background, legacy], path)
    assert path.read_bytes()[:8] == PNG
    plot_examples([], tmp_path / "none.png")
    assert (tmp_path / "none.png").read_bytes()[:8] == PNG
