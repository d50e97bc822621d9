"""DecayTree: building, walking, comparing and drawing."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given
from strategies import decay_trees

from lcag import DecayTree, InvalidInputError, InvalidTreeError
from lcag.tree import random_tree

# DESIGN.md's example: a -> (c -> e f) (b -> (d -> g h) i)
DESIGN_NESTED = (("e", "f"), (("g", "h"), "i"))


def test_design_example_structure():
    tree = DecayTree.from_nested(DESIGN_NESTED)
    assert tree.n_leaves == 5
    assert tree.n_nodes == 9
    assert tree.depth == 4
    assert tree.names[:5] == ("e", "f", "g", "h", "i")
    assert int(tree.heights[tree.root]) == 3
    assert sorted(len(tree.children(n)) for n in tree.inner_nodes) == [2, 2, 2, 2]
    assert tree.leaves_under(tree.root) == (0, 1, 2, 3, 4)


def test_draw_is_ascii_and_shows_every_node():
    drawing = DecayTree.from_nested(DESIGN_NESTED).draw()
    assert drawing == "\n".join(
        [
            "* (h=3)",
            "|-- * (h=1)",
            "|   |-- e [0]",
            "|   `-- f [1]",
            "`-- * (h=2)",
            "    |-- * (h=1)",
            "    |   |-- g [2]",
            "    |   `-- h [3]",
            "    `-- i [4]",
        ]
    )
    assert drawing.isascii()


def test_integer_leaves_give_positions():
    tree = DecayTree.from_nested(((2, 0), 1))
    assert tree.to_nested() == ((0, 2), 1)
    assert tree.parent(0) == tree.parent(2) != tree.parent(1)


def test_from_parents_keeps_labels_and_numbering_does_not_matter():
    # Same tree ((0, 1), 2) with the inner nodes numbered both ways.
    a = DecayTree([3, 3, 4, 4, -1], names=["pi+", "pi-", "K+", "K0S", "B+"])
    b = DecayTree([4, 4, 3, -1, 3])
    assert a == b
    assert hash(a) == hash(b)
    assert a.names[4] == "B+"
    assert a.label(0) == "pi+ [0]"
    assert a.label(4) == "B+ (h=2)"
    assert DecayTree([3, 3, 3, -1]) != a


@dataclass
class Particle:
    """A stand-in for any particle hierarchy (phasespace's GenParticle has this shape)."""

    name: str
    mass: float
    children: list = field(default_factory=list)
    pdg_id: int = 0


def test_from_hierarchy_reads_names_masses_and_pdg_ids():
    b0 = Particle(
        "B0",
        5.2797,
        [
            Particle("D-", 1.8696, [Particle("K+", 0.4937, pdg_id=321), Particle("pi-", 0.1396)]),
            Particle("pi+", 0.1396, pdg_id=211),
        ],
        pdg_id=511,
    )
    tree = DecayTree.from_hierarchy(b0)
    assert tree.names[:3] == ("K+", "pi-", "pi+")
    assert tree == DecayTree.from_nested(((0, 1), 2))
    assert tree.masses[tree.root] == pytest.approx(5.2797)
    assert tree.pdg_ids[tree.root] == 511
    assert tree.pdg_ids[0] == 321
    assert "B0 (h=2)" in tree.draw()


def test_from_hierarchy_needs_children():
    with pytest.raises(InvalidTreeError, match="no attribute 'children'"):
        DecayTree.from_hierarchy(object())


@pytest.mark.parametrize(
    ("parents", "message"),
    [
        ([], "non-empty"),
        ([[0, 1]], "1-D"),
        ([2, 2, -1, 7], r"parents\[3\] = 7"),
        ([2, 2, -1, -1], "exactly one root"),
        ([1, 2, 1, -1], "cycle"),
        ([3, 3, 4, 4, -1, 4], "leaves must come first"),
        ([2, 3, 3, -1], "single child"),
        ([1.5, -1], "integers"),
    ],
)
def test_bad_parent_arrays_are_named(parents, message):
    with pytest.raises(InvalidTreeError, match=message):
        DecayTree(parents)


def test_bad_labels_and_nested_inputs():
    with pytest.raises(InvalidTreeError, match="names: expected 3 entries"):
        DecayTree([2, 2, -1], names=["a", "b"])
    with pytest.raises(InvalidTreeError, match="masses: expected shape"):
        DecayTree([2, 2, -1], masses=[1.0])
    with pytest.raises(InvalidTreeError, match=r"permutation of 0\.\.2"):
        DecayTree.from_nested(((0, 1), 3))
    with pytest.raises(InvalidTreeError, match="all int positions or all str names"):
        DecayTree.from_nested(((0, "a"), 1))
    with pytest.raises(InvalidInputError, match="node index"):
        DecayTree.from_nested((0, 1)).children(5)


def test_single_leaf_tree():
    tree = DecayTree([-1])
    assert tree.n_leaves == 1
    assert tree.depth == 1
    assert tree.to_nested() == 0


def test_to_networkx_and_dot():
    tree = DecayTree.from_nested(DESIGN_NESTED)
    graph = tree.to_networkx()
    assert graph.number_of_nodes() == 9
    assert graph.number_of_edges() == 8
    assert graph.nodes[0]["leaf"]
    assert graph.nodes[0]["name"] == "e"
    assert graph.nodes[tree.root]["height"] == 3
    dot = tree.to_dot()
    assert dot.startswith("digraph")
    assert dot.count("->") == 8


@given(decay_trees())
def test_nested_round_trip(tree):
    assert DecayTree.from_nested(tree.to_nested()) == tree


@given(decay_trees())
def test_walks_agree_with_parent_array(tree):
    seen = list(tree.preorder())
    assert sorted(seen) == list(range(tree.n_nodes))
    assert seen[0] == tree.root
    for node in tree.inner_nodes:
        kids = tree.children(node)
        assert len(kids) >= 2
        assert tree.heights[node] == 1 + max(tree.heights[k] for k in kids)
        assert all(tree.parent(k) == node for k in kids)
    for leaf in tree.leaves:
        assert tree.ancestors(leaf)[-1] == tree.root
    assert 2 <= tree.depth <= 8


@given(decay_trees(), decay_trees())
def test_equality_is_structural(a, b):
    assert (a == b) == (a.to_nested() == b.to_nested())


@given(decay_trees())
def test_permuting_leaves_keeps_the_shape(tree):
    order = np.random.default_rng(tree.n_nodes).permutation(tree.n_leaves)
    moved = tree.permute_leaves(order)
    assert moved.isomorphic(tree)
    assert moved.permute_leaves(np.argsort(order)) == tree


def test_random_tree_respects_its_limits():
    rng = np.random.default_rng(0)
    for n in range(1, 30):
        tree = random_tree(rng, n, max_depth=4, max_children=4)
        assert tree.n_leaves == n
        assert tree.depth <= 4
        assert all(2 <= len(tree.children(k)) <= 4 for k in tree.inner_nodes)
    with pytest.raises(InvalidInputError, match="do not fit"):
        random_tree(rng, 17, max_depth=3, max_children=4)
