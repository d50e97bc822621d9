"""The LightningModule: masked loss, metrics, optimiser; the model itself is chosen by config.

Raw leaf 4-momenta come in; the module normalises them with the training set's statistics
(buffers, saved in every checkpoint), adds the configured pair features, and calls the model,
so inference reproduces training exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lcag.checkpoints import grammar_rerank_of, load_checkpoint
from lcag.data import LCAGDataset, has_background
from lcag.decode import EXACT_MAX_LEAVES, decode, tree_score
from lcag.decode.stages import decode_lcas
from lcag.errors import ConfigError
from lcag.evidence.mass_prior import MassPrior
from lcag.evidence.node_evidence import (
    NodeEvidence,
    NodeEvidenceKind,
    blend,
    true_nodes,
    upgrade_state_dict,
)
from lcag.evidence.topologies import TopologyCatalogue
from lcag.evidence.topology_prior import (
    apply_bonus,
    known_bonus,
    known_candidates,
    known_scores,
)
from lcag.features import check_pair_features, model_inputs
from lcag.metrics import PairAccuracy, PerfectTreeRate, SpeciesAccuracy, ValidTreeRate
from lcag.models.base import LCAGModel
from lcag.training.lowrank import restore_low_rank
from lcag.training.tree_loss import tree_nll

__all__ = ["LCAGModule"]

TEST_SUBSETS = ("test", "test_unseen")  # test dataloader 0: known topologies, 1: unseen
VAL_SUBSETS = ("val", "val_unseen")  # validation dataloader 0: known, 1 (if any): unseen
DEFAULT_NODE_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
DEFAULT_HEAD_SHARES = (0.0, 1.0)  # of the subset head's correction to the mass prior
DEFAULT_TOPOLOGY_LOG_ODDS = (-math.inf, 0.0, 4.0, 8.0)  # of the topology prior


class LCAGModule(pl.LightningModule):
    """Train an LCAG model.

    Args:
        model: the network (``class_path`` in a config), e.g. ``lcag.models.LCAGTransformer``.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        scheduler: ``cosine`` (linear warm-up, then cosine decay per step), ``onecycle``, or
            ``none``.
        warmup_fraction: share of the steps spent warming up (cosine).
        focal_gamma: focal-loss exponent; 0 is plain cross-entropy.
        class_weights: per-class loss weights (length C), e.g. to favour rare heights.
        pair_features: pair features given to the model (``lcag.features.PAIR_FEATURES``);
            the model's ``n_pair_features`` must match their number.
        decode_at_eval: also score valid-tree decoding (``lcag.decode``) at validation/test.
        max_leaves: the largest leaf count reported per size.
        node_evidence: the node scores added to valid-tree decoding
            (:class:`lcag.evidence.NodeEvidence`, kept in the checkpoint), reported as
            ``perfect_full``: ``subset_head`` (a :class:`lcag.models.SubsetHead` on the model's
            leaf embeddings and subset kinematics, residual on the mass prior, trained beside
            the pair loss), ``mass_prior`` (:class:`lcag.evidence.MassPrior` alone, learnt
            from the training split at the start of fitting), ``none`` (pair scores alone).
        node_weights: the weights of the node scores tried on validation, each with every
            share of ``head_shares``; the pair kept goes to
            the ``evidence.weight`` and ``evidence.head_share`` buffers
            (:meth:`_choose_node_weights`: the best ``val/score``, the perfect-tree rate on
            validation, with a ``val_unknown`` split in the data the mean of the known and
            unseen topologies' rates; of the pairs within one standard error of it, the
            largest). Checkpoints and early stopping watch ``val/score``.
        head_shares: the shares of the subset head's correction to the mass prior tried with
            every weight, node scores ``prior + share * (head - prior)``: 0 the prior alone
            (what carries to unseen topologies with exact masses; always tried), 1 the whole
            head. Every pair is decoded on every validation event, so each share adds a
            weight grid's worth of decoding to validation.
        topology_log_odds: the log prior odds ``beta`` of the topology prior tried with
            every (weight, share) pair (:mod:`lcag.evidence.topology_prior`: trees of a
            training topology get ``log(1 + e^beta N(n) / A)`` added to their score);
            ``-inf``, the prior off, is always tried. The one chosen goes to
            ``evidence.topology_log_odds``; ``perfect_full`` decodes with it,
            ``perfect_nodes`` without. LCAG targets without background only.
        mass_prior_bins: log-mass bins of the prior, or ``auto``: chosen on held-out
            training events (:meth:`lcag.evidence.MassPrior.fit`).
        mass_prior_events: training events the prior is counted from (spread over the split).
        mass_prior_composition: the prior also counts the leaf-species composition of each
            subset where leaves come in species (:class:`lcag.evidence.MassPrior`), kept only
            if it predicts held-out training events better.
        subset_loss_weight: weight of the subset head's binary cross-entropy in the loss.
        subset_head_hidden: hidden width of the subset head.
        subset_loss_samples: training batches with more leaf subsets than this score this
            many, drawn uniformly, in the subset loss (an unbiased estimate, much cheaper at
            10 leaves and more).
        tree_loss_weight: weight of the true tree's negative log-likelihood among all valid
            trees (:func:`lcag.training.tree_loss.tree_nll`, per pair, with the subset head's
            logits as node scores) in the training loss; 0 leaves it out.
        tree_loss_max_leaves: the tree loss is computed for training batches of at most this
            many leaves (it costs ``O(3^L C)`` per event).
        type_loss_weight: weight of the particle-type head's cross-entropy (a linear layer on
            the leaf embeddings classifying each leaf's species, ``lcag.data_gen.detector.
            SPECIES``, from datasets generated with a ``detector``) in the training loss; 0
            (default) builds no head. Accuracy per species is logged at validation and test.
        n_species: species classes of the particle-type head.
        decode_background: valid-tree decoding may leave leaves out of the tree (class 0 as
            "not in the decay", :mod:`lcag.decode.background`), for data with background
            leaves; ``None`` (default): on when the training data has background
            (:func:`lcag.data.has_background`, read when the trainer sets the module up),
            else off. Stored in checkpoints, so :class:`lcag.Reconstructor` decodes alike.
        target: ``lcag`` (heights) or ``lcas`` (stages, :mod:`lcag.stages`; the data module's
            ``target`` must agree). With ``lcas`` the same metrics are reported, decoding
            is :func:`lcag.decode.stages.decode_lcas` and the valid-argmax rate counts valid
            LCAS; node evidence works alike (the mass prior and the subset head learn the
            LCAS tree's nodes, the staged particles), the tree loss and tree probabilities
            are LCAG-only for now.
    """

    def __init__(
        self,
        model: LCAGModel,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        scheduler: Literal["cosine", "onecycle", "none"] = "cosine",
        warmup_fraction: float = 0.05,
        focal_gamma: float = 0.0,
        class_weights: list[float] | None = None,
        pair_features: list[str] | None = None,
        decode_at_eval: bool = True,
        max_leaves: int = 64,
        node_evidence: NodeEvidenceKind = "subset_head",
        node_weights: list[float] | None = None,
        head_shares: list[float] | None = None,
        topology_log_odds: list[float] | None = None,
        mass_prior_bins: int | Literal["auto"] = "auto",
        mass_prior_events: int = 50_000,
        mass_prior_composition: bool = True,
        subset_loss_weight: float = 1.0,
        subset_head_hidden: int = 32,
        subset_loss_samples: int = 256,
        tree_loss_weight: float = 0.0,
        tree_loss_max_leaves: int = 8,
        target: Literal["lcag", "lcas"] = "lcag",
        type_loss_weight: float = 0.0,
        n_species: int = 7,
        decode_background: bool | None = None,
    ) -> None:
        super().__init__()
        if target not in ("lcag", "lcas"):
            raise ConfigError(f"target = {target!r}: expected 'lcag' or 'lcas'")
        if target == "lcas" and tree_loss_weight > 0:
            raise ConfigError(
                "target = 'lcas': the tree loss is LCAG-only for now (it needs the LCAG "
                "log-partition); set tree_loss_weight: 0"
            )
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = model.config()
        self.model = model
        self.pair_names = check_pair_features(pair_features or [])
        expected = int(model.init_args.get("n_pair_features", 0))
        if expected != len(self.pair_names):
            raise ConfigError(
                f"model.n_pair_features = {expected} but pair_features = {self.pair_names} "
                f"gives {len(self.pair_names)}"
            )
        self.n_classes = int(model.init_args["n_classes"])
        if class_weights is not None and len(class_weights) != self.n_classes:
            raise ConfigError(
                f"class_weights has {len(class_weights)} entries, the model has "
                f"{self.n_classes} classes"
            )
        n_features = int(model.init_args.get("n_features", 4))
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.register_buffer(
            "class_weights",
            torch.tensor(class_weights, dtype=torch.float32) if class_weights else None,
        )
        self.metrics = nn.ModuleDict(  # keyed "<subset>_set": "train" is a Module method
            {
                f"{subset}_set": nn.ModuleDict(
                    {
                        "perfect_argmax": PerfectTreeRate(max_leaves),
                        "perfect_decoded": PerfectTreeRate(max_leaves),
                        "pair_accuracy": PairAccuracy(),
                        "valid_argmax": ValidTreeRate(target),
                        "perfect_full": PerfectTreeRate(max_leaves),
                        "perfect_nodes": PerfectTreeRate(max_leaves),
                        "perfect_prior": PerfectTreeRate(max_leaves),
                        "perfect_grammar": PerfectTreeRate(max_leaves),
                    }
                )
                for subset in ("train", *VAL_SUBSETS, *TEST_SUBSETS)
            }
        )
        # the decay grammar's reranking, fitted after training (lcag.callbacks.TreeCalibration)
        # and read back from the checkpoint: lcag.evidence.grammar_rerank.GrammarRerank
        self.grammar_rerank: Any = None
        self.evidence = NodeEvidence(
            node_evidence,
            model.leaf_dim,
            400 if mass_prior_bins == "auto" else mass_prior_bins,
            subset_head_hidden,
        )
        # the tree score's temperature for probabilities (lcag.callbacks.TreeCalibration):
        # row 0 for trees of a training topology, row 1 for others; one per leaf count
        self.register_buffer(
            "tree_temperature", torch.ones(2, EXACT_MAX_LEAVES + 1, dtype=torch.float64)
        )
        self.node_weights = [float(w) for w in (node_weights or DEFAULT_NODE_WEIGHTS)]
        shares = [float(a) for a in (head_shares or DEFAULT_HEAD_SHARES)]
        if not all(0.0 <= a <= 1.0 for a in shares):
            raise ConfigError(f"head_shares = {shares}: every share must lie in [0, 1]")
        self.head_shares = sorted({0.0, *shares})  # 0: the prior alone, reported beside
        odds = DEFAULT_TOPOLOGY_LOG_ODDS if topology_log_odds is None else topology_log_odds
        if any(math.isnan(float(b)) or float(b) == math.inf for b in odds):
            raise ConfigError(f"topology_log_odds = {list(odds)}: each must be finite or -inf")
        self.topology_log_odds = sorted({-math.inf, *(float(b) for b in odds)})
        self.weight_metrics = nn.ModuleDict(  # validation rates at each (weight, share)
            {
                subset: nn.ModuleList(PerfectTreeRate(max_leaves) for _ in self.weight_grid)
                for subset in VAL_SUBSETS
            }
        )
        self.type_head = nn.Linear(model.leaf_dim, n_species) if type_loss_weight > 0 else None
        self.type_metrics = nn.ModuleDict(
            {
                f"{subset}_set": SpeciesAccuracy(n_species)
                for subset in ("train", *VAL_SUBSETS, *TEST_SUBSETS)
            }
            if self.type_head is not None
            else {}
        )
        self.results: dict[str, dict[str, Any]] = {}
        self._selection: dict[str, torch.Tensor] = {}  # val/score and the chosen weights

    # ------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, L, L)`` from raw 4-momenta ``x (B, L, F)`` and ``mask (B, L)``."""
        return self.forward_with_leaves(x, mask)[0]

    def forward_with_leaves(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, C, L, L)`` and leaf embeddings ``(B, L, D)`` from raw ``x (B, L, F)``."""
        normalised, pair = model_inputs(
            x, mask, self.feature_mean, self.feature_std, self.pair_names
        )
        return self.model.forward_with_leaves(normalised, mask, pair)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is None:
            return
        if self.hparams.get("decode_background") is None and hasattr(datamodule, "manifest"):
            self.hparams.decode_background = has_background(datamodule.manifest)
        wanted = getattr(datamodule, "hparams", {}).get("target", "lcag")
        if wanted != self.hparams.target:
            raise ConfigError(
                f"the module trains target = {self.hparams.target!r} but the data module reads "
                f"{wanted!r}; set both to the same"
            )
        if self.n_classes < datamodule.n_classes:
            raise ConfigError(
                f"model.n_classes = {self.n_classes}, but {datamodule.data_dir} has "
                f"{datamodule.n_classes} LCAG classes; raise model.n_classes"
            )
        mean, std = datamodule.normalisation
        if len(mean) != len(self.feature_mean):
            names = ", ".join(getattr(datamodule, "features", None) or ["no names"])
            raise ConfigError(
                f"model.n_features = {len(self.feature_mean)}, but the data gives {len(mean)} "
                f"per leaf ({names}); set "
                "model.init_args.n_features, or data.features to choose columns"
            )
        if stage == "fit" and not torch.any(self.feature_mean != 0):
            self.feature_mean.copy_(torch.tensor(mean))
            self.feature_std.copy_(torch.clamp(torch.tensor(std), min=1e-6))
        wants_prior = self.evidence.kind != "none" and not self.mass_prior.fitted
        if stage != "fit" or not (wants_prior or not self.evidence.catalogue.fitted):
            return
        train = LCAGDataset(
            datamodule.data_dir,
            "train",
            max_events=self.hparams.mass_prior_events,
            target=self.hparams.target,  # LCAS: the staged particles are the nodes
        )
        events = train.__getitems__(range(len(train)))
        if wants_prior:
            prior = MassPrior.fit(
                events,
                n_bins=self.hparams.mass_prior_bins,
                composition=self.hparams.get("mass_prior_composition", True),
            )
            self.evidence.set_prior(prior)
        if not self.evidence.catalogue.fitted:  # tree probabilities: known topology or not
            self.evidence.set_catalogue(TopologyCatalogue.fit(events))

    @property
    def mass_prior(self) -> MassPrior:
        """The node-evidence prior held in the buffers (all zeros until fitted)."""
        return self.evidence.mass_prior

    @property
    def node_weight(self) -> torch.Tensor:
        """The node evidence's weight in decoding, chosen on validation (a 0-d buffer)."""
        return self.evidence.weight

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = upgrade_state_dict(checkpoint["state_dict"])
        restore_low_rank(self, checkpoint["state_dict"])  # OIALR's factorised layers
        self.grammar_rerank = grammar_rerank_of(checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record what the checkpoint is (``lcag info``): the lcag version, the training data
        (from the data module's manifest) and the validation figures of these weights; keep
        the decay grammar's reranking where the module has one."""
        from lcag.export.info import training_facts

        checkpoint["lcag_info"] = training_facts(self)
        if self.grammar_rerank is not None:
            checkpoint["grammar_rerank"] = self.grammar_rerank.to_dict()

    # -------------------------------------------------------------------------- steps
    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Masked cross-entropy (focal when ``focal_gamma > 0``); -1 targets are ignored.

        Args:
            logits: ``(B, C, L, L)``; target: ``(B, L, L)`` int64.
        """
        ce = F.cross_entropy(
            logits, target, weight=self.class_weights, ignore_index=-1, reduction="none"
        )
        valid = target >= 0
        gamma = self.hparams.focal_gamma
        if gamma > 0:
            logp = F.log_softmax(logits, dim=1).gather(1, target.clamp(min=0)[:, None])[:, 0]
            ce = (1 - logp.exp()) ** gamma * ce
        if self.class_weights is not None:
            norm = self.class_weights[target.clamp(min=0)][valid].sum()
            return ce[valid].sum() / torch.clamp(norm, min=1e-12)
        return ce[valid].mean()

    def _common_step(self, batch: dict[str, torch.Tensor], subset: str) -> torch.Tensor:
        mask, target, n_leaves = batch["mask"], batch["target"], batch["n_leaves"]
        logits, leaves = self.forward_with_leaves(batch["x"], mask)
        loss = self.loss(logits, target)
        if subset == "train":  # the node losses train; evaluation reports the pair loss
            loss = self._node_losses(loss, logits, leaves, batch)
        if self.type_head is not None:
            loss = self._type_step(loss, leaves, batch, subset)
        pred = _as_lcag(logits.argmax(dim=1), mask)
        metrics = self.metrics[f"{subset}_set"]
        metrics["perfect_argmax"].update(pred, target, n_leaves)
        metrics["pair_accuracy"].update(pred, target)
        if subset != "train":
            metrics["valid_argmax"].update(pred, mask)
            if self.hparams.decode_at_eval:
                self._decode_step(logits, leaves, batch, subset)
        self.log(
            f"{subset}/loss",
            loss,
            batch_size=len(target),
            prog_bar=subset in ("train", "val", "test"),
            on_step=subset == "train",
            on_epoch=True,
            add_dataloader_idx=False,
            sync_dist=subset != "train",
        )
        return loss

    def _type_step(
        self, loss: torch.Tensor, leaves: torch.Tensor, batch: dict[str, torch.Tensor], subset: str
    ) -> torch.Tensor:
        """Particle-type head on leaf embeddings ``(B, L, D)``: accuracy per species, and on
        training its weighted cross-entropy added to ``loss``."""
        if "species" not in batch:
            raise ConfigError(
                "type_loss_weight > 0 needs leaf species: a dataset generated with a "
                "'detector' section"
            )
        species = batch["species"]
        type_logits = self.type_head(leaves)  # (B, L, S)
        self.type_metrics[f"{subset}_set"].update(type_logits.argmax(-1), species)
        if subset != "train":
            return loss
        type_loss = F.cross_entropy(type_logits.flatten(0, 1), species.flatten(), ignore_index=-1)
        self.log("train/type_loss", type_loss, batch_size=len(species), on_epoch=True)
        return loss + self.hparams.type_loss_weight * type_loss

    def _node_losses(
        self,
        loss: torch.Tensor,
        logits: torch.Tensor,
        leaves: torch.Tensor,
        batch: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Add the subset head's loss and the tree loss (when configured) to a training
        batch's pair loss. Not at evaluation: batches without candidate subsets (two leaves)
        have no subset loss, and ranks would then log different keys under DDP."""
        x, mask, target = batch["x"], batch["mask"], batch["target"]
        tree_loss = self.hparams.tree_loss_weight > 0
        samples = None if tree_loss else self.hparams.subset_loss_samples
        head = self.evidence.loss(x, mask, leaves, target, samples)
        if head is not None:
            self.log("train/subset_loss", head[0], batch_size=len(target), on_epoch=True)
            loss = loss + self.hparams.subset_loss_weight * head[0]
        elif self.evidence.head is not None:  # e.g. two leaves: no subset to score
            # DDP reduces every parameter's gradient on every rank: keep the head in the graph
            loss = loss + 0.0 * sum(p.sum() for p in self.evidence.head.parameters())
        if tree_loss:
            nll = self._tree_loss(logits, target, mask, None if head is None else head[1])
            if nll is not None:
                self.log("train/tree_nll", nll, batch_size=len(target), on_epoch=True)
                loss = loss + self.hparams.tree_loss_weight * nll
        return loss

    def _tree_loss(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        nodes: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Mean over events of the true tree's negative log-likelihood per leaf pair, for a
        batch without padding of at most ``tree_loss_max_leaves`` leaves (else ``None``)."""
        L = mask.shape[1]
        if L < 2 or L > self.hparams.tree_loss_max_leaves or not bool(mask.all()):
            return None
        lcag = target.clamp(min=0)
        nll = tree_nll(logits.float().log_softmax(dim=1), lcag, true_nodes(target, mask), nodes)
        return nll.mean() / (L * (L - 1) / 2)

    def _decode_step(
        self,
        logits: torch.Tensor,
        leaves: torch.Tensor,
        batch: dict[str, torch.Tensor],
        subset: str,
    ) -> None:
        """Score valid-tree decoding from pair scores alone and with node evidence: on
        validation at every candidate (weight, head share), on test at the chosen ones."""
        mask, target, n_leaves = batch["mask"], batch["target"], batch["n_leaves"]
        metrics = self.metrics[f"{subset}_set"]
        probs = logits.float().softmax(dim=1).permute(0, 2, 3, 1).cpu().numpy()
        mask_np = mask.cpu().numpy()
        pair_only = torch.from_numpy(self._decoder(probs, mask_np)).to(logits.device)
        metrics["perfect_decoded"].update(pair_only, target, n_leaves)
        full = self.evidence.scores(batch["x"], mask, leaves, head_share=1.0)
        prior = self.evidence.prior_scores(batch["x"], mask) if self.evidence.head else None
        known = self._known_trees(batch["x"], mask)

        def decoded(weight: float, share: float, log_odds: list[float]) -> list[torch.Tensor]:
            nodes = None
            if full is not None and weight != 0:
                nodes = weight * (full if prior is None else blend(prior, full, share))
            trees = (
                pair_only.cpu().numpy() if nodes is None else self._decoder(probs, mask_np, nodes)
            )
            with_prior = self._with_topology_prior(trees, probs, mask_np, nodes, known, log_odds)
            return [torch.from_numpy(t).to(logits.device) for t in with_prior]

        if subset in VAL_SUBSETS:
            grid = self.weight_grid
            metrics_at = dict(zip(grid, self.weight_metrics[subset], strict=True))
            odds = sorted({b for *_, b in grid})
            for weight, share in dict.fromkeys((w, a) for w, a, _ in grid):
                for b, trees in zip(odds, decoded(weight, share, odds), strict=True):
                    metrics_at[weight, share, b].update(trees, target, n_leaves)
            return
        weight, share = float(self.evidence.weight), float(self.evidence.head_share)
        log_odds = float(self.evidence.topology_log_odds)
        with_prior, without = decoded(weight, share, [log_odds, -math.inf])
        metrics["perfect_full"].update(with_prior, target, n_leaves)
        rerank = self.grammar_rerank
        if rerank is not None and rerank.weight > 0 and known is not None:
            nodes = None
            if full is not None and weight != 0:
                nodes = weight * (full if prior is None else blend(prior, full, share))
            trees = self._reranked(
                with_prior.cpu().numpy(), probs, mask_np, nodes, batch["x"], known, log_odds
            )
            metrics["perfect_grammar"].update(
                torch.from_numpy(trees).to(logits.device), target, n_leaves
            )
        metrics["perfect_nodes"].update(without, target, n_leaves)
        if prior is not None:  # the mass prior alone, for comparison
            best = decoded(float(self.evidence.prior_weight), 0.0, [-math.inf])[0]
            metrics["perfect_prior"].update(best, target, n_leaves)

    def _reranked(
        self,
        trees: np.ndarray,
        probs: np.ndarray,
        mask: np.ndarray,
        nodes: np.ndarray | None,
        x: torch.Tensor,
        known: list[np.ndarray],
        log_odds: float,
    ) -> np.ndarray:
        """The full method's trees ``(B, L, L)`` with the events whose tree is of no training
        topology reranked by the decay grammar
        (:meth:`lcag.evidence.grammar_rerank.GrammarRerank.apply`), as
        :meth:`lcag.Reconstructor.reconstruct` does."""
        leaves = x.cpu().numpy()
        other = ~self._catalogue[1].contains(trees, leaves, mask)
        counts = np.array([len(k) for k in known])
        bonus = known_bonus(log_odds, mask.sum(1), counts, self.n_classes - 1)
        out = trees.copy()
        self.grammar_rerank.apply(out, probs, mask, nodes, leaves, (known, bonus), other)
        return out

    def _known_trees(self, x: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray] | None:
        """The trees of training topologies over each event's leaves (``None`` where the
        topology prior does not apply: LCAS targets, background decoding, no catalogued
        trees)."""
        key = (self.evidence.catalogue_trees.data_ptr(), self.evidence.catalogue_keys.data_ptr())
        cached = getattr(self, "_catalogue", None)  # its known-tree lists are cached inside
        if cached is None or cached[0] != key:
            cached = self._catalogue = (key, self.evidence.catalogue)
        catalogue = cached[1]
        if (
            self.hparams.target != "lcag"
            or self.hparams.get("decode_background")
            or not len(catalogue.trees)
        ):
            return None
        return known_candidates(catalogue, x.cpu().numpy(), mask.cpu().numpy())

    def _with_topology_prior(
        self,
        decoded: np.ndarray,
        probs: np.ndarray,
        mask: np.ndarray,
        nodes: np.ndarray | None,
        known: list[np.ndarray] | None,
        log_odds: list[float],
    ) -> list[np.ndarray]:
        """The decoded trees ``(B, L, L)`` under the topology prior at each of ``log_odds``
        (:mod:`lcag.evidence.topology_prior`; the trees as given at ``-inf`` or without
        ``known`` trees)."""
        if known is None or all(b == -math.inf for b in log_odds):
            return [decoded for _ in log_odds]
        scores = tree_score(decoded, probs, mask, node_scores=nodes)
        values = known_scores(known, probs, mask, nodes)
        counts = np.array([len(k) for k in known])
        n_leaves = mask.sum(1)
        return [
            apply_bonus(
                decoded,
                scores,
                known,
                values,
                mask,
                known_bonus(b, n_leaves, counts, self.n_classes - 1),
            )
            for b in log_odds
        ]

    @property
    def weight_grid(self) -> list[tuple[float, float, float]]:
        """The (node weight, head share, topology log-odds) triples tried on validation:
        every weight with every share of the subset head's correction (share 1 alone
        without a head) and every log prior odds of the topology prior (``-inf`` alone for
        LCAS targets; with background decoding the others decode as ``-inf`` and are not
        chosen)."""
        shares = self.head_shares if self.evidence.head is not None else (1.0,)
        odds = self.topology_log_odds if self.hparams.target == "lcag" else [-math.inf]
        return [(w, a, b) for w in self.node_weights for a in shares for b in odds]

    def node_scores(self, x: torch.Tensor, mask: torch.Tensor) -> np.ndarray | None:
        """Unweighted node scores ``(B, 2^L)`` of a batch ``x (B, L, 4)``, or ``None`` (no
        node evidence, or events too large for node scores)."""
        if not self.evidence.applies(x.shape[1]):
            return None
        leaves = self.forward_with_leaves(x, mask)[1] if self.evidence.head is not None else None
        return self.evidence.scores(x, mask, leaves)

    @torch.no_grad()
    def decode(
        self,
        logits: torch.Tensor,
        mask: torch.Tensor,
        x: torch.Tensor | None = None,
        node_evidence: bool = False,
        leaves: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The most probable valid LCAG ``(B, L, L)`` (padding -1) from logits ``(B, C, L, L)``:
        from pair scores alone, or with ``node_evidence`` (needs the leaves ``x (B, L, 4)``;
        ``leaves (B, L, D)``, the model's embeddings, spare a second forward pass) the full
        method, the node scores at the chosen weight and the topology prior at the chosen
        odds."""
        probs = logits.float().softmax(dim=1).permute(0, 2, 3, 1).cpu().numpy()
        nodes = None
        if node_evidence and x is not None:
            nodes = (
                self.node_scores(x, mask)
                if leaves is None
                else self.evidence.scores(x, mask, leaves)
            )
        if nodes is not None:
            nodes = float(self.node_weight) * nodes
        mask_np = mask.cpu().numpy()
        decoded = self._decoder(probs, mask_np, node_scores=nodes)
        if node_evidence and x is not None:  # and the topology prior at the chosen odds
            known = self._known_trees(x, mask)
            odds = [float(self.evidence.topology_log_odds)]
            decoded = self._with_topology_prior(decoded, probs, mask_np, nodes, known, odds)[0]
        return torch.from_numpy(decoded).to(logits.device)

    def _decoder(
        self, probs: np.ndarray, mask: np.ndarray, node_scores: np.ndarray | None = None
    ) -> np.ndarray:
        """Valid-tree decoding of the module's target (LCAG heights or LCAS stages)."""
        background = bool(self.hparams.get("decode_background", False))
        if self.hparams.target == "lcas":
            return decode_lcas(probs, mask, node_scores=node_scores, background=background)
        return decode(probs, mask, node_scores=node_scores, background=background)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "train")

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._common_step(batch, VAL_SUBSETS[dataloader_idx])

    def test_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._common_step(batch, TEST_SUBSETS[dataloader_idx])

    def predict_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, torch.Tensor]:
        logits, leaves = self.forward_with_leaves(batch["x"], batch["mask"])
        return {
            "probs": logits.softmax(dim=1).permute(0, 2, 3, 1),
            "argmax": _as_lcag(logits.argmax(dim=1), batch["mask"]),
            "decoded": self.decode(logits, batch["mask"], batch["x"], True, leaves),
            "mask": batch["mask"],
        }

    # -------------------------------------------------------------------- epoch ends
    def _finish(self, subset: str, chosen: dict[str, int] | None = None) -> None:
        """Log the subset's epoch metrics (overall and per leaf count) and keep them;
        ``chosen``: on validation, the grid entry (:attr:`weight_grid`) of each full-method
        metric, from :meth:`_choose_node_weights`."""
        metrics = dict(self.metrics[f"{subset}_set"])
        names = ["perfect_argmax", "pair_accuracy"]
        if subset != "train":
            names.append("valid_argmax")
            if self.hparams.decode_at_eval:
                names += ["perfect_decoded", "perfect_nodes", "perfect_full"]
                if self.evidence.head is not None:
                    names.insert(-2, "perfect_prior")
                if subset in TEST_SUBSETS and _events(metrics["perfect_grammar"]) > 0:
                    names.append("perfect_grammar")
        for name, k in (chosen or {}).items():
            metrics[name] = self.weight_metrics[subset][k]
        values = {f"{subset}/{name}": metrics[name].compute() for name in names}
        headline = "perfect_full" if "perfect_full" in names else "perfect_argmax"
        by_size = {}
        for name in (n for n in names if n.startswith("perfect")):
            with metrics[name].sync_context():  # all ranks' counts, under DDP
                by_size[name] = metrics[name].by_size()
        for n, (rate, _) in by_size[headline].items():
            values[f"{subset}/perfect_L{n}"] = torch.tensor(rate)
        if subset == "val":
            values.update(self._selection)
        species_rates: dict[str, tuple[float, int]] = {}
        if self.type_head is not None:
            from lcag.data_gen.detector import SPECIES

            metric = self.type_metrics[f"{subset}_set"]
            with metric.sync_context():
                rates = metric.per_species()
            values[f"{subset}/type_accuracy"] = metric.compute()
            species_rates = {name: rate for name, rate in zip(SPECIES, rates, strict=False)}
            metric.reset()
        self.log_dict(values, add_dataloader_idx=False)
        self.results[subset] = {
            **({"type_accuracy_by_species": species_rates} if species_rates else {}),
            **{key.split("/", 1)[1]: float(value) for key, value in values.items()},
            "by_size": by_size,
            "events": int(metrics["perfect_argmax"].total.sum()),
        }
        for metric in self.metrics[f"{subset}_set"].values():
            metric.reset()

    def _choose_node_weights(self, subsets: list[str]) -> dict[str, int]:
        """Choose the node weight, head share and topology log-odds on the validation
        ``subsets`` (``val``, and ``val_unseen`` where the data has topologies kept from
        training for it), keep them in the evidence buffers, and return the grid entry of
        ``perfect_full``, ``perfect_nodes`` (the same without the topology prior) and
        ``perfect_prior`` (the best weight at share 0, without the topology prior).

        The figure maximised is the perfect-tree rate, with an unseen validation split the
        mean of the known and unseen rates (``val/score``). Of the entries within one binomial
        standard error of the best, the one with the largest weight, then share, is kept:
        validation cannot tell them apart, and the node evidence is what carries over to
        topologies it has not seen (with known topologies alone to validate on, ties going
        to the smallest weight lost 40 points on unseen topologies with exact masses).
        The topology prior's odds come last in that order: the largest of the tied ones.
        """
        grid = self.weight_grid
        applies = not self.hparams.get("decode_background")  # no topology prior with it
        rates, variances = np.zeros(len(grid)), np.zeros(len(grid))
        for subset in subsets:
            metrics = self.weight_metrics[subset]
            events = max(_events(metrics[0]), 1)
            r = np.array([float(metric.compute()) for metric in metrics])
            rates += r / len(subsets)
            variances += r * (1.0 - r) / events / len(subsets) ** 2

        def best_of(entries: list[int]) -> int:
            top = max(entries, key=lambda k: rates[k])
            error = math.sqrt(max(variances[top], 0.0))
            return max((k for k in entries if rates[k] >= rates[top] - error), key=grid.__getitem__)

        best = best_of([k for k, (*_, b) in enumerate(grid) if applies or b == -math.inf])
        weight, share, log_odds = grid[best]
        self.evidence.weight.fill_(weight)
        self.evidence.head_share.fill_(share)
        self.evidence.topology_log_odds.fill_(log_odds)
        self._selection = {
            "val/score": torch.tensor(rates[best]),
            "val/node_weight": self.evidence.weight.float(),
            "val/head_share": self.evidence.head_share.float(),
            "val/topology_log_odds": self.evidence.topology_log_odds.float(),
        }
        chosen = {"perfect_full": best, "perfect_nodes": grid.index((weight, share, -math.inf))}
        if self.evidence.head is not None:
            prior = best_of([k for k, (_, a, b) in enumerate(grid) if a == 0.0 and b == -math.inf])
            self.evidence.prior_weight.fill_(grid[prior][0])
            chosen["perfect_prior"] = prior
        return chosen

    def on_train_epoch_end(self) -> None:
        self._finish("train")

    def on_validation_epoch_end(self) -> None:
        unseen = _events(self.metrics["val_unseen_set"]["perfect_argmax"]) > 0
        subsets = ["val", "val_unseen"] if unseen else ["val"]
        chosen = None
        if self.hparams.decode_at_eval:
            chosen = self._choose_node_weights(subsets)
        else:
            self._selection = {}
        for subset in subsets:
            self._finish(subset, chosen)
        if not self.hparams.decode_at_eval:  # the figure checkpoints watch, all the same
            self.log("val/score", self.results["val"]["perfect_argmax"])
        for grid in self.weight_metrics.values():
            for metric in grid:
                metric.reset()

    def on_test_epoch_end(self) -> None:
        self._finish("test")
        if len(self.trainer.test_dataloaders or []) > 1:
            self._finish("test_unseen")

    # ---------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        h = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if h.scheduler == "none" or not math.isfinite(total):
            return optimizer
        total = max(int(total), 1)
        if h.scheduler == "onecycle":
            scheduler: Any = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=h.lr, total_steps=total
            )
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, _WarmupCosine(max(1, int(h.warmup_fraction * total)), total)
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ----------------------------------------------------------------------- loading
    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> LCAGModule:
        """Rebuild a trained module from a checkpoint, the model from its stored config."""
        checkpoint = load_checkpoint(path, map_location=map_location)
        hparams = dict(checkpoint["hyper_parameters"])
        model = LCAGModel.from_config(hparams.pop("model"))
        # LightningCLI records its own keys (``_instantiator``, ``_class_path``) beside ours
        module = cls(model, **{k: v for k, v in hparams.items() if not k.startswith("_")})
        state = upgrade_state_dict(checkpoint["state_dict"])
        restore_low_rank(module, state)  # OIALR's factorised layers, from their shapes
        module.load_state_dict(state)
        module.grammar_rerank = grammar_rerank_of(checkpoint, path)
        return module.eval()


class _WarmupCosine:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, cosine decay to ``total``."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))


def _events(metric: PerfectTreeRate) -> int:
    """The events a rate metric has counted, over every rank (so that all ranks agree)."""
    with metric.sync_context():
        return int(metric.total.sum())


def _as_lcag(pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Argmax classes ``(B, L, L)`` with 0 on the diagonal and -1 on padding."""
    pred = pred.clone()
    L = pred.shape[-1]
    pred[:, torch.arange(L), torch.arange(L)] = 0
    pair = mask[:, :, None] & mask[:, None, :]
    return torch.where(pair, pred, torch.full_like(pred, -1))
