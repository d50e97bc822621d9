"""Calibrated tree probabilities: a temperature of the tree score per leaf count, fitted on
validation.

A tree's probability is ``exp(s(T) / t - log Z_t)`` with ``s`` the decoder's score (pair
log-probabilities plus weighted node scores) and ``log Z_t`` the log-partition of the scores
divided by ``t``. Dividing by ``t`` changes no ranking, so the decoded tree and the top-k
order stay as they are; only the probabilities move. ``t`` minimises the mean negative
log-likelihood of the true trees on validation events (temperature scaling), found by a
golden-section search over ``log t`` (the likelihood is convex in ``1 / t``).

Temperatures come in two rows (:func:`fit_known_and_unseen`): one for events whose decoded
tree is of a training topology (:class:`lcag.evidence.TopologyCatalogue`), where a trained
model is mostly right, one for the others, where its pair scores are often confidently wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lcag.decode import EXACT_MAX_LEAVES, log_partition, tree_score
from lcag.evidence.topology_prior import bonus_log_partition, known_scores

__all__ = [
    "MIN_EVENTS_PER_SIZE",
    "fit_known_and_unseen",
    "fit_temperature",
    "fit_temperatures",
    "golden_max",
    "labelled_batches",
    "scaled",
    "temperatures_for",
    "tree_log_likelihood",
]

MIN_EVENTS_PER_SIZE = 50  # fewer events of a leaf count: that count takes the pooled fit

T_BOUNDS = (0.1, 30.0)


def scaled(
    probs: np.ndarray, nodes: np.ndarray | None, temperature: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pair probabilities and node scores whose tree scores are the originals over ``t``:
    ``(probs ** (1 / t), nodes / t)``; shapes as given, ``(N, L, L, C)`` and ``(N, 2^L)``;
    ``t`` one number or one per event ``(N,)``."""
    t = np.asarray(temperature, dtype=np.float64)
    if np.all(t == 1.0):
        return probs, nodes
    beta = 1.0 / t
    hot = np.power(probs, beta.reshape(-1, 1, 1, 1) if beta.ndim else beta)
    if nodes is None:
        return hot, None
    return hot, nodes * (beta.reshape(-1, 1) if beta.ndim else beta)


def temperatures_for(
    table: np.ndarray, n_leaves: np.ndarray, known: np.ndarray | None = None
) -> np.ndarray:
    """Per-event temperatures ``(N,)`` from a per-leaf-count table ``(M,)`` or ``(2, M)``
    (entry ``n`` for events of ``n`` leaves, larger events take the last entry; row 0 for
    events whose tree is of a known topology, row 1 for the others, by ``known (N,)`` bool,
    all known when ``None``)."""
    table = np.atleast_2d(table)
    column = np.minimum(n_leaves, table.shape[1] - 1)
    row = np.zeros_like(column) if known is None else np.where(known, 0, table.shape[0] - 1)
    return table[row, column]


def tree_log_likelihood(
    groups: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]],
    temperature: float,
) -> float:
    """Mean log-probability of the true trees at temperature ``t``.

    Args:
        groups: ``(probs (N, L, L, C), mask (N, L), nodes (N, 2^L) | None, truth (N, L, L))``
            per batch of events, at most ``EXACT_MAX_LEAVES`` leaves; decoded under the
            topology prior (:mod:`lcag.evidence.topology_prior`), three more: the known
            trees of each event (``(N,)`` object array of ``(A, n, n)``), their bonus
            ``(N,)`` and the true tree's bonus ``(N,)`` (0 where it is of no training
            topology); the bonus is tempered with the scores.
        temperature: ``t > 0``.
    """
    total, count = 0.0, 0
    for probs, mask, nodes, truth, *prior in groups:
        p, n = scaled(probs, nodes, temperature)
        log_z = log_partition(p, mask, node_scores=n)
        score = tree_score(truth, p, mask, node_scores=n)
        if prior:
            trees, bonus, truth_bonus = prior
            values = known_scores(list(trees), p, mask, n)
            log_z = bonus_log_partition(log_z, values, bonus / temperature)
            score = score + truth_bonus / temperature
        total += float(np.sum(score - log_z))
        count += len(probs)
    return total / max(count, 1)


