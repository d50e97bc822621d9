"""Reconstruct decay trees in an analysis: a checkpoint in, trees out, no Lightning needed.

    from lcag import Reconstructor
    reco = Reconstructor.from_checkpoint("runs/tiny_transformer/checkpoints/best.ckpt")
    for event in reco.reconstruct(leaves):          # (N, L, 4) px, py, pz, E
        print(event.tree, event.score, event.probability)

A model trained on LCAS targets (``target: lcas``) decodes stage matrices; one with a
particle-type head also returns each leaf's species; one trained with ``decode_background``
leaves background leaves out of the tree (``Reconstruction.in_tree``).

The checkpoint is read with ``torch.load(weights_only=True)``; the model is rebuilt from the
configuration stored in it, and the inputs get exactly the normalisation and pair features
training used (both live in the checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.special import logsumexp

from lcag.checkpoints import grammar_rerank_of, load_checkpoint
from lcag.console import one_line
from lcag.decode import EXACT_MAX_LEAVES, decode, log_partition, tree_score
from lcag.decode import top_k as lcag_top_k
from lcag.decode.stages import decode_lcas
from lcag.errors import CheckpointError, InvalidInputError
from lcag.events import as_padded
from lcag.evidence.calibration import (
    events_by_size,
    fit_known_and_unseen,
    labelled_batches,
    scaled,
    temperatures_for,
)
from lcag.evidence.mass_prior import MassPrior
from lcag.evidence.node_evidence import NodeEvidence, upgrade_state_dict
from lcag.evidence.topologies import TopologyCatalogue
from lcag.evidence.topology_prior import (
    apply_bonus,
    bonus_log_partition,
    known_bonus,
    known_candidates,
    known_scores,
)
from lcag.features import check_pair_features, model_inputs
from lcag.matrix import lcag_to_tree
from lcag.models.base import LCAGModel
from lcag.stages import lcas_to_tree
from lcag.training.lowrank import restore_low_rank
from lcag.tree import DecayTree

if TYPE_CHECKING:  # the grammar (scipy.special) loads on first use
    from lcag.evidence.grammar import DecayGrammar
    from lcag.evidence.grammar_candidates import Candidates
    from lcag.evidence.grammar_rerank import GrammarRerank

__all__ = ["Reconstruction", "Reconstructor"]


@dataclass(frozen=True)
class Reconstruction:
    """One event's result.

    Attributes:
        lcag: ``(L, L)`` int64, the decoded matrix (always a valid one): LCAG heights, or for
            a model trained on LCAS targets (``target = "lcas"``) LCAS stages; class 0 off
            the diagonal for pairs with a leaf outside the tree (decoding with background).
        probs: ``(L, L, C)`` per-pair class probabilities from the model.
        score: the tree's score: the sum over pairs of log-probabilities, plus the weighted
            node evidence of its inner nodes when the model has some.
        probability: the tree's probability among all valid trees, ``exp(score - log Z)``
            (:func:`lcag.decode.log_partition`); above ``EXACT_MAX_LEAVES`` leaves among the
            approximate decoder's trees and the alternatives found (an upper bound).
        alternatives: with ``top_k = k``, the ``k`` most probable trees as
            ``(lcag, probability)``, best first (the first is ``lcag``); above
            ``EXACT_MAX_LEAVES`` leaves ``k`` trees by the approximate decoder
            (:func:`lcag.decode.top_k`), sorted by probability, ``lcag`` among them; for a
            tree the decay grammar reranked, its candidates; else empty.
        known_topology: whether the tree, its leaves labelled by species, has the shape of a
            training topology (:class:`lcag.evidence.TopologyCatalogue`; the probability is
            calibrated for known and other topologies apart); ``None`` for a model trained
            before training topologies were catalogued.
        species: ``(L,)`` int64, each leaf's most probable species (class index into
            ``Reconstructor.species_names``) from the particle-type head; ``None`` for a
            model without one.
        species_probs: ``(L, S)`` the head's species probabilities, or ``None``.
        reranked: the tree was chosen by the checkpoint's decay grammar among the model's
            and the grammar's candidates (:mod:`lcag.evidence.grammar_rerank`: events whose
            full-method tree is of no training topology); ``probability`` and
            ``alternatives`` are then among those candidates.
        target: ``"lcag"`` or ``"lcas"``, what ``lcag`` holds.
        in_tree: ``(k,)`` the event leaves inside the decay tree (all of them unless
            background leaves were set aside), on first access.
        tree: the decay tree of the leaves in ``in_tree`` (tree leaf ``j`` is event leaf
            ``in_tree[j]``; with LCAS, the stage tree: unstaged particles contracted), built
            on first access.
    """

    lcag: np.ndarray
    probs: np.ndarray
    score: float
    probability: float = float("nan")
    alternatives: tuple[tuple[np.ndarray, float], ...] = ()
    known_topology: bool | None = None
    species: np.ndarray | None = None
    species_probs: np.ndarray | None = None
    reranked: bool = False
    target: str = "lcag"

    @cached_property
    def in_tree(self) -> np.ndarray:
        off = self.lcag - np.diag(np.diag(self.lcag))
        inside = np.flatnonzero(off.any(axis=1))
        return inside if inside.size else np.arange(len(self.lcag))

    @cached_property
    def tree(self) -> DecayTree:
        inside = self.in_tree
        matrix = self.lcag[np.ix_(inside, inside)]
        if self.target == "lcas":
            return lcas_to_tree(matrix)[0] if len(matrix) > 1 else DecayTree([-1])
        return lcag_to_tree(matrix)


class Reconstructor:
    """A trained LCAG model for inference.

    Args:
        model: the network.
        feature_mean, feature_std: ``(F,)`` normalisation from training.
        pair_features: the pair features the model was trained with.
        max_leaves: the largest event accepted.
        device: where the model runs.
        evidence: the node evidence (:class:`lcag.evidence.NodeEvidence`: mass prior,
            subset head, and the weight chosen on validation in training), or ``None``.
        mass_prior, node_weight: a :class:`lcag.evidence.MassPrior` and its weight, a
            shorthand for ``evidence`` of kind ``mass_prior``.
        temperature: the tree score's temperature for probabilities, one number or one
            per leaf count (:meth:`calibrate`; stored in checkpoints by
            :class:`lcag.callbacks.TreeCalibration`).
        background: decode with leaves outside the tree (class 0 as "not in the decay",
            :mod:`lcag.decode.background`); from checkpoints, the module's
            ``decode_background``.
        target: ``"lcag"`` or ``"lcas"``: what the model's classes are (LCAS is decoded by
            :func:`lcag.decode.stages.decode_lcas`; tree probabilities and ``top_k > 1`` are
            LCAG-only).
        type_head: the particle-type head (``nn.Linear`` on the leaf embeddings), or ``None``.
        species_names: the names of its classes (default
            :data:`lcag.data_gen.detector.SPECIES` when the counts agree).
        features: the leaf features by name the model reads, in order (from checkpoints, the
            data module's selection; ``None``: every column of its training data).
        topology_log_odds: the log prior odds of the topology prior
            (:mod:`lcag.evidence.topology_prior`: trees of a training topology favoured,
            exactly); ``None``: the evidence's, chosen on validation (``-inf``, off, for
            checkpoints without it). Used with node evidence, for LCAG models decoded
            without background.
        rerank: the decay grammar's reranking of events whose tree is of no training
            topology (:class:`lcag.evidence.grammar_rerank.GrammarRerank`, fitted on
            validation by :meth:`fit_rerank`; stored in checkpoints by
            :class:`lcag.callbacks.TreeCalibration`), or ``None``. Used with the topology
            prior.
    """

    def __init__(
        self,
        model: LCAGModel,
        feature_mean: torch.Tensor,
        feature_std: torch.Tensor,
        pair_features: Sequence[str] = (),
        max_leaves: int = 64,
        device: str = "cpu",
        evidence: NodeEvidence | None = None,
        mass_prior: MassPrior | None = None,
        node_weight: float = 0.0,
        temperature: float | np.ndarray = 1.0,
        background: bool = False,
        target: str = "lcag",
        type_head: torch.nn.Module | None = None,
        species_names: Sequence[str] | None = None,
        features: Sequence[str] | None = None,
        topology_log_odds: float | None = None,
        rerank: GrammarRerank | None = None,
    ) -> None:
        if target not in ("lcag", "lcas"):
            raise CheckpointError(f"target = {target!r}: expected 'lcag' or 'lcas'")
        self.background = bool(background)
        self.target = target
        self.features = None if features is None else list(features)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.feature_mean = torch.as_tensor(feature_mean, dtype=torch.float32, device=self.device)
        self.feature_std = torch.as_tensor(feature_std, dtype=torch.float32, device=self.device)
        self.pair_names = check_pair_features(pair_features)
        self.max_leaves = max_leaves
        self.n_features = int(model.init_args.get("n_features", 4))
        if evidence is None and mass_prior is not None and mass_prior.fitted:
            evidence = NodeEvidence("mass_prior", n_bins=len(mass_prior.edges) - 1)
            evidence.set_prior(mass_prior)
            evidence.weight.fill_(float(node_weight))
        self.temperature = np.atleast_2d(np.asarray(temperature, dtype=np.float64))
        self.catalogue = TopologyCatalogue.empty() if evidence is None else evidence.catalogue
        if topology_log_odds is None:
            stored = -math.inf if evidence is None else float(evidence.topology_log_odds)
            topology_log_odds = stored
        self.topology_log_odds = float(topology_log_odds)
        self.evidence = None if evidence is None else evidence.to(self.device).eval()
        if self.evidence is not None and self.evidence.kind == "none":
            self.evidence = None
        self.type_head = None if type_head is None else type_head.to(self.device).eval()
        self.species_names = _species_names(type_head, species_names)
        self.rerank = rerank

    @property
    def node_weight(self) -> float:
        """The weight the node evidence enters decoding with (0 without evidence)."""
        return 0.0 if self.evidence is None else float(self.evidence.weight)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> Reconstructor:
        """Load a checkpoint written by ``lcag fit`` (read with ``weights_only=True``).

        Raises:
            CheckpointError: the file is missing, truncated, corrupt or holds no lcag model.
        """
        checkpoint = load_checkpoint(path, map_location=device)
        hparams = dict(checkpoint["hyper_parameters"])
        model = LCAGModel.from_config(hparams["model"])
        state = upgrade_state_dict(checkpoint["state_dict"])
        try:
            model_state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
            restore_low_rank(model, model_state)  # OIALR's factorised layers
            model.load_state_dict(model_state)
            mean, std = state["feature_mean"], state["feature_std"]
            evidence = NodeEvidence(
                hparams.get("node_evidence", "none"),
                model.leaf_dim,
                400,  # the stored prior brings its own bins
                int(hparams.get("subset_head_hidden", 32)),
            )
            evidence.load_state_dict(
                {k[9:]: v for k, v in state.items() if k.startswith("evidence.")}
            )
            temperature = state.get("tree_temperature", torch.tensor(1.0)).cpu().numpy()
            type_head = None
            if "type_head.weight" in state:
                weight = state["type_head.weight"]
                type_head = torch.nn.Linear(weight.shape[1], weight.shape[0])
                type_head.load_state_dict({"weight": weight, "bias": state["type_head.bias"]})
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(
                f"{path}: weights do not fit the stored model configuration ({one_line(exc)})"
            ) from None
        return cls(
            model,
            mean,
            std,
            pair_features=hparams.get("pair_features") or [],
            max_leaves=int(hparams.get("max_leaves", 64)),
            device=device,
            evidence=evidence,
            temperature=temperature,
            background=bool(hparams.get("decode_background", False)),
            target=str(hparams.get("target", "lcag")),
            type_head=type_head,
            features=(checkpoint.get("datamodule_hyper_parameters") or {}).get("features"),
            rerank=grammar_rerank_of(checkpoint, path),
        )

    def _run(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Pair probabilities ``(N, L, L, C)`` and weighted node scores ``(N, 2^L)`` (or
        ``None``) for ``x (N, L, F)``, ``mask (N, L)``: one pass of the model."""
        return self.outputs(x, mask)[:2]

    @torch.inference_mode()
    def outputs(
        self, x: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """:meth:`_run`, and the species probabilities ``(N, L, S)`` of the particle-type head
        (``None`` without one)."""
        xt = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        mt = torch.as_tensor(mask, dtype=torch.bool, device=self.device)
        normalised, pair = model_inputs(
            xt, mt, self.feature_mean, self.feature_std, self.pair_names
        )
        logits, leaves = self.model.forward_with_leaves(normalised, mt, pair)
        probs = logits.float().softmax(dim=1).permute(0, 2, 3, 1).cpu().numpy()
        species = None
        if self.type_head is not None:
            species = self.type_head(leaves).float().softmax(dim=-1).cpu().numpy()
        if self.evidence is None or self.node_weight == 0:
            return probs, None, species
        nodes = self.evidence.scores(xt, mt, leaves)
        return probs, None if nodes is None else self.node_weight * nodes, species

    def species_probabilities(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The particle-type head's species probabilities ``(N, L, S)`` for ``x (N, L, F)``,
        ``mask (N, L)``.

        Raises:
            CheckpointError: the model has no particle-type head.
        """
        species = self.outputs(x, mask)[2]
        if species is None:
            raise CheckpointError(
                "this model has no particle-type head (train with type_loss_weight > 0)"
            )
        return species

    def decode(
        self,
        probs: np.ndarray,
        mask: np.ndarray,
        nodes: np.ndarray | None = None,
        method: str = "auto",
        x: np.ndarray | None = None,
        prior: tuple[list[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Valid-tree decoding ``(N, L, L)`` of the model's target (LCAG, or LCAS with
        :func:`lcag.decode.stages.decode_lcas`), with the model's background setting; with
        the leaves ``x (N, L, F)``, under the topology prior (:attr:`topology_log_odds`;
        ``prior``: its known trees and bonus, when already listed)."""
        if self.target == "lcas":
            return decode_lcas(probs, mask, node_scores=nodes, background=self.background)
        trees = decode(probs, mask, node_scores=nodes, method=method, background=self.background)
        if prior is None:
            prior = self._topology_prior(x, mask, probs.shape[-1])
        if prior is None:
            return trees
        known, bonus = prior
        scores = tree_score(trees, probs, mask, node_scores=nodes)
        values = known_scores(known, probs, mask, nodes)
        return apply_bonus(trees, scores, known, values, mask, bonus)

    def _topology_prior(
        self, x: np.ndarray | None, mask: np.ndarray, n_classes: int
    ) -> tuple[list[np.ndarray], np.ndarray] | None:
        """The known trees over each event's leaves and their bonus ``(N,)``
        (:mod:`lcag.evidence.topology_prior`), or ``None`` where the prior does not apply
        (no leaves given, prior off, LCAS, background decoding, no catalogued trees)."""
        if (
            x is None
            or self.topology_log_odds == -math.inf
            or self.target != "lcag"
            or self.background
            or not len(self.catalogue.trees)
        ):
            return None
        known = known_candidates(self.catalogue, x, mask)
        counts = np.array([len(k) for k in known])
        bonus = known_bonus(self.topology_log_odds, mask.sum(1), counts, n_classes - 1)
        return known, bonus

    def probabilities(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Per-pair class probabilities ``(N, L, L, C)`` for ``x (N, L, F)``, ``mask (N, L)``."""
        return self._run(x, mask)[0]

    def node_scores(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        """Weighted node evidence ``(N, 2^L)`` for ``x (N, L, 4)``, or ``None`` when the model
        has none (or ``L`` is too large for node scores)."""
        return self._run(x, mask)[1]

    def calibrate(self, events: list[dict[str, Any]], batch_size: int = 1024) -> np.ndarray:
        """Fit the tree temperatures on events with known trees and keep them.

        Args:
            events: dicts with ``x (L, F)`` leaves and ``target (L, L)`` the true LCAG (as
                :class:`lcag.data.LCAGDataset` gives them); events above
                ``EXACT_MAX_LEAVES`` leaves are left out. Give events of topologies the model
                was not trained on too (a ``val_unknown`` split): the temperatures of trees
                decoded into other topologies are fitted on those events.

        Returns:
            The temperatures ``(2, EXACT_MAX_LEAVES + 1)``, one per leaf count, row 0 for
            events whose decoded tree is of a training topology, row 1 for the others
            (:func:`lcag.evidence.calibration.fit_known_and_unseen`).
        """
        if self.target == "lcas":
            raise InvalidInputError(
                "calibrate: tree probabilities are LCAG-only; this model decodes LCAS"
            )
        groups, known = [], []
        for n, members in sorted(events_by_size(events).items()):
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                x = np.stack([e["x"] for e in chunk]).astype(np.float32)
                mask = np.ones((len(chunk), n), dtype=bool)
                truth = np.stack([e["target"] for e in chunk]).astype(np.int64)
                truth[:, np.arange(n), np.arange(n)] = 0
                probs, nodes = self._run(x, mask)
                decoded = self.decode(probs, mask, nodes, x=x)
                group = (probs.astype(np.float64), mask, nodes, truth)
                prior = self._topology_prior(x, mask, probs.shape[-1])
                if prior is not None:  # the true tree's bonus, and every known tree's
                    trees, bonus = prior
                    truth_known = self.catalogue.contains(truth, x, mask)
                    group += (_objects(trees), bonus, np.where(truth_known, bonus, 0.0))
                groups.append(group)
                known.append(self.catalogue.contains(decoded, x, mask))
        self.temperature = fit_known_and_unseen(groups, known)
        return self.temperature

    def fit_rerank(
        self,
        splits: list[list[dict[str, Any]]],
        grammar: DecayGrammar,
        k: int = 5,
        proposals: int = 5,
    ) -> GrammarRerank:
        """Fit the decay grammar's reranking on validation events and keep it.

        Args:
            splits: per validation split (``val``, and ``val_unknown`` where the data has
                it), events with known trees (as for :meth:`calibrate`); its weight maximises
                the mean of the splits' perfect-tree rates.
            grammar: the decay grammar (:meth:`DecayGrammar.from_dataset`).
            k, proposals: the model's and the grammar's candidate trees per event.

        Returns:
            The reranking (:class:`lcag.evidence.grammar_rerank.GrammarRerank`; weight 0 when
            the grammar does not help on validation, or the topology prior is off).
        """
        from lcag.evidence.grammar_candidates import batch_candidates
        from lcag.evidence.grammar_rerank import GrammarRerank, reranked_events

        chosen, totals = [], []
        for events in splits:
            mine: list[tuple[Candidates, np.ndarray]] = []
            total = 0
            for _, x, mask, truth in labelled_batches(events):
                total += len(x)
                probs, nodes = self._run(x, mask)
                prior = self._topology_prior(x, mask, probs.shape[-1])
                if prior is None:  # the kinds of tree cannot be told apart: no reranking
                    continue
                decoded = self.decode(probs, mask, nodes, x=x, prior=prior)
                other = ~self.known_topology(decoded, x, mask)
                found = batch_candidates(
                    probs, mask, nodes, x, prior, reranked_events(mask, other), grammar, k,
                    proposals,
                )  # fmt: skip
                for e, c in found.items():
                    mine.append((c, (c.trees == truth[e]).all(axis=(1, 2))))
            chosen.append(mine)
            totals.append(total)
        self.rerank = GrammarRerank.fit(grammar, chosen, totals, k, proposals)
        return self.rerank

    def apply_rerank(
        self,
        x: np.ndarray,
        probs: np.ndarray,
        mask: np.ndarray,
        nodes: np.ndarray | None,
        decoded: np.ndarray,
        prior: tuple[list[np.ndarray], np.ndarray] | None = None,
        top_k: int = 1,
    ) -> dict[int, tuple[float, list[tuple[np.ndarray, float]]]]:
        """Rerank with the checkpoint's decay grammar (:attr:`rerank`,
        :meth:`lcag.evidence.grammar_rerank.GrammarRerank.apply`) the events whose
        full-method tree ``decoded (N, L, L)`` (:meth:`decode` with ``x``) is of no training
        topology, in place.

        Args:
            x: ``(N, L, F)`` leaves; ``probs (N, L, L, C)``, ``mask (N, L)`` and weighted node
                scores ``(N, 2^L)`` (or ``None``) as the model gave them.
            decoded: the full method's trees; reranked events get the kept candidate.
            prior: the topology prior's known trees and bonus, when already listed.
            top_k: alternatives to return per reranked event.

        Returns:
            Per reranked event index: the kept tree's probability among the candidates and
            the ``top_k`` best candidates with theirs. Nothing without a reranking of weight
            above 0 or without the topology prior.
        """
        if self.rerank is None or self.rerank.weight <= 0:
            return {}
        if prior is None:
            prior = self._topology_prior(x, mask, probs.shape[-1])
        if prior is None:
            return {}
        other = ~self.known_topology(decoded, x, mask)
        return self.rerank.apply(decoded, probs, mask, nodes, x, prior, other, top_k)

    def known_topology(self, lcag: np.ndarray, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Whether each tree ``lcag (N, L, L)`` over leaves ``x (N, L, F)``, ``mask (N, L)`` is
        of a training topology, ``(N,)`` bool (all ``True`` for a model without a catalogue)."""
        return self.catalogue.contains(lcag, x, mask)

    def log_partition(
        self,
        probs: np.ndarray,
        mask: np.ndarray,
        nodes: np.ndarray | None,
        known: np.ndarray | None = None,
        x: np.ndarray | None = None,
    ) -> np.ndarray:
        """``log Z_t`` ``(N,)`` of the tree scores over the temperature ``t``, for pair
        probabilities ``(N, L, L, C)``, ``mask (N, L)`` and weighted node scores ``(N, 2^L)``;
        ``known (N,)``: whether each event's decoded tree is of a training topology (which
        temperature it takes; all known when ``None``); with the leaves ``x (N, L, F)``,
        under the topology prior."""
        return self._tempered(probs, mask, nodes, known, x)[2]

    def _tempered(
        self,
        probs: np.ndarray,
        mask: np.ndarray,
        nodes: np.ndarray | None,
        known: np.ndarray | None,
        x: np.ndarray | None = None,
        prior: tuple[list[np.ndarray], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """The tempered model: pair probabilities ``(N, L, L, C)`` and node scores
        ``(N, 2^L)`` whose tree scores are the originals over ``t``, its log-partition
        ``(N,)`` and the tempered topology bonus of known trees ``(N,)`` (0 without leaves
        ``x`` or prior). A tree's probability is its score under these inputs (plus the
        bonus if known) minus the log-partition: both floor a pair probability at the same
        ``1e-12`` (a score over ``t`` taken from the untempered inputs would not, and at
        ``t < 1`` put sure trees far below their probability)."""
        t = self.temperatures(mask, known)
        hot_probs, hot_nodes = scaled(probs, nodes, t)
        log_z = log_partition(hot_probs, mask, node_scores=hot_nodes, background=self.background)
        hot_bonus = np.zeros(len(probs))
        if prior is None:
            prior = self._topology_prior(x, mask, probs.shape[-1])
        if prior is not None:
            trees, bonus = prior
            hot_bonus = bonus / t
            values = known_scores(trees, hot_probs, mask, hot_nodes)
            log_z = bonus_log_partition(log_z, values, hot_bonus)
        return hot_probs, hot_nodes, log_z, hot_bonus

    def temperatures(self, mask: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """The temperature of each event ``(N,)`` by its leaf count, ``mask (N, L)``, and
        whether its decoded tree is of a training topology, ``known (N,)``."""
        return temperatures_for(self.temperature, mask.sum(1), known)

    def tree_probability(
        self,
        lcag: np.ndarray,
        probs: np.ndarray,
        mask: np.ndarray,
        nodes: np.ndarray | None,
        x: np.ndarray | None = None,
    ) -> np.ndarray:
        """The calibrated probability ``(N,)`` of each event's decoded tree ``lcag (N, L, L)``
        among all valid trees (inputs as in :meth:`log_partition`; above ``EXACT_MAX_LEAVES``
        leaves an upper bound, among the approximate decoder's trees). With the leaves
        ``x (N, L, F)``, the temperature is that of known or of other topologies, by
        whether ``lcag`` is of a training topology; without them, that of known ones."""
        known = None if x is None else self.known_topology(lcag, x, mask)
        hot_probs, hot_nodes, log_z, hot_bonus = self._tempered(probs, mask, nodes, known, x)
        scores = tree_score(lcag, hot_probs, mask, node_scores=hot_nodes)
        if known is not None:
            scores = scores + np.where(known, hot_bonus, 0.0)
        return np.exp(np.minimum(scores - log_z, 0.0))

    def _top_k(
        self,
        x: np.ndarray,
        probs: np.ndarray,
        mask: np.ndarray,
        nodes: np.ndarray | None,
        k: int,
        prior: tuple[list[np.ndarray], np.ndarray] | None,
        skip: set[int] | frozenset[int] = frozenset(),
    ) -> list[list[tuple[np.ndarray, bool]] | None]:
        """Each event's ``k`` best trees ``(L, L)`` under the topology prior, best first,
        each with whether it is of a training topology: the ``k`` best of all trees
        (:func:`lcag.decode.top_k`) and the ``k`` best known trees with their bonus, merged
        (exact: a tree among the ``k`` best under the prior is among the ``k`` best of its
        kind); ``None`` for the events in ``skip``."""
        if skip:
            index = np.array([e for e in range(len(x)) if e not in skip], dtype=np.int64)
            out: list[list[tuple[np.ndarray, bool]] | None] = [None] * len(x)
            if len(index):
                sub_prior = None if prior is None else ([prior[0][e] for e in index],
                                                        prior[1][index])  # fmt: skip
                sub_nodes = None if nodes is None else nodes[index]
                found = self._top_k(x[index], probs[index], mask[index], sub_nodes, k, sub_prior)
                for e, trees in zip(index, found, strict=True):
                    out[e] = trees
            return out
        best = lcag_top_k(probs, k, mask, node_scores=nodes, background=self.background)
        flags = [
            self.known_topology(
                np.stack([M for M, _ in trees]),
                x[e : e + 1].repeat(len(trees), 0),
                mask[e : e + 1].repeat(len(trees), 0),
            )
            for e, trees in enumerate(best)
        ]
        if prior is None:
            return [
                [(M, bool(f)) for (M, _), f in zip(trees, fl, strict=True)]
                for trees, fl in zip(best, flags, strict=True)
            ]
        known, bonus = prior
        values = known_scores(known, probs, mask, nodes)
        out = []
        for e, trees in enumerate(best):
            real = np.flatnonzero(mask[e])
            ranked = [
                (score + (bonus[e] if f else 0.0), M, bool(f))
                for (M, score), f in zip(trees, flags[e], strict=True)
            ]
            for a in np.argsort(-values[e], kind="stable")[:k]:
                M = np.full_like(trees[0][0], -1)
                M[np.ix_(real, real)] = known[e][a]
                if not any(np.array_equal(M, other) for _, other, _ in ranked):
                    ranked.append((float(values[e][a]) + bonus[e], M, True))
            ranked.sort(key=lambda r: -r[0])
            out.append([(M, f) for _, M, f in ranked[:k]])
        return out

    def reconstruct(
        self,
        leaves: Any,
        mask: np.ndarray | None = None,
        *,
        batch_size: int = 1024,
        method: str = "auto",
        node_evidence: bool = True,
        top_k: int = 1,
        grammar: bool = True,
    ) -> list[Reconstruction]:
        """Reconstruct the decay tree of every event.

        Args:
            leaves: ``(N, L, F)`` array (with ``mask (N, L)`` for padded events), a list of
                ``(L_i, F)`` arrays, or an awkward array of events of ``F``-vectors.
            mask: ``(N, L)`` bool, ``True`` for real leaves (arrays only).
            batch_size: events per model call.
            method: decoding method of :func:`lcag.decode` (``auto``, ``exact``, ``approx``).
            node_evidence: add the model's node evidence (its subset head or mass prior, at
                the weight chosen on validation) to the pair scores; ``False`` decodes from
                pairs alone.
            top_k: also return the ``top_k`` most probable trees (``Reconstruction.
                alternatives``), exactly up to ``EXACT_MAX_LEAVES`` leaves.
            grammar: rerank the events whose tree is of no training topology with the
                checkpoint's decay grammar (:attr:`rerank`, where it has one with a
                weight above 0; with node evidence only); ``False``: the full method alone.

        Returns:
            One :class:`Reconstruction` per event, in order.

        Raises:
            InvalidInputError: wrong feature count, NaN or infinite values, more leaves
                than the model supports, or a leaf with ``E < |p|`` (columns not in the
                order px, py, pz, E); the message names the event and leaf.
        """
        x, mask = as_padded(leaves, mask, self.n_features, self.max_leaves)
        if self.target == "lcas" and top_k > 1:
            raise InvalidInputError(
                f"top_k = {top_k}: alternatives are LCAG-only; this model decodes LCAS"
            )
        order = np.argsort(mask.sum(1), kind="stable")  # similar sizes share a batch
        out: dict[int, Reconstruction] = {}
        for start in range(0, len(x), batch_size):
            events = order[start : start + batch_size]
            size = max(int(mask[events].sum(1).max()), 1)
            found = self._reconstruct_batch(
                x[events, :size], mask[events, :size], method, node_evidence, top_k, grammar
            )
            out.update(zip(events.tolist(), found, strict=True))
        return [out[i] for i in range(len(x))]

    def _reconstruct_batch(
        self,
        x: np.ndarray,
        mask: np.ndarray,
        method: str,
        node_evidence: bool,
        top_k: int,
        grammar: bool = True,
    ) -> list[Reconstruction]:
        """:meth:`reconstruct` of one batch ``x (N, L, F)``, ``mask (N, L)``."""
        probs, nodes, species = self.outputs(x, mask)
        nodes = nodes if node_evidence else None
        leaves = x if node_evidence else None  # the topology prior goes with node evidence
        prior = self._topology_prior(leaves, mask, probs.shape[-1])
        decoded = self.decode(probs, mask, nodes, method, x=leaves, prior=prior)
        reranked = {}
        if grammar and prior is not None:
            reranked = self.apply_rerank(x, probs, mask, nodes, decoded, prior, top_k)
        scores = tree_score(decoded, probs, mask, node_scores=nodes)
        lcag = self.target == "lcag"
        known = self.known_topology(decoded, x, mask) if lcag else np.ones(len(x), dtype=bool)
        probability = np.full(len(x), np.nan)
        best = None
        if lcag:
            hot_probs, hot_nodes, log_z, hot_bonus = self._tempered(
                probs, mask, nodes, known, leaves, prior
            )
            hot = tree_score(decoded, hot_probs, mask, node_scores=hot_nodes)
            probability = np.exp(np.minimum(hot + np.where(known, hot_bonus, 0.0) - log_z, 0.0))
            if top_k > 1:  # reranked events have their candidates as alternatives
                best = self._top_k(x, probs, mask, nodes, top_k, prior, skip=set(reranked))
        out = []
        for k in range(len(x)):
            real = np.flatnonzero(mask[k])
            alternatives: tuple[tuple[np.ndarray, float], ...] = ()
            if best is not None and best[k] is not None:
                one = slice(k, k + 1)
                hot_one = None if hot_nodes is None else hot_nodes[one]
                tempered = [
                    tree_score(M[None], hot_probs[one], mask[one], node_scores=hot_one)[0]
                    + (hot_bonus[k] if is_known else 0.0)
                    for M, is_known in best[k]
                ]
                z = log_z[k]
                if len(real) > EXACT_MAX_LEAVES:  # log Z of the dendrogram's trees: raised to
                    z = max(z, float(logsumexp(tempered)))  # cover the alternatives found
                    known_bonus = hot_bonus[k] if known[k] else 0.0
                    probability[k] = _probability(hot[k] + known_bonus, z)
                alternatives = tuple(
                    (M[np.ix_(real, real)], _probability(t, z))
                    for (M, _), t in zip(best[k], tempered, strict=True)
                )
            if k in reranked:
                probability[k], alternatives = reranked[k][0], tuple(reranked[k][1])
            leaf_species = None if species is None else species[k][real]
            out.append(
                Reconstruction(
                    lcag=decoded[k][np.ix_(real, real)],
                    probs=probs[k][np.ix_(real, real)],
                    score=float(scores[k]),
                    probability=float(probability[k]),
                    alternatives=alternatives,
                    known_topology=bool(known[k]) if lcag and self.catalogue.fitted else None,
                    species=None if leaf_species is None else leaf_species.argmax(-1),
                    species_probs=leaf_species,
                    reranked=k in reranked,
                    target=self.target,
                )
            )
        return out


def _objects(arrays: list[np.ndarray]) -> np.ndarray:
    """``(N,)`` object array of per-event arrays (sliceable by a boolean mask)."""
    out = np.empty(len(arrays), dtype=object)
    for k, a in enumerate(arrays):
        out[k] = a
    return out


def _probability(score: float, log_z: float) -> float:
    """``exp(score_t - log Z_t)`` of a tempered score, at most 1 (rounding)."""
    return float(np.exp(min(score - log_z, 0.0)))


def _species_names(head: torch.nn.Module | None, names: Sequence[str] | None) -> tuple[str, ...]:
    """The particle-type head's class names: ``names``, or the detector's species when the
    class counts agree, or ``class 0 .. S-1``; empty without a head."""
    if head is None:
        return ()
    count = int(head.out_features)
    if names is None:
        from lcag.data_gen.detector import SPECIES

        names = SPECIES if len(SPECIES) == count else [f"class {k}" for k in range(count)]
    if len(names) != count:
        raise CheckpointError(f"species_names: {len(names)} names for {count} classes")
    return tuple(names)
