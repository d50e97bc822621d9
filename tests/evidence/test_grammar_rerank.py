"""Reranking a trained model's best trees with the decay grammar."""

from __future__ import annotations

import numpy as np
import pytest

from lcag import is_valid_lcag
from lcag.data import LCAGDataset
from lcag.errors import InvalidInputError
from lcag.evidence.calibration import events_by_size
from lcag.evidence.grammar import DecayGrammar
from lcag.evidence.grammar_candidates import candidates, choose
from lcag.inference import Reconstructor


@pytest.fixture(scope="module")
def batch(tiny_data):
    """60 test_unknown events of one leaf count, at least 3: ``x (N, n, F)``, ``mask``."""
    dataset = LCAGDataset(tiny_data, "test_unknown", max_events=400)
    groups = events_by_size(dataset.__getitems__(range(len(dataset))))
    n, group = max(((n, g) for n, g in groups.items() if n >= 3), key=lambda item: len(item[1]))
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


def test_duplicate_candidates_are_kept_once_at_their_best_score(checkpoint, tiny_data, batch):
    reco = Reconstructor.from_checkpoint(checkpoint)
    grammar = DecayGrammar.from_dataset(tiny_data)
    x, mask = batch
    for event in candidates(reco, grammar, x[:20], mask[:20], k=4, proposals=4):
        keys = {M.tobytes() for M in event.trees}
        assert len(keys) == len(event.trees)
        assert event.known.shape == event.scores.shape
        q = event.softmax(2.0, 3.0)
        np.testing.assert_allclose(q.sum(), 1.0)
        assert np.argmax(q) == event.index(2.0)  # a temperature changes no ranking


def _splits(tiny_data, events=150):
    out = []
    for split in ("val", "val_unknown"):
        dataset = LCAGDataset(tiny_data, split, max_events=events)
        out.append(dataset.__getitems__(range(len(dataset))))
    return out


def test_the_fitted_rerank_survives_a_round_trip(checkpoint, tiny_data):
    import json

    from lcag.evidence.grammar_rerank import WEIGHTS, GrammarRerank

    reco = Reconstructor.from_checkpoint(checkpoint)
    grammar = DecayGrammar.from_dataset(tiny_data)
    rerank = reco.fit_rerank(_splits(tiny_data), grammar, k=3, proposals=2)
    assert reco.rerank is rerank
    assert rerank.weight in WEIGHTS
    assert rerank.temperature > 0
    back = GrammarRerank.from_dict(json.loads(json.dumps(rerank.to_dict())))
    fields = ("weight", "temperature", "slope", "offset", "k", "proposals")
    assert [getattr(back, f) for f in fields] == [getattr(rerank, f) for f in fields]
    assert (back.k, back.proposals) == (3, 2)
    np.testing.assert_equal(back.recall, rerank.recall)  # nan where the grammar is off
    np.testing.assert_array_equal(back.grammar.log_child, rerank.grammar.log_child)


def test_reconstruct_reranks_only_trees_of_no_training_topology(checkpoint, tiny_data, batch):
    from lcag.evidence.grammar_rerank import GrammarRerank

    reco = Reconstructor.from_checkpoint(checkpoint)
    grammar = DecayGrammar.from_dataset(tiny_data)
    x, mask = batch
    plain = reco.reconstruct(x, mask, top_k=3)
    reco.rerank = GrammarRerank(
        grammar, weight=np.inf, temperature=2.0, slope=1.5, offset=-0.5, k=3, proposals=2
    )
    found = reco.reconstruct(x, mask, top_k=3)
    own = candidates(reco, grammar, x, mask, k=3, proposals=2)
    assert any(r.reranked for r in found)
    for before, after, event in zip(plain, found, own, strict=True):
        assert all(is_valid_lcag(M) for M, _ in after.alternatives)
        if event.full_is_known:  # the full method's tree stays, with its probability
            assert not after.reranked
            np.testing.assert_array_equal(after.lcag, before.lcag)
            assert after.probability == before.probability
            assert len(after.alternatives) == len(before.alternatives)
            for (M, q), (M0, q0) in zip(after.alternatives, before.alternatives, strict=True):
                np.testing.assert_array_equal(M, M0)
                assert q == pytest.approx(q0)
            continue
        assert after.reranked
        np.testing.assert_array_equal(after.lcag, event.best(np.inf))
        p = [q for _, q in after.alternatives]
        assert p == sorted(p, reverse=True)
        assert sum(p) <= 1 + 1e-9
        np.testing.assert_array_equal(after.alternatives[0][0], after.lcag)
        assert after.probability == p[0]
    again = reco.reconstruct(x, mask, top_k=3, grammar=False)  # the full method alone
    for before, after in zip(plain, again, strict=True):
        np.testing.assert_array_equal(after.lcag, before.lcag)


def test_logistic_calibration_recovers_known_parameters():
    from lcag.evidence.grammar_rerank import _fit_logistic

    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 2.0, 20_000)
    y = rng.random(20_000) < 1.0 / (1.0 + np.exp(-(1.7 * x - 0.4)))
    a, b = _fit_logistic(x, y)
    assert abs(a - 1.7) < 0.1
    assert abs(b + 0.4) < 0.1
    assert _fit_logistic(x[:5], np.ones(5, dtype=bool)) == (1.0, 0.0)  # one outcome only


def test_candidate_probabilities_never_sum_above_one(tiny_data):
    from lcag.evidence.grammar_candidates import Candidates
    from lcag.evidence.grammar_rerank import GrammarRerank

    rerank = GrammarRerank(DecayGrammar.from_dataset(tiny_data), 1.0, 1.0, slope=0.3, offset=2.0)
    found = Candidates(
        np.zeros((6, 3, 3), dtype=np.int64), np.zeros(6), np.arange(6.0), np.zeros(6, bool)
    )
    p = rerank.probabilities(found)
    assert p.sum() <= 1 + 1e-12
    assert np.all(np.diff(p) > 0)


def test_a_malformed_stored_rerank_is_named(checkpoint, tmp_path):
    import torch

    from lcag.errors import CheckpointError
    from lcag.module import LCAGModule

    state = torch.load(checkpoint, weights_only=True)
    state["grammar_rerank"] = {"weight": 1.0}  # no grammar, no calibration
    path = tmp_path / "bad.ckpt"
    torch.save(state, path)
    for load in (Reconstructor.from_checkpoint, LCAGModule.from_checkpoint):
        with pytest.raises(CheckpointError, match=r"bad\.ckpt: grammar_rerank is malformed"):
            load(path)
