"""Node evidence: candidate subsets, true-node indicators, the subset head and its residual on
the mass prior, and state dicts of checkpoints written before the evidence had a module."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lcag.errors import ConfigError
from lcag.evidence import MassPrior, candidate_subsets, node_indicator, subset_kinematics
from lcag.evidence.node_evidence import NodeEvidence, upgrade_state_dict
from lcag.matrix import tree_to_lcag
from lcag.models import SubsetHead
from lcag.tree import DecayTree


@st.composite
def nested_trees(draw: st.DrawFn, max_leaves: int = 7) -> DecayTree:
    """A random decay tree (no single-child nodes) over ``2..max_leaves`` leaves."""
    n = draw(st.integers(2, max_leaves))
    groups: list = list(range(n))
    while len(groups) > 1:
        k = draw(st.integers(2, len(groups)))
        start = draw(st.integers(0, len(groups) - k))
        groups[start : start + k] = [tuple(groups[start : start + k])]
    return DecayTree.from_nested(groups[0])


def leaf_sets(tree: DecayTree) -> set[int]:
    """The inner nodes of a tree as leaf bit masks, by walking it."""
    out = set()
    for node in range(tree.n_leaves, len(tree.parents)):
        out.add(sum(1 << leaf for leaf in tree.leaves_under(node)))
    return out


@given(nested_trees())
def test_node_indicator_marks_exactly_the_trees_inner_nodes(tree):
    lcag = tree_to_lcag(tree)
    mask = np.ones((1, tree.n_leaves), dtype=bool)
    marked = set(np.flatnonzero(node_indicator(lcag[None], mask)[0]).tolist())
    assert marked == leaf_sets(tree)


def test_candidates_are_the_proper_subsets_of_real_leaves():
    mask = np.array([[True, True, True, False]])
    got = set(np.flatnonzero(candidate_subsets(mask)[0]).tolist())
    assert got == {0b011, 0b101, 0b110}  # not single leaves, not the root, not the padding


def test_subset_kinematics_of_a_pair():
    x = np.array([[[1.0, 0, 0, 2.0], [-1.0, 0, 0, 2.0], [0, 0, 0, 1.0]]])
    mask = np.ones((1, 3), dtype=bool)
    k = subset_kinematics(x, mask)
    assert k.shape == (1, 8, 4)
    assert np.isclose(k[0, 0b011, 0], np.log1p(4.0))  # two back-to-back leaves: m = 4
    assert np.isclose(k[0, 0b111, 1], 1.0)
    assert np.isclose(k[0, 0b011, 2], 2 / 3)


def test_subset_head_is_permutation_equivariant_over_subsets():
    torch.manual_seed(0)
    head = SubsetHead(dim=8, n_kinematic=3, hidden=16, residual=False)
    leaves = torch.randn(2, 4, 8)
    members = ((torch.arange(16)[:, None] >> torch.arange(4)[None, :]) & 1).float()
    kinematic = torch.randn(2, 16, 3)
    order = torch.tensor([2, 0, 3, 1])  # leaf k of the new order is old leaf order[k]
    new_bits = (members[:, order] * (1 << torch.arange(4))).sum(1).long()  # old S -> new S'
    permuted_kin = torch.empty_like(kinematic)
    permuted_kin[:, new_bits] = kinematic
    got = head(leaves[:, order], members, permuted_kin)
    assert torch.allclose(got[:, new_bits], head(leaves, members, kinematic), atol=1e-6)


def four_leaf_events(seed: int, count: int = 30) -> list[dict]:
    """Events of four unit-mass leaves with random momenta, all of the tree ((0, 1), (2, 3))."""
    rng = np.random.default_rng(seed)
    lcag = tree_to_lcag(DecayTree.from_nested(((0, 1), (2, 3))))
    events = []
    for _ in range(count):
        p = rng.normal(size=(4, 3))
        x = np.concatenate([p, np.sqrt((p**2).sum(1, keepdims=True) + 1.0)], axis=1)
        events.append({"x": x, "target": lcag})
    return events


def test_an_untrained_residual_head_gives_the_mass_prior():
    events = four_leaf_events(seed=0)
    prior = MassPrior.fit(events, n_bins=20)
    evidence = NodeEvidence("subset_head", leaf_dim=8, n_bins=20)
    evidence.set_prior(prior)
    x = torch.tensor(np.stack([e["x"] for e in events[:5]]), dtype=torch.float32)
    mask = torch.ones(5, 4, dtype=torch.bool)
    got = evidence.scores(x, mask, torch.randn(5, 4, 8))
    expected = prior.node_scores(x.numpy().astype(np.float64), mask.numpy())
    candidates = candidate_subsets(mask.numpy())
    assert np.allclose(got[candidates], expected[candidates], atol=1e-5)
    assert np.all(got[~candidates] == 0)


def test_head_loss_trains_towards_the_true_nodes():
    torch.manual_seed(0)
    evidence = NodeEvidence("subset_head", leaf_dim=4, n_bins=10)
    lcag = torch.tensor(tree_to_lcag(DecayTree.from_nested(((0, 1), (2, 3)))))[None]
    target = lcag.clone()
    target[:, range(4), range(4)] = -1
    x = torch.tensor([[[1.0, 0, 0, 2], [-1, 0, 0, 2], [0, 1, 0, 2], [0, -1, 0, 2]]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    leaves = torch.randn(1, 4, 4)
    optimiser = torch.optim.Adam(evidence.parameters(), lr=0.05)
    for _ in range(100):
        optimiser.zero_grad()
        loss, _ = evidence.loss(x, mask, leaves, target)
        loss.backward()
        optimiser.step()
    scores = evidence.scores(x, mask, leaves)[0]
    assert scores[0b0011] > 0
    assert scores[0b1100] > 0
    assert scores[0b0101] < 0
    assert scores[0b0111] < 0


def test_head_share_blends_the_heads_correction_into_the_prior():
    events = four_leaf_events(seed=1)
    evidence = NodeEvidence("subset_head", leaf_dim=8, n_bins=20)
    evidence.set_prior(MassPrior.fit(events, n_bins=20))
    torch.nn.init.normal_(evidence.head.mlp[-1].weight)  # a head that corrects the prior
    x = torch.tensor(np.stack([e["x"] for e in events[:5]]), dtype=torch.float32)
    mask, leaves = torch.ones(5, 4, dtype=torch.bool), torch.randn(5, 4, 8)
    prior = evidence.prior_scores(x, mask)
    full = evidence.scores(x, mask, leaves, head_share=1.0)
    assert not np.allclose(full, prior, atol=1e-3)
    assert np.array_equal(evidence.scores(x, mask, leaves, head_share=0.0), prior)
    half = evidence.scores(x, mask, leaves, head_share=0.5)
    assert np.allclose(half, 0.5 * (prior + full))
    evidence.head_share.fill_(0.5)  # the chosen share is the default
    assert np.array_equal(evidence.scores(x, mask, leaves), half)


def test_bad_kind_and_missing_width_are_config_errors():
    with pytest.raises(ConfigError, match="node_evidence"):
        NodeEvidence("masses")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="leaf embedding width"):
        NodeEvidence("subset_head", leaf_dim=0)


def test_old_state_dicts_are_upgraded():
    old = {"mass_prior_edges": 1, "mass_prior_log_odds": 2, "node_weight": 3, "model.w": 4}
    upgraded = upgrade_state_dict(old)
    catalogue = {k: upgraded.pop(k) for k in list(upgraded) if "catalogue" in k}
    assert sorted(catalogue) == [
        "evidence.catalogue_keys",
        "evidence.catalogue_species",
        "evidence.catalogue_tree_species",
        "evidence.catalogue_trees",
    ]
    assert catalogue["evidence.catalogue_keys"].numel() == 0  # none: every tree counts known
    assert catalogue["evidence.catalogue_trees"].numel() == 0  # no trees: no topology prior
    assert upgraded.pop("evidence.topology_log_odds") == -math.inf  # the topology prior off
    compositions = {k: upgraded.pop(k) for k in list(upgraded) if "species" in k or "compos" in k}
    assert upgraded == {
        "evidence.mass_prior_edges": 1,
        "evidence.mass_prior_log_odds": 2,
        "evidence.weight": 3,
        "evidence.prior_weight": 3,  # the prior was the whole evidence
        "evidence.head_share": torch.tensor(1.0, dtype=torch.float64),  # all of the head
        "model.w": 4,
    }
    # no compositions counted: an empty table, so the prior is the mass alone
    assert sorted(compositions) == [
        "evidence.composition_keys",
        "evidence.composition_log_odds",
        "evidence.species_codes",
        "evidence.species_log_masses",
    ]
    assert compositions["evidence.composition_keys"].numel() == 0
    scalar = upgrade_state_dict({"feature_mean": 0, "tree_temperature": torch.tensor(2.0)})
    # one per leaf count, the same for trees of training topologies and for others
    assert scalar["tree_temperature"].tolist() == [[2.0] * 11] * 2


def test_scoring_some_subsets_gives_those_of_scoring_all():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(3, 5, 3))
    x = np.concatenate([p, np.sqrt((p**2).sum(-1, keepdims=True) + 1.0)], axis=-1)
    events = [
        {"x": e, "target": tree_to_lcag(DecayTree.from_nested(((0, 1), (2, 3), 4)))} for e in x
    ]
    evidence = NodeEvidence("subset_head", leaf_dim=4, n_bins=10)
    evidence.set_prior(MassPrior.fit(events, n_bins=10))
    torch.nn.init.normal_(evidence.head.mlp[-1].weight)  # a head that is more than the prior
    xt, mask = torch.tensor(x), torch.tensor([[True] * 5, [True] * 5, [True] * 4 + [False]])
    leaves = torch.randn(3, 5, 4)
    columns = torch.tensor([3, 7, 12, 15, 31])
    every, _ = evidence.node_logits(xt, mask, leaves)
    some, candidates = evidence.node_logits(xt, mask, leaves, columns)
    # float32 matmuls over other shapes may round differently: a few ulp of logits ~10
    assert torch.allclose(some, every[:, columns], rtol=1e-5, atol=1e-5)
    assert candidates[2].tolist() == [True, True, True, False, False]  # 15: root, 31: padding
    assert bool(torch.all(some[2, 3:] == 0))
