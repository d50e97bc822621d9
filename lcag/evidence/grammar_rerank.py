"""Reranking a model's best trees with a decay grammar.

The full method (:class:`lcag.inference.Reconstructor`: pair scores, node evidence, the
topology prior) proposes each event's ``k`` best trees (:func:`lcag.decode.top_k`) and the
trees of the training topologies over its leaves (with their prior bonus); the grammar
(:class:`lcag.evidence.grammar.DecayGrammar`) may add its own best trees. The kept tree
maximises ``score + weight * grammar log-likelihood``; ``weight = 0`` is the full method.
Exact decoding only (at most ``EXACT_MAX_LEAVES`` leaves, every leaf in the tree).
"""

from __future__ import annotations

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

__all__ = ["UNMADE", "Candidates", "candidates", "choose"]

UNMADE = -1e12  # the log-likelihood a tree the grammar cannot make counts as


@dataclass
class Candidates:
    """One event's candidate trees.

    Attributes:
        trees: ``(A, n, n)`` LCAGs over the event's real leaves.
        scores: ``(A,)`` the full method's tree scores (with the topology prior's bonus for
            trees of training topologies).
        grammar: ``(A,)`` the grammar's log-likelihoods (``-inf``: it cannot make the tree).
    """

    trees: np.ndarray
    scores: np.ndarray
    grammar: np.ndarray

    def index(self, weight: float) -> int:
        """The candidate maximising ``score + weight * grammar`` (``inf``: the grammar
        alone); a tree the grammar cannot make counts as ``-1e12``."""
        g = np.where(np.isfinite(self.grammar), self.grammar, UNMADE)
        return int(np.argmax(g if weight == np.inf else self.scores + weight * g))

    def best(self, weight: float) -> np.ndarray:
        """``(n, n)`` the kept tree (:meth:`index`)."""
        return self.trees[self.index(weight)]


def candidates(
    reco: Reconstructor,
    grammar: DecayGrammar,
    x: np.ndarray,
    mask: np.ndarray,
    k: int = 10,
    proposals: int = 10,
) -> list[Candidates]:
    """Every event's candidates.

    Args:
        reco: the model (its node evidence and topology prior are used as it has them).
        grammar: the decay grammar.
        x: ``(N, L, F)`` leaves, ``(px, py, pz, E)`` first; ``mask (N, L)`` real leaves.
        k: the model's best trees per event.
        proposals: the grammar's best trees per event (exact decoding of
            :meth:`DecayGrammar.proposal_scores`), 0 for none.

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
    probs, nodes, _ = reco.outputs(x, mask)
    prior = reco._topology_prior(x, mask, probs.shape[-1])
    known = known_scores(prior[0], probs, mask, nodes) if prior is not None else None
    out = []
    for e in range(len(x)):
        real = np.flatnonzero(mask[e])
        n = len(real)
        sub_probs = probs[e][np.ix_(real, real)]
        sub_nodes = None
        if nodes is not None:
            sub_nodes = gather_node_scores(nodes, np.array([e]), real[None])[0]
        found = top_k(sub_probs, k, node_scores=sub_nodes)
        trees = [M for M, _ in found]
        scores = [s for _, s in found]
        if prior is not None:
            for M, s in zip(prior[0][e], known[e], strict=True):
                trees.append(M)
                scores.append(s + prior[1][e])
        leaves = x[e][real, :4].astype(np.float64)
        masses = grammar.subset_masses(leaves)
        if proposals and n >= 2:
            node_p, kids_p = grammar.proposal_scores(leaves, masses)
            uniform = np.full((n, n, n + 1), 1.0 / (n + 1))
            for M, _ in top_k(uniform, proposals, node_scores=node_p, children_scores=kids_p):
                trees.append(M)
                scores.append(float(tree_score(M, sub_probs, node_scores=sub_nodes)))
        values = grammar.log_likelihood(trees, leaves, masses) if n >= 2 else np.zeros(1)
        out.append(Candidates(np.stack(trees), np.array(scores), values))
    return out


def choose(found: list[Candidates], mask: np.ndarray, weight: float) -> np.ndarray:
    """``(N, L, L)`` int64: each event's kept tree at its real leaves (padding -1)."""
    N, L = mask.shape
    out = np.full((N, L, L), -1, dtype=np.int64)
    for e, event in enumerate(found):
        real = np.flatnonzero(mask[e])
        out[e][np.ix_(real, real)] = event.best(weight)
    return out
