"""What a checkpoint keeps to rerank trees with a decay grammar: :class:`GrammarRerank`.

The candidates and the choice among them are :mod:`lcag.evidence.grammar_candidates`'s (the
full method's best trees, the training-topology trees, the grammar's proposals; the kept one
maximises ``score + w * grammar``). :class:`GrammarRerank` holds the grammar, ``w_other``
(``w_known`` is 0: trees of training topologies stay as the full method decodes them), and
the calibration of the reranked trees' probabilities. The grammar's likelihood sums over no
tree space that the decoder can enumerate, so a reranked tree's probability starts from the
candidates:
``q = softmax((score + w * grammar) / t)``, ``t`` fitted (maximum likelihood) on the
validation events whose true tree is a candidate, then mapped by logistic (Platt) scaling,

    P(T) = sigmoid(a * logit(q_T) + b),

``a, b`` fitted on every validation event reranked (the kept tree right or not); the true
tree is often no candidate (for about a third of the events reranked on the ``realistic.yaml``
benchmark: :attr:`GrammarRerank.recall`), which ``b`` absorbs.
The alternatives of a reranked event are its candidates, best first, with these
probabilities (divided by their sum where it exceeds 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit

from lcag.decode import EXACT_MAX_LEAVES
from lcag.evidence.calibration import golden_max
from lcag.evidence.grammar import DecayGrammar
from lcag.evidence.grammar_candidates import Candidates, batch_candidates

__all__ = ["WEIGHTS", "GrammarRerank", "reranked_events"]

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, math.inf)  # the grammar weights tried on validation


def reranked_events(mask: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: the events a reranking takes, those whose full-method tree is of no
    training topology (``other (N,)``) with 3 to ``EXACT_MAX_LEAVES`` real leaves
    (``mask (N, L)``)."""
    n_leaves = mask.sum(1)
    return np.asarray(other, dtype=bool) & (n_leaves >= 3) & (n_leaves <= EXACT_MAX_LEAVES)


