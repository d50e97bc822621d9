"""The combinatorial baseline with leaves outside the tree (background) and with per-leaf
momentum covariances: the tree's leaf set chosen exactly, and the fit with a covariance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_baseline import CASCADE, cascades

from lcag import tree_to_lcag
from lcag.baselines import CombinatorialBaseline
from lcag.baselines.combinatorial import _best_sets
from lcag.baselines.masses import kinematic_fit, members, relative_covariance, subset_masses
from lcag.errors import InvalidInputError

TOTAL = [0.0, 0.0, 0.0, 100.0]  # CASCADE events: a mother of mass 100 at rest


def _brute_force(gain: np.ndarray, root: np.ndarray, penalty: float, n: int) -> float:
    """The best score over every root set and every laminar family of sets inside it."""
    best = -np.inf
    for R in range(1, 1 << n):
        size = bin(R).count("1")
        if size < 2:
            continue
        inside = [S for S in range(1, R) if S & R == S and 2 <= bin(S).count("1") < size]
        for k in range(len(inside) + 1):
            for family in itertools.combinations(inside, k):
                laminar = all(a & b in (0, a, b) for a, b in itertools.combinations(family, 2))
                if laminar:
                    value = root[R] + sum(gain[S] for S in family) + penalty * (n - size)
                    best = max(best, value)
    return best


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 4), st.floats(-3, 1), st.integers(0, 2**32 - 1))
def test_root_and_family_are_the_brute_force_optimum(n, penalty, seed):
    rng = np.random.default_rng(seed)
    gain = rng.normal(size=1 << n)
    root = rng.normal(scale=2.0, size=1 << n)
    root[[S for S in range(1 << n) if bin(S).count("1") < 2]] = -np.inf
    chosen_root, family = _best_sets(gain, root, penalty)
    size = bin(chosen_root).count("1")
    value = root[chosen_root] + sum(gain[S] for S in family) + penalty * (n - size)
    assert all(S & chosen_root == S for S in family)
    assert value == pytest.approx(_brute_force(gain, root, penalty, n), abs=1e-9)


def _with_background(events: np.ndarray, n_extra: int, seed: int) -> list[np.ndarray]:
    """Each event with ``n_extra`` random massless leaves of 1-10 GeV inserted at random."""
    rng = np.random.default_rng(seed)
    out = []
    for event in events:
        direction = rng.normal(size=(n_extra, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        p = direction * rng.uniform(1, 10, size=(n_extra, 1))
        extra = np.column_stack([p, np.linalg.norm(p, axis=1)])
        out.append(rng.permutation(np.concatenate([event, extra])))
    return out


def _truth(event: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The LCAG truth of a shuffled event: CASCADE's on the leaves found in ``reference``,
    class 0 for the others."""
    lcag = tree_to_lcag(CASCADE)
    where = [next((j for j, r in enumerate(reference) if np.array_equal(r, leaf)), -1)
             for leaf in event]  # fmt: skip
    matrix = np.zeros((len(event), len(event)), dtype=np.int64)
    for a, b in itertools.product(range(len(event)), repeat=2):
        if a != b and where[a] >= 0 and where[b] >= 0:
            matrix[a, b] = lcag[where[a], where[b]]
    return matrix


@pytest.mark.parametrize("by", ["total_momentum", "root_masses"])
def test_background_leaves_are_set_aside(by):
    events = cascades(60, seed=3, resolution=0.002)
    shuffled = _with_background(events, 2, seed=4)
    truth = [_truth(s, e) for s, e in zip(shuffled, events, strict=True)]
    how = {"total_momentum": TOTAL} if by == "total_momentum" else {"root_masses": [100.0]}
    baseline = CombinatorialBaseline([50.0, 20.0], resolution=0.002, background=True, **how)
    everything = CombinatorialBaseline([50.0, 20.0], resolution=0.002)
    assert everything.perfect_rate(shuffled, truth) == 0.0  # a tree of every leaf is wrong
    assert baseline.perfect_rate(shuffled, truth) > 0.95
    found = baseline.lcag(shuffled)
    right = [np.array_equal(f, t) for f, t in zip(found, truth, strict=True)]
    assert np.mean(right) == baseline.perfect_rate(shuffled, truth)
    trees = baseline.reconstruct(shuffled[:1], return_leaves=True)
    tree, leaves = trees[0]
    assert tree.n_leaves == 4
    assert len(leaves) == 4
    assert (found[0][leaves][:, leaves] > 0).sum() == 12


def test_tuning_with_background_chooses_the_penalty_per_leaf_set_aside():
    events = cascades(40, seed=5, resolution=0.002)
    shuffled = _with_background(events, 1, seed=6)
    truth = [_truth(s, e) for s, e in zip(shuffled, events, strict=True)]
    baseline = CombinatorialBaseline(
        [50.0, 20.0], resolution=0.002, background=True, total_momentum=TOTAL,
        background_penalty=1e7,  # setting leaves aside pays: every tree too small
    )  # fmt: skip
    assert baseline.perfect_rate(shuffled, truth) == 0.0
    tuned = baseline.tune(shuffled, truth, background_penalties=(1e7, 0.0))
    assert tuned.background_penalty == 0.0
    assert tuned.perfect_rate(shuffled, truth) >= 0.9


def test_background_needs_a_root_description():
    with pytest.raises(InvalidInputError, match="root_masses or total_momentum"):
        CombinatorialBaseline([50.0], background=True)


def test_a_per_leaf_covariance_gives_the_relative_resolution_results():
    event = cascades(1, seed=7, resolution=0.01)[0]
    covariance = relative_covariance(event, 0.01)
    total = np.array(TOTAL)
    for fit in (None, total):
        a = subset_masses(event, 0.01, fit)
        b = subset_masses(event, 0.0, fit, covariance)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
        # subsets of two or more leaves: the closed form and the propagation agree to 1e-11
        # here; a single leaf's sigma (never used: no node) is 0 propagated and cancellation
        # noise (~1e-7) in the closed form, so it is only bounded
        several = members(4).sum(1) >= 2
        np.testing.assert_allclose(a[1][several], b[1][several], rtol=1e-9)
        assert np.abs(a[1][~several] - b[1][~several]).max() < 1e-4
    plain = kinematic_fit(event, 0.01, total)
    general = kinematic_fit(event, 0.0, total, covariance)
    assert plain is not None
    assert general is not None
    np.testing.assert_allclose(plain[0], general[0], rtol=1e-12)
    np.testing.assert_allclose(plain[1], general[1], rtol=1e-9, atol=1e-15)
