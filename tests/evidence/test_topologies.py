"""The training-topology catalogue: tree keys against brute-force isomorphism, leaf order,
background leaves, and known against unseen topologies of a generated dataset."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import decay_trees

from lcag.data import LCAGDataset
from lcag.evidence import TopologyCatalogue
from lcag.evidence.topologies import tree_key
from lcag.matrix import permute, tree_to_lcag
from lcag.tree import DecayTree


@st.composite
def labelled_trees(draw: st.DrawFn, max_leaves: int = 7) -> tuple[DecayTree, np.ndarray]:
    """A random tree over ``2..max_leaves`` leaves and a species (0..2) per leaf."""
    tree = draw(decay_trees(max_leaves=max_leaves, max_depth=5, max_children=3))
    n = tree.n_leaves
    return tree, np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))


def named(tree: DecayTree, labels: np.ndarray) -> DecayTree:
    """The tree with its leaves named by species and its inner nodes unnamed."""
    names = [f"s{labels[i]}" for i in range(tree.n_leaves)]
    return DecayTree(tree.parents, names=names + [""] * (tree.n_nodes - tree.n_leaves))


@settings(max_examples=150, deadline=None)
@given(labelled_trees(), labelled_trees(), st.randoms(use_true_random=False))
def test_keys_are_equal_exactly_for_isomorphic_labelled_trees(first, second, random):
    (a, la), (b, lb) = first, second
    same = named(a, la).isomorphic(named(b, lb), labels=True)
    assert (tree_key(tree_to_lcag(a), la) == tree_key(tree_to_lcag(b), lb)) == same
    order = np.array(random.sample(range(a.n_leaves), a.n_leaves))  # leaf order ignored
    assert tree_key(permute(tree_to_lcag(a), order), la[order]) == tree_key(tree_to_lcag(a), la)


def test_background_leaves_are_not_part_of_the_tree():
    tree = DecayTree.from_nested(((0, 1), 2))
    lcag = np.zeros((4, 4), dtype=np.int64)
    lcag[:3, :3] = tree_to_lcag(tree)  # leaf 3: background, LCAG 0 with every leaf
    labels = np.array([0, 1, 2, 1])
    assert tree_key(lcag, labels) == tree_key(tree_to_lcag(tree), labels[:3])


def test_training_topologies_are_known_and_unseen_ones_are_not(tiny_data):
    train = LCAGDataset(tiny_data, "train")
    catalogue = TopologyCatalogue.fit(train.__getitems__(range(len(train))))
    assert len(catalogue.species) == 5  # tiny.yaml's final-state masses
    assert 1 <= len(catalogue.keys) <= 12  # its known topologies (some may share a labelling)
    for split, known in (("test", True), ("test_unknown", False), ("val_unknown", False)):
        dataset = LCAGDataset(tiny_data, split)
        events = dataset.__getitems__(range(0, len(dataset), 7))
        for n in {len(e["x"]) for e in events}:
            mine = [e for e in events if len(e["x"]) == n]
            x = np.stack([e["x"] for e in mine])
            lcag = np.stack([e["target"] for e in mine]).clip(min=0)
            found = catalogue.contains(lcag, x, np.ones((len(mine), n), dtype=bool))
            assert found.all() if known else not found.any(), (split, n)
    nothing = TopologyCatalogue.empty()  # no catalogue: every tree counts as known
    assert nothing.contains(lcag, x, np.ones(lcag.shape[:2], dtype=bool)).all()
