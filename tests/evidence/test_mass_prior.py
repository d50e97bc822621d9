"""The mass prior: log-odds per log-mass bin learnt from training trees, with the number of bins
chosen on held-out events, and checkpoints that keep whatever number of bins was chosen."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcag.errors import ConfigError
from lcag.evidence import MassPrior
from lcag.evidence.mass_prior import AUTO_BINS
from lcag.evidence.node_evidence import NodeEvidence
from lcag.matrix import tree_to_lcag
from lcag.tree import DecayTree

PAIRS = tree_to_lcag(DecayTree.from_nested(((0, 1), (2, 3))))


def boost(p: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """The 4-vectors ``p (n, 4)`` seen in a frame moving with velocity ``-beta``."""
    b2 = beta @ beta
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = p[:, :3] @ beta
    space = p[:, :3] + ((gamma - 1.0) * bp / b2 + gamma * p[:, 3])[:, None] * beta
    return np.concatenate([space, (gamma * (p[:, 3] + bp))[:, None]], axis=1)


def two_resonances(n_events: int, smear: float, seed: int = 0) -> list[dict]:
    """Events of two back-to-back resonances (masses 10 and 20, relative spread ``smear``), each
    decaying into two massless leaves; leaves (0, 1) and (2, 3) are the true pairs."""
    rng = np.random.default_rng(seed)
    events = []
    for _ in range(n_events):
        direction = rng.normal(size=3)
        velocity = 0.6 * direction / np.linalg.norm(direction)
        leaves = []
        for mass, beta in ((10.0, velocity), (20.0, -velocity)):
            m = mass * (1.0 + smear * rng.normal())
            k = rng.normal(size=3)
            k *= m / 2 / np.linalg.norm(k)
            rest = np.array([np.r_[k, m / 2], np.r_[-k, m / 2]])
            leaves.append(boost(rest, beta))
        events.append({"x": np.concatenate(leaves), "target": PAIRS})
    return events


def test_auto_bins_are_finer_for_exact_masses_than_for_smeared_ones():
    exact = MassPrior.fit(two_resonances(400, 0.0), n_bins="auto")
    smeared = MassPrior.fit(two_resonances(400, 0.05), n_bins="auto")
    n_exact, n_smeared = len(exact.edges) - 1, len(smeared.edges) - 1
    assert n_exact in AUTO_BINS
    assert n_smeared in AUTO_BINS
    assert n_exact > n_smeared


def test_the_true_pairs_score_above_the_wrong_ones():
    prior = MassPrior.fit(two_resonances(400, 0.01), n_bins="auto")
    test = two_resonances(50, 0.01, seed=1)
    x = np.stack([e["x"] for e in test])
    scores = prior.node_scores(x, np.ones((50, 4), dtype=bool))
    true = np.minimum(scores[:, 0b0011], scores[:, 0b1100])
    wrong = np.maximum(scores[:, 0b0101], scores[:, 0b1010])
    assert np.mean(true > wrong) > 0.9


def test_a_prior_of_any_bin_count_travels_in_a_state_dict():
    prior = MassPrior.fit(two_resonances(100, 0.01), n_bins=37)
    evidence = NodeEvidence("mass_prior")
    evidence.set_prior(prior)
    loaded = NodeEvidence("mass_prior")  # built with the default bins
    loaded.load_state_dict(evidence.state_dict())
    assert loaded.mass_prior.log_odds.shape == (1, 37)
    x = torch.tensor(np.stack([e["x"] for e in two_resonances(3, 0.01, seed=2)]))
    mask = torch.ones(3, 4, dtype=torch.bool)
    assert np.array_equal(loaded.scores(x, mask), evidence.scores(x, mask))


def test_a_bad_bin_count_is_named():
    with pytest.raises(
        ConfigError, match="mass_prior_bins: expected 'auto' or an integer >= 1, got 0"
    ):
        MassPrior.fit(two_resonances(10, 0.0), n_bins=0)
