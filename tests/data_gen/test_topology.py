"""Random topologies: the paper's protocol rules hold for every draw."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcag.data_gen.config import RandomTopologies
from lcag.data_gen.topology import sample_random_topologies
from lcag.errors import ConfigError


@st.composite
def protocols(draw: st.DrawFn) -> RandomTopologies:
    final = draw(st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0]), min_size=1, unique=True))
    lightest = min(final)
    inter = draw(
        st.lists(st.sampled_from([10.0, 20.0, 25.0, 50.0, 70.0, 90.0]), max_size=6, unique=True)
    )
    min_children = draw(st.integers(2, 3))
    inter = [m for m in inter if m > min_children * lightest]
    return RandomTopologies(
        root_mass=100.0,
        intermediate_masses=inter,
        final_state_masses=final,
        max_depth=draw(st.integers(2, 8)),
        min_children=min_children,
        max_children=draw(st.integers(min_children, 6)),
        intermediate_weight=draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])),
        unique=False,
    )


@settings(max_examples=40)
@given(protocols(), st.integers(0, 2**32 - 1))
def test_every_decay_follows_the_protocol(cfg, seed):
    for topology in sample_random_topologies(cfg, 5, np.random.default_rng(seed)):
        tree = topology.tree
        masses = tree.masses
        assert masses[tree.root] == cfg.root_mass
        assert masses[tree.root] == masses.max()
        assert tree.depth <= cfg.max_depth
        assert set(masses[: tree.n_leaves]) <= set(cfg.final_state_masses)
        for node in tree.inner_nodes:
            kids = tree.children(node)
            assert cfg.min_children <= len(kids) <= cfg.max_children
            assert masses[list(kids)].sum() < masses[node]  # kinematically allowed
            if node != tree.root:
                assert masses[node] in cfg.intermediate_masses
        assert topology.forbidden_decay() is None


def test_paper_protocol_leaf_filters_and_uniqueness():
    cfg = RandomTopologies(min_leaves=4, max_leaves=9, unique=True)
    drawn = sample_random_topologies(cfg, 60, np.random.default_rng(1))
    assert all(4 <= t.n_leaves <= 9 for t in drawn)
    keys = [t.key() for t in drawn]
    assert len(set(keys)) == len(keys)
    assert max(t.depth for t in drawn) >= 4  # the protocol does reach deep trees


def test_same_seed_same_topologies():
    cfg = RandomTopologies()
    a = sample_random_topologies(cfg, 20, np.random.default_rng(5))
    b = sample_random_topologies(cfg, 20, np.random.default_rng(5))
    assert [t.key() for t in a] == [t.key() for t in b]
    assert all(np.array_equal(x.tree.parents, y.tree.parents) for x, y in zip(a, b, strict=True))


def test_widths_only_on_intermediate_particles():
    (topology,) = sample_random_topologies(
        RandomTopologies(relative_width=0.02), 1, np.random.default_rng(2)
    )
    inner = list(topology.tree.inner_nodes)
    assert not topology.widths[: topology.n_leaves].any()
    np.testing.assert_allclose(topology.widths[inner], 0.02 * topology.tree.masses[inner])


def test_impossible_filters_give_up_with_a_clear_error():
    # depth 2, 2-3 children of 5 masses: exactly 15 + 35 = 50 distinct topologies exist
    cfg = RandomTopologies(max_depth=2, max_children=3, min_leaves=2, max_leaves=3, unique=True)
    with pytest.raises(ConfigError, match="only 50 of 60 topologies passed the filters"):
        sample_random_topologies(cfg, 60, np.random.default_rng(0), max_attempts=5000)
