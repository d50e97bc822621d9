"""The torch log-partition and tree likelihood: equal to the compiled log-partition (itself
checked against brute force in tests/test_decode_nodes.py), gradients that are marginals."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from lcag import log_partition, tree_score
from lcag.decode.scores import inner_node_masks
from lcag.matrix import tree_to_lcag
from lcag.training.tree_loss import log_partition_torch, tree_nll
from lcag.tree import DecayTree


@st.composite
def events(draw: st.DrawFn, max_leaves: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_probs (1, C, L, L), node_scores (1, 2^L))`` float64, symmetric, C = L + 1."""
    L = draw(st.integers(2, max_leaves))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.5, 3.0, 10.0]))
    logits = torch.tensor(rng.normal(scale=scale, size=(1, L + 1, L, L)))
    logits = 0.5 * (logits + logits.transpose(2, 3))
    nodes = torch.tensor(rng.normal(scale=scale, size=(1, 1 << L)))
    return logits.log_softmax(dim=1), nodes


def compiled_log_z(log_probs: torch.Tensor, nodes: torch.Tensor) -> float:
    probs = log_probs.exp().permute(0, 2, 3, 1).numpy()
    return float(log_partition(probs, node_scores=nodes.numpy(), eps=0.0)[0])


@given(events())
def test_equals_the_compiled_log_partition(event):
    log_probs, nodes = event
    got = log_partition_torch(log_probs[:, 1:].permute(0, 2, 3, 1), nodes)
    expected = compiled_log_z(log_probs, nodes)
    assert abs(float(got[0]) - expected) <= 1e-9 * max(1.0, abs(expected))


@given(events(max_leaves=5))
def test_gradients_are_marginals(event):
    """d log Z / d score[i, j, h] is P(LCAG_ij = h): each pair's sum over heights is 1; a node
    score's gradient is P(S is a node), in [0, 1], and 1 for the root (in every tree)."""
    log_probs, nodes = event
    scores = log_probs[:, 1:].permute(0, 2, 3, 1).clone().requires_grad_()
    node = nodes.clone().requires_grad_()
    log_partition_torch(scores, node).sum().backward()
    L = scores.shape[1]
    upper = np.triu_indices(L, 1)
    pair_mass = scores.grad[0].sum(-1).numpy()[upper]
    assert np.allclose(pair_mass, 1.0, atol=1e-9)
    node_grad = node.grad[0].numpy()
    assert np.all(node_grad >= -1e-12)
    assert np.all(node_grad <= 1 + 1e-9)
    assert abs(node_grad[(1 << L) - 1] - 1.0) < 1e-9


def test_nll_is_log_z_minus_the_true_trees_score():
    tree = DecayTree.from_nested((((0, 1), 2), (3, (4, 5))))
    lcag = tree_to_lcag(tree)
    rng = np.random.default_rng(3)
    logits = torch.tensor(rng.normal(size=(1, 4, 6, 6)))
    logits = 0.5 * (logits + logits.transpose(2, 3))
    nodes = torch.tensor(rng.normal(size=(1, 64)))
    is_node = torch.zeros(1, 64, dtype=torch.bool)
    is_node[0, inner_node_masks(lcag[None], np.ones((1, 6), dtype=bool))[0]] = True
    nll = tree_nll(logits.log_softmax(dim=1), torch.tensor(lcag)[None], is_node, nodes)
    probs = logits.softmax(dim=1).permute(0, 2, 3, 1).numpy()
    expected = compiled_log_z(logits.log_softmax(dim=1), nodes) - float(
        tree_score(lcag, probs[0], node_scores=nodes[0].numpy(), eps=0.0)
    )
    assert abs(float(nll[0]) - expected) < 1e-9
    assert float(nll[0]) > 0  # other trees have probability too


def test_a_sure_model_gives_the_true_tree_probability_one():
    tree = DecayTree.from_nested(((0, 1), (2, 3)))
    lcag = torch.tensor(tree_to_lcag(tree))[None]
    logits = torch.full((1, 3, 4, 4), -30.0, dtype=torch.float64)
    logits.scatter_(1, lcag[:, None], 30.0)
    is_node = torch.zeros(1, 16, dtype=torch.bool)
    is_node[0, [0b0011, 0b1100, 0b1111]] = True
    assert float(tree_nll(logits.log_softmax(dim=1), lcag, is_node)[0]) < 1e-12
