"""Reranking a trained model's best trees with the decay grammar."""

from __future__ import annotations

import numpy as np
import pytest

from lcag import is_valid_lcag
from lcag.data import LCAGDataset
from lcag.errors import InvalidInputError
from lcag.evidence.calibration import events_by_size
from lcag.evidence.grammar import DecayGrammar
from lcag.evidence.grammar_rerank import candidates, choose
from lcag.inference import Reconstructor


@pytest.fixture(scope="module")
def batch(tiny_data):
    """60 test_unknown events of one leaf count: ``x (N, n, F)``, ``mask``."""
    dataset = LCAGDataset(tiny_data, "test_unknown", max_events=400)
    groups = events_by_size(dataset.__getitems__(range(len(dataset))))
    n, group = max(groups.items(), key=lambda item: len(item[1]))
    group = group[:60]
    x = np.stack([e["x"] for e in group]).astype(np.float32)
    return x, np.ones((len(group), n), dtype=bool)


def test_weight_zero_is_the_full_method(checkpoint, tiny_data, batch):
    reco = Reconstructor.from_checkpoint(checkpoint)
    grammar = DecayGrammar.from_dataset(tiny_data)
    x, mask = batch
    found = candidates(reco, grammar, x, mask, k=3, proposals=3)
    probs, nodes, _ = reco.outputs(x, mask)
    full = reco.decode(probs, mask, nodes, x=x)
    np.testing.assert_array_equal(choose(found, mask, 0.0), full)
    for event in found:  # the grammar alone keeps the candidate it likes best
        kept = event.index(np.inf)
        assert event.grammar[kept] == event.grammar.max()
        assert all(is_valid_lcag(M) for M in event.trees)
        assert len(event.trees) == len(event.scores) == len(event.grammar)


def test_events_above_the_exact_limit_are_refused(checkpoint, tiny_data):
    reco = Reconstructor.from_checkpoint(checkpoint)
    grammar = DecayGrammar.from_dataset(tiny_data)
    x = np.zeros((1, 11, reco.feature_mean.shape[-1]), dtype=np.float32)
    with pytest.raises(InvalidInputError, match="at most 10 leaves"):
        candidates(reco, grammar, x, np.ones((1, 11), dtype=bool))