def fit_temperature(
    groups: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]],
    iterations: int = 24,
) -> float:
    """The temperature maximising :func:`tree_log_likelihood` within ``T_BOUNDS`` (1 when
    there are no events)."""
    groups = [g for g in groups if len(g[0]) and g[1].shape[1] <= EXACT_MAX_LEAVES]
    if not groups:
        return 1.0
    low, high = (math.log(b) for b in T_BOUNDS)
    best = golden_max(lambda log_t: tree_log_likelihood(groups, math.exp(log_t)), low, high,
                      iterations)  # fmt: skip
    return float(math.exp(best))


def golden_max(f: Callable[[float], float], low: float, high: float, iterations: int) -> float:
    """The argument in ``[low, high]`` maximising a unimodal ``f``, by golden-section search
    (``iterations`` narrowing steps; the middle of the last bracket)."""
    golden = (math.sqrt(5) - 1) / 2
    a, b = high - golden * (high - low), low + golden * (high - low)
    fa, fb = f(a), f(b)
    for _ in range(iterations):
        if fa >= fb:
            high, b, fb = b, a, fa
            a = high - golden * (high - low)
            fa = f(a)
        else:
            low, a, fa = a, b, fb
            b = low + golden * (high - low)
            fb = f(b)
    return (low + high) / 2


def fit_temperatures(
    groups: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]],
    table_size: int = EXACT_MAX_LEAVES + 1,
) -> np.ndarray:
    """One temperature per leaf count, ``(table_size,)``: each count with at least
    ``MIN_EVENTS_PER_SIZE`` events gets its own fit, the others the fit over all events
    (groups hold events of one leaf count each, unpadded)."""
    pooled = fit_temperature(groups)
    table = np.full(table_size, pooled)
    for n in {g[1].shape[1] for g in groups}:
        mine = [g for g in groups if g[1].shape[1] == n]
        # two leaves have one tree only: their likelihood does not depend on t
        if 2 < n < table_size and sum(len(g[0]) for g in mine) >= MIN_EVENTS_PER_SIZE:
            table[n] = fit_temperature(mine)
    return table


def fit_known_and_unseen(
    groups: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]],
    known: list[np.ndarray],
    table_size: int = EXACT_MAX_LEAVES + 1,
) -> np.ndarray:
    """Temperatures ``(2, table_size)``: row 0 fitted (:func:`fit_temperatures`) on the
    events whose decoded tree is of a training topology (``known``, one ``(N,)`` bool per
    group), row 1 on the others; a row of fewer than ``MIN_EVENTS_PER_SIZE`` events takes
    the fit over all events."""
    rows = []
    everything = None
    for flag in (True, False):
        mine = []
        for group, k in zip(groups, known, strict=True):
            chosen = k == flag
            if chosen.any():
                mine.append(tuple(None if a is None else a[chosen] for a in group))
        if sum(len(g[0]) for g in mine) >= MIN_EVENTS_PER_SIZE:
            rows.append(fit_temperatures(mine, table_size))
        else:
            if everything is None:
                everything = fit_temperatures(groups, table_size)
            rows.append(everything)
    return np.stack(rows)


def events_by_size(events: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Events (dicts with ``x`` and ``target``) grouped by leaf count, up to
    ``EXACT_MAX_LEAVES`` leaves."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        n = len(event["x"])
        if 2 <= n <= EXACT_MAX_LEAVES:
            groups.setdefault(n, []).append(event)
    return groups


def labelled_batches(
    events: list[dict[str, Any]], batch_size: int = 1024
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Events with known trees as batches of one leaf count (up to ``EXACT_MAX_LEAVES``):
    ``(n, x (B, n, F) float32, mask (B, n), truth (B, n, n) int64 with a zero diagonal)``."""
    for n, members in sorted(events_by_size(events).items()):
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            x = np.stack([e["x"] for e in chunk]).astype(np.float32)
            truth = np.stack([e["target"] for e in chunk]).astype(np.int64)
            truth[:, np.arange(n), np.arange(n)] = 0
            yield n, x, np.ones((len(chunk), n), dtype=bool), truth
