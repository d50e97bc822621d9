"""Reranking a model's best trees with a decay grammar.

The full method (:class:`lcag.inference.Reconstructor`: pair scores, node evidence, the
topology prior) proposes each event's ``k`` best trees (:func:`lcag.decode.top_k`) and the
trees of the training topologies over its leaves (with their prior bonus); the grammar
(:class:`lcag.evidence.grammar.DecayGrammar`) adds its own best trees. The kept tree
maximises ``score + weight * grammar log-likelihood``; ``weight = 0`` is the full method.
The weight may depend on the full method's own tree: ``(w_known, w_other)`` takes ``w_known``
for events whose full-method tree is of a training topology (where the model is mostly right)
and ``w_other`` for the others (where the grammar, which carries to unseen topologies, is the
better judge). Exact decoding only (at most ``EXACT_MAX_LEAVES`` leaves, every leaf in the
tree).

:class:`GrammarRerank` is what a checkpoint keeps: the grammar, ``w_other`` (``w_known`` is 0:
trees of training topologies stay as the full method decodes them), and the calibration of
the reranked trees' probabilities. The grammar's likelihood sums over no tree space that the
decoder can enumerate, so a reranked tree's probability starts from the candidates:
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
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import expit

from lcag.decode import EXACT_MAX_LEAVES, top_k, tree_score
from lcag.decode.scores import gather_node_scores
from lcag.errors import InvalidInputError
from lcag.evidence.calibration import golden_max
from lcag.evidence.grammar import DecayGrammar
from lcag.evidence.topology_prior import known_scores

if TYPE_CHECKING:
    from lcag.inference import Reconstructor

__all__ = [
    "UNMADE",
    "WEIGHTS",
    "Candidates",
    "GrammarRerank",
    "Weight",
    "batch_candidates",
    "candidates",
    "choose",
    "event_candidates",
]

UNMADE = -1e12  # the log-likelihood a tree the grammar cannot make counts as

Weight = float | tuple[float, float]  # one weight, or (events with a known tree, the others)

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, math.inf)  # the grammar weights tried on validation


@dataclass
class Candidates:
    """One event's candidate trees, each distinct tree once.

    Attributes:
        trees: ``(A, n, n)`` LCAGs over the event's real leaves.
        scores: ``(A,)`` the full method's tree scores (with the topology prior's bonus for
            trees of training topologies).
        grammar: ``(A,)`` the grammar's log-likelihoods (``-inf``: it cannot make the tree).
        known: ``(A,)`` bool, the tree is of a training topology (its score carries the
            prior's bonus).
    """

    trees: np.ndarray
    scores: np.ndarray
    grammar: np.ndarray
    known: np.ndarray

    @property
    def full_is_known(self) -> bool:
        """Whether the full method's tree (weight 0) is of a training topology."""
        return bool(self.known[int(np.argmax(self.scores))])

    def _weight(self, weight: Weight) -> float:
        if isinstance(weight, tuple):
            return weight[0] if self.full_is_known else weight[1]
        return float(weight)

    def combined(self, weight: Weight) -> np.ndarray:
        """``(A,)`` ``score + w * grammar`` (``w = inf``: the grammar alone), ``w`` the weight
        or, for a pair ``(w_known, w_other)``, the one for this event
        (:attr:`full_is_known`); a tree the grammar cannot make counts as ``-1e12``."""
        w = self._weight(weight)
        g = np.where(np.isfinite(self.grammar), self.grammar, UNMADE)
        return g if w == math.inf else self.scores + w * g

    def index(self, weight: Weight) -> int:
        """The candidate maximising :meth:`combined`."""
        return int(np.argmax(self.combined(weight)))

    def best(self, weight: Weight) -> np.ndarray:
        """``(n, n)`` the kept tree (:meth:`index`)."""
        return self.trees[self.index(weight)]

    def softmax(self, weight: Weight, temperature: float) -> np.ndarray:
        """``(A,)`` ``softmax(combined / t)`` over the candidates."""
        z = self.combined(weight) / temperature
        p = np.exp(z - z.max())
        return p / p.sum()


def event_candidates(
    probs: np.ndarray,
    nodes: np.ndarray | None,
    known_trees: np.ndarray,
    known_values: np.ndarray,
    leaves: np.ndarray,
    grammar: DecayGrammar,
    k: int,
    proposals: int,
) -> Candidates:
    """One event's candidates.

    Args:
        probs: ``(n, n, C)`` its pair probabilities; ``nodes (2^n,)`` its weighted node
            scores or ``None``.
        known_trees: ``(A, n, n)`` the training-topology trees over its leaves, and
            ``known_values (A,)`` their scores with the prior's bonus.
        leaves: ``(n, 4)`` ``(px, py, pz, E)``.
        grammar: the decay grammar.
        k: the model's best trees.
        proposals: the grammar's trees: its best under
            :meth:`DecayGrammar.proposal_scores` (node and children-count scores).
    """
    n = len(leaves)
    found: dict[bytes, int] = {}
    trees: list[np.ndarray] = []
    scores: list[float] = []
    known: list[bool] = []

    def add(M: np.ndarray, score: float, is_known: bool) -> None:
        M = np.asarray(M, dtype=np.int64)
        key = M.tobytes()
        at = found.get(key)
        if at is None:
            found[key] = len(trees)
            trees.append(M)
            scores.append(float(score))
            known.append(is_known)
        elif score > scores[at]:
            scores[at], known[at] = float(score), is_known

    for M, s in top_k(probs, k, node_scores=nodes):
        add(M, s, False)
    for M, s in zip(known_trees, known_values, strict=True):
        add(M, s, True)
    masses = grammar.subset_masses(leaves)
    if proposals and n >= 3:
        node_p, kids_p = grammar.proposal_scores(leaves, masses)
        uniform = np.full((n, n, n + 1), 1.0 / (n + 1))
        made = top_k(uniform, proposals, node_scores=node_p, children_scores=kids_p)
        for M, _ in made:
            add(M, float(tree_score(M, probs, node_scores=nodes)), False)
    values = grammar.log_likelihood(trees, leaves, masses) if n >= 2 else np.zeros(len(trees))
    return Candidates(np.stack(trees), np.array(scores), values, np.array(known))


def candidates(
    reco: Reconstructor,
    grammar: DecayGrammar,
    x: np.ndarray,
    mask: np.ndarray,
    k: int = 10,
    proposals: int = 10,
) -> list[Candidates]:
    """Every event's candidates (:func:`event_candidates`).

    Args:
        reco: the model (its node evidence and topology prior are used as it has them).
        grammar: the decay grammar.
        x: ``(N, L, F)`` leaves, ``(px, py, pz, E)`` first; ``mask (N, L)`` real leaves.
        k: the model's best trees per event.
        proposals: the grammar's best trees per event, 0 for none.

    Raises:
        InvalidInputError: an event has more than ``EXACT_MAX_LEAVES`` leaves.
    """
    x = np.asarray(x)
    mask = np.asarray(mask, dtype=bool)
    most = int(mask.sum(1).max(initial=0))
    if most > EXACT_MAX_LEAVES:
        raise InvalidInputError(
            f"grammar reranking: events of at most {EXACT_MAX_LEAVES} leaves, one has {most}"
        )
    probs, nodes = reco.outputs(x, mask)[:2]
    prior = reco._topology_prior(x, mask, probs.shape[-1])
    found = batch_candidates(
        probs, mask, nodes, x, prior, np.ones(len(x), dtype=bool), grammar, k, proposals
    )
    return [found[e] for e in range(len(x))]


def batch_candidates(
    probs: np.ndarray,
    mask: np.ndarray,
    nodes: np.ndarray | None,
    x: np.ndarray,
    prior: tuple[list[np.ndarray], np.ndarray] | None,
    wanted: np.ndarray,
    grammar: DecayGrammar,
    k: int,
    proposals: int,
) -> dict[int, Candidates]:
    """The candidates (:func:`event_candidates`) of the ``wanted (N,)`` events, by index.

    Args:
        probs: ``(N, L, L, C)`` pair probabilities; ``mask (N, L)``; ``nodes (N, 2^L)``
            weighted node scores or ``None``; ``x (N, L, F)`` the leaves.
        prior: the topology prior's known trees per event and bonus ``(N,)``
            (:mod:`lcag.evidence.topology_prior`), or ``None``.
    """
    chosen = np.flatnonzero(wanted)
    values = None
    if prior is not None and len(chosen):
        values = known_scores([prior[0][e] for e in chosen], probs[chosen], mask[chosen],
                              None if nodes is None else nodes[chosen])  # fmt: skip
    out = {}
    for at, e in enumerate(chosen):
        real = np.flatnonzero(mask[e])
        n = len(real)
        sub_nodes = None
        if nodes is not None:
            sub_nodes = gather_node_scores(nodes, np.array([e]), real[None])[0]
        known_trees = np.zeros((0, n, n), dtype=np.int64)
        known_values = np.zeros(0)
        if values is not None and len(prior[0][e]):
            known_trees, known_values = prior[0][e], values[at] + prior[1][e]
        out[int(e)] = event_candidates(
            probs[e][np.ix_(real, real)],
            sub_nodes,
            known_trees,
            known_values,
            x[e][real, :4].astype(np.float64),
            grammar,
            k,
            proposals,
        )
    return out


def choose(found: list[Candidates], mask: np.ndarray, weight: Weight) -> np.ndarray:
    """``(N, L, L)`` int64: each event's kept tree at its real leaves (padding -1)."""
    N, L = mask.shape
    out = np.full((N, L, L), -1, dtype=np.int64)
    for e, event in enumerate(found):
        real = np.flatnonzero(mask[e])
        out[e][np.ix_(real, real)] = event.best(weight)
    return out


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

    def applies(self, n_leaves: int) -> bool:
        """Whether events of ``n_leaves`` are reranked."""
        return self.weight > 0 and 3 <= n_leaves <= EXACT_MAX_LEAVES

    def probabilities(self, found: Candidates) -> np.ndarray:
        """``(A,)`` each candidate's calibrated probability (module docstring)."""
        q = np.clip(found.softmax(self.weight, self.temperature), 1e-300, 1.0)
        with np.errstate(divide="ignore"):
            logit = np.log(q) - np.log1p(-q)
        p = expit(self.slope * logit + self.offset)
        return p / max(1.0, float(p.sum()))

    def rerank(self, found: Candidates) -> tuple[int, np.ndarray]:
        """The kept candidate's index and every candidate's probability ``(A,)``."""
        return found.index(self.weight), self.probabilities(found)

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
            q = float(np.clip(c.softmax(weight, temperature)[kept], 1e-12, 1 - 1e-12))
            logits.append(math.log(q / (1 - q)))
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
