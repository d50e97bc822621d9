"""Candidate trees for reranking with a decay grammar, and the choice among them.

The full method (:class:`lcag.inference.Reconstructor`: pair scores, node evidence, the
topology prior) proposes each event's ``k`` best trees (:func:`lcag.decode.top_k`) and the
trees of the training topologies over its leaves (with their prior bonus); the grammar
(:class:`lcag.evidence.grammar.DecayGrammar`) adds its own best trees. The kept tree
maximises ``score + weight * grammar log-likelihood``; ``weight = 0`` is the full method,
``inf`` the grammar alone. Exact decoding only (at most ``EXACT_MAX_LEAVES`` leaves, every
leaf in the tree). Which events are reranked, and how the kept tree's probability is
calibrated, is :class:`lcag.evidence.grammar_rerank.GrammarRerank`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lcag.decode import EXACT_MAX_LEAVES, top_k, tree_score
from lcag.decode.scores import gather_node_scores
from lcag.errors import InvalidInputError
from lcag.evidence.grammar import DecayGrammar
from lcag.evidence.topology_prior import known_scores

if TYPE_CHECKING:
    from lcag.inference import Reconstructor

__all__ = [
    "UNMADE",
    "Candidates",
    "batch_candidates",
    "candidates",
    "choose",
    "event_candidates",
]

UNMADE = -1e12  # the log-likelihood a tree the grammar cannot make counts as


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

    def combined(self, weight: float) -> np.ndarray:
        """``(A,)`` ``score + w * grammar`` (``w = inf``: the grammar alone); a tree the
        grammar cannot make counts as ``-1e12``."""
        g = np.where(np.isfinite(self.grammar), self.grammar, UNMADE)
        return g if weight == math.inf else self.scores + weight * g

    def index(self, weight: float) -> int:
        """The candidate maximising :meth:`combined`."""
        return int(np.argmax(self.combined(weight)))

    def best(self, weight: float) -> np.ndarray:
        """``(n, n)`` the kept tree (:meth:`index`)."""
        return self.trees[self.index(weight)]

    def softmax(self, weight: float, temperature: float) -> np.ndarray:
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


def choose(found: list[Candidates], mask: np.ndarray, weight: float) -> np.ndarray:
    """``(N, L, L)`` int64: each event's kept tree at its real leaves (padding -1)."""
    N, L = mask.shape
    out = np.full((N, L, L), -1, dtype=np.int64)
    for e, event in enumerate(found):
        real = np.flatnonzero(mask[e])
        out[e][np.ix_(real, real)] = event.best(weight)
    return out
