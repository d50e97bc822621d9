"""Tree probabilities: the report's full method, its calibration figure and the ECE math."""

from __future__ import annotations

import numpy as np
import pytest

from lcag.evaluate import calibration, ece_noise_floor, evaluate


def test_ece_of_known_bins():
    # bin [0.1, 0.2): probability 0.15, 1 of 4 right; bin [0.9, 1.0]: 0.95, 4 of 4 right
    probability = np.array([0.15] * 4 + [0.95] * 4)
    perfect = np.array([1, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    result = calibration(probability, perfect)
    assert [b["events"] for b in result["bins"]] == [4, 4]
    assert result["ece"] == pytest.approx(0.5 * abs(0.25 - 0.15) + 0.5 * abs(1.0 - 0.95))


def test_unknown_probabilities_are_left_out():
    result = calibration(np.array([np.nan, 1.0]), np.array([False, True]))
    assert result["events"] == 1
    assert result["ece"] == pytest.approx(0.0)


def test_noise_floor_is_the_chance_error_of_calibrated_trees():
    # certain trees: no chance error; 100 trees at 0.5 in one bin: E|Binomial(100, 1/2) / 100
    # - 1/2| = 0.0398 exactly
    assert ece_noise_floor(np.array([0.0] * 50 + [1.0] * 50)) == 0.0
    assert ece_noise_floor(np.full(100, 0.5)) == pytest.approx(0.0398, abs=0.005)
    # it shrinks as 1 / sqrt(events), and calibration() reports it
    assert ece_noise_floor(np.full(10_000, 0.5)) < 0.006
    result = calibration(np.full(100, 0.5), np.arange(100) % 2 == 0)
    assert result["ece"] == pytest.approx(0.0)
    assert result["ece_noise"] == pytest.approx(ece_noise_floor(np.full(100, 0.5)))


def test_report_holds_the_full_method_and_its_reliability(checkpoint, tiny_data, tmp_path):
    report = evaluate(checkpoint, tiny_data, ["test"], tmp_path, max_events=120)
    known = report["splits"]["test"]
    assert set(known["overall"]) == {"argmax", "decoded", "nodes", "full", "grammar", "baseline"}
    assert known["calibration"]["events"] == 120
    assert 0.0 <= known["calibration"]["ece"] <= 1.0
    assert (tmp_path / "reliability.png").stat().st_size > 0
    assert "expected calibration error" in (tmp_path / "report.md").read_text()


def test_temperature_maximises_the_true_trees_likelihood():
    from lcag.evidence.calibration import fit_temperature, tree_log_likelihood
    from lcag.matrix import tree_to_lcag
    from lcag.tree import DecayTree

    truth = tree_to_lcag(DecayTree.from_nested(((0, 1), (2, (3, 4)))))
    other = tree_to_lcag(DecayTree.from_nested(((0, 2), (1, (3, 4)))))
    # sure of a tree, and wrong about it in 12 of 40 events
    favoured = np.stack([other if k < 12 else truth for k in range(40)])
    probs = np.full((40, 5, 5, 4), 1e-3)
    np.put_along_axis(probs, favoured[..., None], 1.0, axis=-1)
    groups = [(probs, np.ones((40, 5), dtype=bool), None, np.broadcast_to(truth, (40, 5, 5)))]
    t = fit_temperature(groups)
    assert t > 1.5  # sure but often wrong: the probabilities must soften
    best = tree_log_likelihood(groups, t)
    for other in (1.0, t * 1.3, t / 1.3):
        assert best >= tree_log_likelihood(groups, other)


def test_known_and_unseen_topologies_get_their_own_temperatures():
    """Events whose decoded tree is of a training topology are right; the others are as sure
    and wrong in 30 of 60: only the second row softens, and the rows follow each event."""
    from lcag.evidence.calibration import fit_known_and_unseen, temperatures_for
    from lcag.matrix import tree_to_lcag
    from lcag.tree import DecayTree

    truth = tree_to_lcag(DecayTree.from_nested(((0, 1), (2, (3, 4)))))
    other = tree_to_lcag(DecayTree.from_nested(((0, 2), (1, (3, 4)))))
    favoured = np.stack([other if 60 <= k < 90 else truth for k in range(120)])
    probs = np.full((120, 5, 5, 4), 1e-2)
    np.put_along_axis(probs, favoured[..., None], 1.0, axis=-1)
    group = (probs, np.ones((120, 5), dtype=bool), None, np.broadcast_to(truth, (120, 5, 5)))
    known = np.arange(120) < 60
    table = fit_known_and_unseen([group], [known])
    assert table.shape == (2, 11)
    assert table[1, 5] > 1.5 * table[0, 5]  # sure but often wrong: softened
    assert table[0, 5] <= 1.0  # sure and right: sharpened, or left
    picked = temperatures_for(table, np.array([5, 5, 12]), np.array([True, False, False]))
    np.testing.assert_array_equal(picked, [table[0, 5], table[1, 5], table[1, 10]])


def test_calibration_is_written_into_the_checkpoint(checkpoint, tiny_data, tmp_path):
    import shutil

    from lcag import Reconstructor
    from lcag.callbacks import calibrate_checkpoint
    from lcag.data import LCAGDataset

    path = tmp_path / "model.ckpt"
    shutil.copy(checkpoint, path)
    temperature = calibrate_checkpoint(path, tiny_data, max_events=200, grammar_events=100)
    assert temperature.shape == (2, 11)  # trees of training topologies, and others
    from lcag.module import LCAGModule

    rerank = LCAGModule.from_checkpoint(path).grammar_rerank  # the decay grammar, learnt
    assert rerank is not None
    assert len(rerank.grammar.types) > 0
    assert Reconstructor.from_checkpoint(path).rerank.weight == rerank.weight
    from lcag.export.info import format_facts, read_facts

    assert "decay grammar" in format_facts(read_facts(path))  # lcag info says so
    assert np.any(temperature != 1.0)
    before, after = Reconstructor.from_checkpoint(checkpoint), Reconstructor.from_checkpoint(path)
    np.testing.assert_allclose(after.temperature, temperature)
    events = [e["x"] for e in LCAGDataset(tiny_data, "test").__getitems__(range(0, 600, 30))]
    for reco in (before, after):  # pair scores alone: node evidence can make every tree certain
        reco.evidence.weight.fill_(0.0)
    old, new = before.reconstruct(events), after.reconstruct(events, grammar=False)
    for a, b in zip(old, new, strict=True):
        np.testing.assert_array_equal(a.lcag, b.lcag)  # the trees do not change
    assert any(abs(a.probability - b.probability) > 1e-6 for a, b in zip(old, new, strict=True))
    unseen_split = LCAGDataset(tiny_data, "test_unknown")
    unseen = [e["x"] for e in unseen_split.__getitems__(range(0, 200, 10))]
    flags = [r.known_topology for r in after.reconstruct(events + unseen)]
    assert set(flags) <= {True, False}
    assert any(flags[: len(events)])  # trees of the training topologies are recognised


def test_a_sharpening_temperature_never_lowers_the_decoded_trees_probability(checkpoint):
    """Below t = 1 the likeliest tree gets likelier. Pair probabilities of at least 0.1 stay
    above the decoder's 1e-12 floor at t = 0.1, so the tempered model is exactly the scores
    over t and this holds up to rounding, whatever the machine."""
    from lcag import Reconstructor
    from lcag.decode import decode, top_k

    rng = np.random.default_rng(5)
    probs = 0.1 + 0.7 * rng.dirichlet(np.ones(3), size=(40, 4, 4))  # (N, L, L, C), >= 0.1
    probs = (probs + probs.transpose(0, 2, 1, 3)) / 2  # symmetric pairs
    mask = np.ones((40, 4), dtype=bool)
    decoded = decode(probs, mask)
    best = top_k(probs, 3, mask)
    reco = Reconstructor.from_checkpoint(checkpoint)

    def probabilities(t: float) -> tuple[np.ndarray, list[list[float]]]:
        reco.temperature = np.full((2, 11), t)
        alternatives = [
            [float(reco.tree_probability(M[None], probs[k : k + 1], mask[:1], None)[0])
             for M, _ in best[k]]
            for k in range(len(probs))
        ]  # fmt: skip
        return reco.tree_probability(decoded, probs, mask, None), alternatives

    plain, plain_alternatives = probabilities(1.0)
    sharp, sharp_alternatives = probabilities(0.1)
    for k in range(len(probs)):
        a, b = plain[k], sharp[k]
        assert b >= a - 1e-9
        assert sharp_alternatives[k][0] == pytest.approx(b)
        assert sum(sharp_alternatives[k]) <= 1 + 1e-9
        odds = plain_alternatives[k]
        if len(odds) > 1 and odds[0] >= 2 * odds[1]:
            assert b > 0.9  # odds of 2 or more to every other of the 26 trees: 1024 at t = 0.1


def test_tempered_probability_of_a_tree_the_node_scores_carry(checkpoint):
    """Node scores can carry a tree whose pairs the pair scores doubt: at t = 0.1 its doubted
    pairs (probability 1e-3, 1e-30 tempered) must count as the log-partition counts them."""
    from lcag import Reconstructor
    from lcag.matrix import tree_to_lcag
    from lcag.tree import DecayTree

    truth = tree_to_lcag(DecayTree.from_nested(((0, 1), (2, 3))))[None]
    probs = np.full((1, 4, 4, 3), 0.5)
    probs[0, :, :, 0] = 1e-3  # class 0 (the diagonal) never matters
    probs[0, 0, 1, :] = probs[0, 1, 0, :] = [1e-3, 1e-3, 1 - 2e-3]  # doubts (0, 1) as a pair
    nodes = np.zeros((1, 16))
    nodes[0, [0b0011, 0b1100]] = 40.0  # sure of {0, 1} and {2, 3}
    reco = Reconstructor.from_checkpoint(checkpoint)
    mask = np.ones((1, 4), dtype=bool)
    reco.temperature = np.ones((2, 11))
    at_one = reco.tree_probability(truth, probs, mask, nodes)[0]
    reco.temperature = np.full((2, 11), 0.1)
    sharp = reco.tree_probability(truth, probs, mask, nodes)[0]
    assert at_one > 0.99
    assert sharp >= at_one - 1e-12  # both 1 up to rounding; before the fix, 1e-18
