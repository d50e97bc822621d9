"""Leaf species learnt from leaf masses, subset composition codes, and a mass prior that counts
(composition, mass bin) pairs: it separates equal-mass subsets of other species, and falls back
to the mass alone for compositions it has not seen."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lcag.data_gen.kinematics import boost
from lcag.evidence import MassPrior
from lcag.evidence.composition import MAX_SPECIES, Species, leaf_masses
from lcag.evidence.node_evidence import NodeEvidence
from lcag.matrix import tree_to_lcag
from lcag.tree import DecayTree

TWO_PAIRS = tree_to_lcag(DecayTree.from_nested(((0, 1), (2, 3))))


def on_shell(p: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """4-vectors ``(n, 4)`` of 3-momenta ``p (n, 3)`` and masses ``(n,)``."""
    return np.concatenate([p, np.sqrt((p**2).sum(-1) + mass**2)[:, None]], axis=1)


def two_body(mass: float, daughter: float, p: np.ndarray, rng: np.random.Generator):
    """A particle of ``mass`` and momentum ``p (3,)`` decaying into two of mass ``daughter``:
    ``(2, 4)`` lab 4-momenta."""
    k = rng.normal(size=3)
    k *= np.sqrt((mass / 2) ** 2 - daughter**2) / np.linalg.norm(k)
    rest = on_shell(np.stack([k, -k]), np.array([daughter, daughter]))
    return boost(rest, on_shell(p[None], np.array([mass])), np.array(mass))


def same_mass_two_species(n_events: int, seed: int = 0) -> list[dict]:
    """Two particles of mass 10 per event: one decays into two leaves of mass 1 (species a),
    the other into two of mass 3 (species b); pairs (0, 1) and (2, 3)."""
    rng = np.random.default_rng(seed)
    events = []
    for _ in range(n_events):
        p = rng.normal(scale=5.0, size=3)
        leaves = np.concatenate([two_body(10.0, 1.0, p, rng), two_body(10.0, 3.0, -p, rng)])
        events.append({"x": leaves, "target": TWO_PAIRS})
    return events


@given(
    st.lists(st.sampled_from([0.139, 0.494, 1.0, 2.0, 5.0, 12.0]), min_size=1, max_size=6),
    st.integers(0, 2**31),
)
@settings(max_examples=30, deadline=None)
def test_species_are_the_distinct_leaf_masses(masses, seed):
    rng = np.random.default_rng(seed)
    leaves = rng.choice(masses, size=500)
    p = rng.normal(scale=20.0, size=(500, 3))
    x = on_shell(p, leaves).astype(np.float32)  # as shards store them
    species = Species.fit(leaf_masses(x))
    assert species.known
    np.testing.assert_allclose(np.expm1(species.log_masses), sorted(set(leaves)), rtol=1e-3)
    index = species.of_leaves(x[None], np.ones((1, 500), dtype=bool))[0]
    np.testing.assert_allclose(np.expm1(species.log_masses)[index], leaves, rtol=1e-3)


def test_continuous_leaf_masses_are_no_species():
    rng = np.random.default_rng(0)
    assert not Species.fit(rng.uniform(0.0, 10.0, size=5000)).known
    assert not Species.fit(np.zeros(0)).known
    assert len(Species.fit(np.repeat(np.arange(1.0, MAX_SPECIES + 1), 10)).log_masses) == 32


@given(st.lists(st.integers(0, 3), min_size=2, max_size=7))
@settings(max_examples=40, deadline=None)
def test_composition_codes_depend_on_species_counts_alone(kinds):
    species = Species.fit(np.array([1.0, 2.0, 3.0, 5.0]))
    n = len(kinds)
    x = on_shell(np.ones((n, 3)), np.array([1.0, 2.0, 3.0, 5.0])[kinds])[None]
    codes = species.subset_codes(x, np.ones((1, n), dtype=bool))[0]
    counts = [tuple(np.bincount(np.asarray(kinds)[[i for i in range(n) if b >> i & 1]],
                                minlength=4)) for b in range(1 << n)]  # fmt: skip
    for a in range(1 << n):
        for b in range(a):
            assert (codes[a] == codes[b]) == (counts[a] == counts[b])
    # padded leaves add nothing
    padded = species.subset_codes(x, np.array([[True] * (n - 1) + [False]]))[0]
    assert padded[(1 << n) - 1] == codes[(1 << (n - 1)) - 1]


def test_compositions_separate_equal_masses_of_other_species():
    events = same_mass_two_species(600)
    mass_only = MassPrior.fit(events, n_bins=40, composition=False)
    prior = MassPrior.fit(events, n_bins=40)
    assert len(prior.species.log_masses) == 2
    assert len(prior.joint_keys) > 0
    test = same_mass_two_species(200, seed=1)
    x = np.stack([e["x"] for e in test])
    mask = np.ones(x.shape[:2], dtype=bool)
    # the nodes {0, 1} (a a) and {2, 3} (b b) score higher than from mass alone; the non-nodes
    # {0, 2}, {1, 3}, ... (a b, never a node in training) keep the mass-only score: compositions
    # only raise scores, since an unseen topology may make (a b) a particle
    with_species, alone = prior.node_scores(x, mask), mass_only.node_scores(x, mask)
    nodes, others = [3, 12], [5, 10, 6, 9]
    assert (with_species >= alone).all()
    assert with_species[:, nodes].mean() > alone[:, nodes].mean() + 0.1
    np.testing.assert_array_equal(with_species[:, others], alone[:, others])


def test_unseen_compositions_keep_the_mass_only_score():
    prior = MassPrior.fit(same_mass_two_species(600), n_bins=40)
    mass_only = MassPrior.fit(same_mass_two_species(600), n_bins=40, composition=False)
    rng = np.random.default_rng(2)
    x = np.concatenate([two_body(10.0, 1.0, np.zeros(3), rng), two_body(10.0, 1.0, np.zeros(3),
                        rng)])[None]  # fmt: skip
    x[0, 2:] = on_shell(x[0, 2:, :3], np.array([7.0, 7.0]))  # a species never seen
    mask = np.ones((1, 4), dtype=bool)
    unseen = [b for b in range(16) if b & 0b1100 and bin(b).count("1") >= 2 and b != 15]
    np.testing.assert_array_equal(
        prior.node_scores(x, mask)[:, unseen], mass_only.node_scores(x, mask)[:, unseen]
    )


def test_composition_tables_travel_in_the_state_dict():
    prior = MassPrior.fit(same_mass_two_species(300), n_bins=40)
    evidence = NodeEvidence("mass_prior")
    evidence.set_prior(prior)
    fresh = NodeEvidence("mass_prior")
    fresh.load_state_dict(evidence.state_dict())
    x = torch.tensor(np.stack([e["x"] for e in same_mass_two_species(5, seed=3)]))
    mask = torch.ones(5, 4, dtype=torch.bool)
    np.testing.assert_array_equal(fresh.prior_scores(x, mask), evidence.prior_scores(x, mask))
    assert len(fresh.mass_prior.joint_keys) == len(prior.joint_keys)
