"""The combinatorial (invariant-mass) baseline: exact on exact data, always valid trees."""

from __future__ import annotations

import numpy as np
import pytest

from lcag import is_valid_lcag, tree_to_lcag
from lcag.baselines import CombinatorialBaseline
from lcag.data import LCAGDataset, collate
from lcag.errors import InvalidInputError

PAPER_MASSES = [90.0, 80.0, 70.0, 50.0, 25.0, 20.0, 10.0]


def test_reconstructs_exact_tiny_events(tiny_data):
    dataset = LCAGDataset(tiny_data, "test")
    events = dataset.__getitems__(range(len(dataset)))
    batch = collate(events)
    baseline = CombinatorialBaseline(PAPER_MASSES)
    matrices = baseline.lcag(batch["x"].numpy().astype(np.float64), batch["mask"].numpy())
    right = 0
    for matrix, event in zip(matrices, events, strict=True):
        target = event["target"].copy()
        np.fill_diagonal(target, 0)
        right += np.array_equal(matrix, target)
    assert right / len(events) >= 0.999


def test_smeared_events_still_give_valid_trees():
    rng = np.random.default_rng(0)
    events = []
    for n in rng.integers(1, 10, size=40):
        p = rng.normal(size=(n, 3)) * 10
        events.append(np.column_stack([p, np.sqrt((p**2).sum(1) + 1.0)]))
    baseline = CombinatorialBaseline(PAPER_MASSES, resolution=0.01)
    for event, tree in zip(events, baseline.reconstruct(events), strict=True):
        assert tree.n_leaves == len(event)
        assert is_valid_lcag(tree_to_lcag(tree))


def test_bad_input_is_refused():
    baseline = CombinatorialBaseline(PAPER_MASSES, max_leaves=6)
    with pytest.raises(InvalidInputError, match="has 7 leaves, at most 6"):
        baseline.reconstruct([np.ones((7, 4))])
    with pytest.raises(InvalidInputError, match="3 features per leaf"):
        baseline.reconstruct(np.ones((2, 3, 3)))
    with pytest.raises(InvalidInputError, match="positive intermediate masses"):
        CombinatorialBaseline([])