@dataclass
class GrammarRerank:
    """A checkpoint's grammar reranking of events whose full-method tree is of no training
    topology.

    Attributes:
        grammar: the decay grammar learnt from the training topologies.
        weight: the grammar's weight ``w`` (chosen on validation; 0: off).
        temperature: ``t`` of the candidates' softmax.
        slope, offset: ``a, b`` of the logistic map to probabilities.
        k: the model's best trees per event; ``proposals``: the grammar's.
        recall: the share of validation events reranked whose true tree was a candidate
            (what bounds the rerank; for the record).
    """

    grammar: DecayGrammar
    weight: float = 0.0
    temperature: float = 1.0
    slope: float = 1.0
    offset: float = 0.0
    k: int = 5
    proposals: int = 5
    recall: float = math.nan

    def probabilities(self, found: Candidates) -> np.ndarray:
        """``(A,)`` each candidate's calibrated probability (module docstring)."""
        logit = _logit(found.softmax(self.weight, self.temperature))
        p = expit(self.slope * logit + self.offset)
        return p / max(1.0, float(p.sum()))

    def rerank(self, found: Candidates) -> tuple[int, np.ndarray]:
        """The kept candidate's index and every candidate's probability ``(A,)``."""
        return found.index(self.weight), self.probabilities(found)

    def apply(
        self,
        decoded: np.ndarray,
        probs: np.ndarray,
        mask: np.ndarray,
        nodes: np.ndarray | None,
        x: np.ndarray,
        prior: tuple[list[np.ndarray], np.ndarray],
        other: np.ndarray,
        top_k: int = 1,
    ) -> dict[int, tuple[float, list[tuple[np.ndarray, float]]]]:
        """Rerank the :func:`reranked_events`, writing each kept tree into ``decoded``.

        Args:
            decoded: ``(N, L, L)`` the full method's trees, changed in place.
            probs: ``(N, L, L, C)`` pair probabilities; ``mask (N, L)``; ``nodes (N, 2^L)``
                weighted node scores or ``None``; ``x (N, L, F)`` the leaves.
            prior: the topology prior's known trees per event and bonus ``(N,)``.
            other: ``(N,)`` bool, the full-method tree is of no training topology.
            top_k: alternatives to return per reranked event.

        Returns:
            Per reranked event index: the kept tree's probability and the ``top_k`` best
            candidates ``(n, n)`` with theirs (none for ``top_k = 1``); nothing at weight 0.
        """
        if self.weight <= 0:
            return {}
        wanted = reranked_events(mask, other)
        found = batch_candidates(
            probs, mask, nodes, x, prior, wanted, self.grammar, self.k, self.proposals
        )
        out = {}
        for e, candidates in found.items():
            kept, p = self.rerank(candidates)
            real = np.flatnonzero(mask[e])
            decoded[e][np.ix_(real, real)] = candidates.trees[kept]
            order = np.argsort(-p, kind="stable")[:top_k] if top_k > 1 else []
            out[e] = (float(p[kept]), [(candidates.trees[a], float(p[a])) for a in order])
        return out

    @classmethod
    def fit(
        cls,
        grammar: DecayGrammar,
        splits: list[list[tuple[Candidates, np.ndarray]]],
        totals: list[int],
        k: int = 5,
        proposals: int = 5,
    ) -> GrammarRerank:
        """Choose the weight and calibrate on validation events.

        Args:
            grammar: the decay grammar.
            splits: per validation split (``val``, ``val_unknown``), its events whose
                full-method tree is of no training topology, as ``(candidates, whether the
                true tree is each candidate (A,) bool)``.
            totals: each split's number of events (all kinds): the weight maximises the mean
                of the splits' perfect-tree rates, the smallest of equals kept.
            k, proposals: as the candidates were made.
        """

        def rate(w: float) -> float:
            return sum(
                sum(bool(hits[c.index(w)]) for c, hits in events) / max(total, 1)
                for events, total in zip(splits, totals, strict=True)
            ) / max(len(splits), 1)

        base = rate(0.0)
        gains = {w: rate(w) - base for w in WEIGHTS[1:]}
        weight = max(gains, key=lambda w: (gains[w], -w))
        if gains[weight] <= 0:
            return cls(grammar, 0.0, k=k, proposals=proposals)
        events = [e for split in splits for e in split]
        covered = [(c.combined(weight), int(np.argmax(hits))) for c, hits in events if hits.any()]
        temperature = _fit_temperature(covered) if covered else 1.0
        recall = len(covered) / len(events)
        out = cls(grammar, weight, temperature, k=k, proposals=proposals, recall=recall)
        logits, right = [], []
        for c, hits in events:
            kept = c.index(weight)
            logits.append(float(_logit(c.softmax(weight, temperature)[kept])))
            right.append(bool(hits[kept]))
        out.slope, out.offset = _fit_logistic(np.array(logits), np.array(right))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (checkpoints)."""
        return {
            "grammar": self.grammar.to_dict(),
            "weight": float(self.weight) if math.isfinite(self.weight) else 1e300,
            "temperature": float(self.temperature),
            "slope": float(self.slope),
            "offset": float(self.offset),
            "k": int(self.k),
            "proposals": int(self.proposals),
            "recall": float(self.recall),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GrammarRerank:
        weight = float(data["weight"])
        return cls(
            DecayGrammar.from_dict(data["grammar"]),
            math.inf if weight >= 1e299 else weight,
            float(data["temperature"]),
            float(data["slope"]),
            float(data["offset"]),
            int(data["k"]),
            int(data["proposals"]),
            float(data.get("recall", math.nan)),
        )


def _logit(q: np.ndarray | float) -> np.ndarray:
    """``log(q / (1 - q))`` of candidate probabilities, ``q`` kept within ``[1e-12, 1 - 1e-12]``
    (the same in the fit and in use: a softmax that rounds to 0 or 1 stays finite)."""
    q = np.clip(q, 1e-12, 1 - 1e-12)
    return np.log(q) - np.log1p(-q)


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> tuple[float, float]:
    """``(a, b)`` of ``P(y) = sigmoid(a x + b)`` by maximum likelihood (Newton steps, a small
    ridge ``l2`` so that separable events stay finite); ``(1, 0)`` for fewer than 2 events or
    one outcome only."""
    if len(x) < 2 or y.all() or not y.any():
        return 1.0, 0.0
    X = np.stack([x, np.ones_like(x)], axis=1)
    w = np.zeros(2)
    for _ in range(50):
        p = expit(X @ w)
        hessian = X.T @ (X * (p * (1 - p))[:, None]) + l2 * np.eye(2)
        step = np.linalg.solve(hessian, X.T @ (p - y) + l2 * w)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def _fit_temperature(events: list[tuple[np.ndarray, int]], iterations: int = 30) -> float:
    """The ``t`` maximising the mean log-softmax of the true candidate, ``events`` as
    ``(combined scores (A,), true index)``; golden-section search over ``log t`` in
    ``[1e-2, 1e3]``."""

    def log_likelihood(log_t: float) -> float:
        t = math.exp(log_t)
        total = 0.0
        for z, truth in events:
            s = z / t
            top = s.max()
            total += s[truth] - top - math.log(np.exp(s - top).sum())
        return total / len(events)

    return float(math.exp(golden_max(log_likelihood, math.log(1e-2), math.log(1e3), iterations)))
