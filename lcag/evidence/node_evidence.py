"""The node evidence a trained model decodes with: mass prior, subset head, and their weight.

One ``nn.Module`` holds everything that turns an event into node scores ``(N, 2^L)`` for
:func:`lcag.decode.decode`, so training (:class:`lcag.LCAGModule`) and inference
(:class:`lcag.Reconstructor`) compute them alike, and all of it travels in the checkpoint:

- ``mass_prior``: :class:`MassPrior`'s log-odds of each subset's invariant mass (buffers);
- ``subset_head``: a :class:`lcag.models.SubsetHead` over pooled leaf embeddings and subset
  kinematics, residual on the mass prior (an untrained head gives the prior's scores);
- ``none``: no node scores;
- ``weight``: the factor the scores enter decoding with, and ``head_share``: how much of the
  subset head's correction to the prior is kept (1 all of it, 0 the prior alone), both chosen
  on the validation split(s);
- the training topologies (:class:`TopologyCatalogue`, with a tree of each) and
  ``topology_log_odds``, the log prior odds of the topology prior
  (:mod:`lcag.evidence.topology_prior`; ``-inf``: off), chosen with the weights.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lcag.decode import EXACT_MAX_LEAVES
from lcag.decode.scores import subset_members
from lcag.errors import ConfigError
from lcag.evidence.composition import Species
from lcag.evidence.mass_prior import MAX_PRIOR_LEAVES, MassPrior
from lcag.evidence.subsets import (
    SUBSET_KINEMATICS,
    candidate_subsets,
    node_indicator,
    subset_kinematics,
    subset_masses,
)
from lcag.evidence.topologies import TopologyCatalogue
from lcag.models.subset_head import SubsetHead

__all__ = ["NODE_EVIDENCE_KINDS", "NodeEvidence", "blend", "true_nodes", "upgrade_state_dict"]

NODE_EVIDENCE_KINDS = ("subset_head", "mass_prior", "none")
NodeEvidenceKind = Literal["subset_head", "mass_prior", "none"]


class NodeEvidence(nn.Module):
    """Node scores of leaf subsets for valid-tree decoding.

    Args:
        kind: ``subset_head``, ``mass_prior`` or ``none`` (module docstring).
        leaf_dim: width ``D`` of the model's leaf embeddings (``subset_head`` only).
        n_bins: log-mass bins of the (unfitted) mass prior; :meth:`set_prior` and loading a
            state dict take the fitted prior's own.
        head_hidden: hidden width of the subset head.
        head_dropout: dropout inside the subset head.

    Shapes:
        - **scores:** ``x (N, L, 4)``, ``mask (N, L)``, ``leaves (N, L, D)`` -> ``(N, 2^L)``
        - **loss:** the same and ``target (N, L, L)`` -> scalar
    """

    def __init__(
        self,
        kind: NodeEvidenceKind = "subset_head",
        leaf_dim: int = 0,
        n_bins: int = 400,
        head_hidden: int = 32,
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in NODE_EVIDENCE_KINDS:
            raise ConfigError(f"node_evidence: expected one of {NODE_EVIDENCE_KINDS}, got {kind!r}")
        if kind == "subset_head" and leaf_dim < 1:
            raise ConfigError(
                "node_evidence 'subset_head' needs the model's leaf embedding width (its "
                f"init_args 'dim'), got {leaf_dim}"
            )
        self.kind = kind
        empty = MassPrior.empty(n_bins)
        self.register_buffer("mass_prior_edges", torch.from_numpy(empty.edges))
        self.register_buffer("mass_prior_log_odds", torch.from_numpy(empty.log_odds))
        for name, value in _composition_buffers(empty).items():
            self.register_buffer(name, value)
        for name, value in _catalogue_buffers(TopologyCatalogue.empty()).items():
            self.register_buffer(name, value)
        self.register_buffer("weight", torch.tensor(0.0, dtype=torch.float64))
        # scores = prior + head_share * (head - prior): the head's correction kept
        self.register_buffer("head_share", torch.tensor(1.0, dtype=torch.float64))
        # the mass prior's own weight when it is decoded alone (for comparison)
        self.register_buffer("prior_weight", torch.tensor(0.0, dtype=torch.float64))
        # log prior odds of a training topology (lcag.evidence.topology_prior); -inf: off
        self.register_buffer("topology_log_odds", torch.tensor(-math.inf, dtype=torch.float64))
        self.head = (
            SubsetHead(leaf_dim, len(SUBSET_KINEMATICS), head_hidden, head_dropout)
            if kind == "subset_head"
            else None
        )

    @property
    def mass_prior(self) -> MassPrior:
        """The prior held in the buffers (all zeros until :meth:`set_prior`)."""
        return MassPrior(
            self.mass_prior_edges.cpu().numpy(),
            self.mass_prior_log_odds.cpu().numpy(),
            Species(self.species_log_masses.cpu().numpy(), self.species_codes.cpu().numpy()),
            self.composition_keys.cpu().numpy(),
            self.composition_log_odds.cpu().numpy(),
        )

    def set_prior(self, prior: MassPrior) -> None:
        """Hold ``prior`` (of any number of bins and compositions) in the buffers."""
        device = self.mass_prior_edges.device
        self.mass_prior_edges = torch.from_numpy(prior.edges.astype(np.float64)).to(device)
        self.mass_prior_log_odds = torch.from_numpy(prior.log_odds.astype(np.float64)).to(device)
        for name, value in _composition_buffers(prior).items():
            setattr(self, name, value.to(device))

    @property
    def catalogue(self) -> TopologyCatalogue:
        """The training topologies (:class:`lcag.evidence.TopologyCatalogue`; empty until
        :meth:`set_catalogue`)."""
        return TopologyCatalogue(
            self.catalogue_species.cpu().numpy(),
            self.catalogue_keys.cpu().numpy(),
            self.catalogue_trees.cpu().numpy(),
            self.catalogue_tree_species.cpu().numpy(),
        )

    def set_catalogue(self, catalogue: TopologyCatalogue) -> None:
        """Hold ``catalogue`` (of any size) in the buffers."""
        for name, value in _catalogue_buffers(catalogue).items():
            setattr(self, name, value.to(self.catalogue_keys.device))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Take the stored prior's shape (its bins and compositions are chosen when it is
        fitted)."""
        for name in _RESIZED:
            stored = state_dict.get(prefix + name)
            if stored is not None and stored.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def applies(self, n_leaves: int) -> bool:
        """Whether events of ``n_leaves`` (padded width) get node scores."""
        return self.kind != "none" and n_leaves <= MAX_PRIOR_LEAVES

    def node_logits(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        leaves: torch.Tensor | None = None,
        columns: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unweighted node scores ``(N, 2^L)`` as a tensor (differentiable through the subset
        head; 0 for single leaves, the root and sets with padded leaves) and the candidate
        subsets ``(N, 2^L)`` bool (:func:`lcag.evidence.candidate_subsets`).

        Args:
            x: ``(N, L, 4+)`` raw leaves ``(px, py, pz, E, ...)``, ``L <= MAX_PRIOR_LEAVES``.
            mask: ``(N, L)`` bool, real leaves.
            leaves: ``(N, L, D)`` the model's leaf embeddings (``subset_head`` only).
            columns: ``(K,)`` bit masks: score only these subsets, ``(N, K)`` out.
        """
        x_np = x.detach().cpu().numpy().astype(np.float64)[..., :4]
        mask_np = mask.cpu().numpy()
        bits = None if columns is None else columns.cpu().numpy()
        masses = subset_masses(x_np, mask_np, bits)
        prior = self.mass_prior.node_scores(x_np, mask_np, masses, bits)
        candidates = torch.from_numpy(candidate_subsets(mask_np)).to(x.device)
        members = torch.from_numpy(subset_members(mask.shape[1]))
        if columns is not None:
            candidates, members = candidates[:, columns], members[columns]
        if self.head is None:
            return torch.from_numpy(prior).to(x.device), candidates
        if leaves is None:
            raise ValueError("node evidence 'subset_head' needs the model's leaf embeddings")
        kinematic = subset_kinematics(x_np, mask_np, prior, masses, columns=bits)
        logits = self.head(leaves, members.to(leaves), torch.from_numpy(kinematic).to(leaves))
        return torch.where(candidates, logits, torch.zeros((), dtype=logits.dtype)), candidates

    def prior_scores(self, x: torch.Tensor, mask: torch.Tensor) -> np.ndarray | None:
        """The mass prior's node scores ``(N, 2^L)`` alone (``None`` as in :meth:`scores`)."""
        if not self.applies(x.shape[1]):
            return None
        x_np = x.detach().cpu().numpy().astype(np.float64)[..., :4]
        return self.mass_prior.node_scores(x_np, mask.cpu().numpy())

    def scores(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        leaves: torch.Tensor | None = None,
        head_share: float | None = None,
    ) -> np.ndarray | None:
        """Unweighted node scores ``(N, 2^L)`` float64 for decoding, or ``None`` (kind
        ``none``, or more than ``MAX_PRIOR_LEAVES`` leaves): with a subset head, the prior
        plus ``head_share`` (default: the buffer chosen on validation) of the head's
        correction to it, ``prior + a * (head - prior)`` (see :meth:`node_logits`)."""
        if not self.applies(x.shape[1]):
            return None
        share = float(self.head_share) if head_share is None else float(head_share)
        if self.head is not None and share == 0.0:  # the prior alone: no head to run
            return self.prior_scores(x, mask)
        with torch.no_grad():
            logits, _ = self.node_logits(x, mask, leaves)
        full = logits.double().cpu().numpy()
        if self.head is None or share == 1.0:
            return full
        return blend(self.prior_scores(x, mask), full, share)

    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        leaves: torch.Tensor,
        target: torch.Tensor,
        samples: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Binary cross-entropy of the subset head against "is an inner node of the true
        tree", averaged over the candidate subsets, and the head's node logits ``(N, 2^L)``
        (for a tree-level loss); ``None`` without a head, with too many leaves or with no
        candidate.

        With ``samples`` and more subsets than that, the loss is taken over ``samples``
        subsets drawn uniformly (the same for every event of the batch; nodes and others at
        the same rate, so the mean is unbiased and the logits keep their meaning), and no
        logits are returned.
        """
        if self.head is None or not self.applies(x.shape[1]):
            return None
        n_subsets = 1 << x.shape[1]
        columns = None
        if samples is not None and n_subsets > samples:
            columns = torch.randperm(n_subsets)[:samples].sort().values
        logits, candidates = self.node_logits(x, mask, leaves, columns)
        if not bool(candidates.any()):
            return None
        is_node = true_nodes(target, mask).to(logits)
        if columns is not None:
            is_node = is_node[:, columns.to(is_node.device)]
        bce = F.binary_cross_entropy_with_logits(logits[candidates], is_node[candidates])
        return bce, (logits if columns is None else None)


def blend(prior: np.ndarray, head: np.ndarray, share: float) -> np.ndarray:
    """Node scores ``(N, 2^L)`` keeping ``share`` of the subset head's correction to the
    prior: ``prior + share * (head - prior)`` (``prior`` itself at 0, ``head`` at 1)."""
    if share == 0.0:
        return prior
    if share == 1.0:
        return head
    return prior + share * (head - prior)


def true_nodes(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inner nodes (root included) of each event's true tree, ``(N, 2^L)`` bool.

    Args:
        target: ``(N, L, L)`` true LCAGs (-1 on the diagonal and padding).
        mask: ``(N, L)`` bool, real leaves.
    """
    lcag = target.cpu().numpy().copy()
    lcag[lcag < 0] = 0
    return torch.from_numpy(node_indicator(lcag, mask.cpu().numpy())).to(target.device)


_RENAMED = {"mass_prior_edges", "mass_prior_log_odds"}
_COMPOSITION = ("species_log_masses", "species_codes", "composition_keys", "composition_log_odds")
_CATALOGUE = ("catalogue_species", "catalogue_keys", "catalogue_trees", "catalogue_tree_species")
_RESIZED = _RENAMED | set(_COMPOSITION) | set(_CATALOGUE)


def _catalogue_buffers(catalogue: TopologyCatalogue) -> dict[str, torch.Tensor]:
    """The catalogue's species, keys and trees as tensors, by buffer name."""
    values = (
        catalogue.species.astype(np.float64),
        catalogue.keys.astype(np.int64),
        catalogue.trees.astype(np.int8),
        catalogue.tree_species.astype(np.int8),
    )
    return {
        name: torch.from_numpy(np.ascontiguousarray(v))
        for name, v in zip(_CATALOGUE, values, strict=True)
    }


def _composition_buffers(prior: MassPrior) -> dict[str, torch.Tensor]:
    """The prior's leaf species and (composition, bin) log-odds as tensors, by buffer name."""
    values = (
        prior.species.log_masses.astype(np.float64),
        prior.species.codes.astype(np.int64),
        prior.joint_keys.astype(np.int64),
        prior.joint_log_odds.astype(np.float64),
    )
    return {
        name: torch.from_numpy(np.ascontiguousarray(v))
        for name, v in zip(_COMPOSITION, values, strict=True)
    }


def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move a checkpoint's node-evidence buffers from the module's top level (checkpoints
    written before :class:`NodeEvidence` existed) to ``evidence.*``, give it the prior's own
    weight when it has none (the prior was then the whole evidence), no compositions when it
    has none, the subset head's whole correction when no share was chosen, no topology
    catalogue (or no trees in it) when it has none, the topology prior off, and tree
    temperatures for known and other topologies (1:
    uncalibrated; one per leaf count shared by both); others pass unchanged."""
    out = {}
    for key, value in state.items():
        if key in _RENAMED:
            out[f"evidence.{key}"] = value
        elif key == "node_weight":
            out["evidence.weight"] = value
        else:
            out[key] = value
    if "evidence.weight" in out and "evidence.prior_weight" not in out:
        out["evidence.prior_weight"] = out["evidence.weight"]
    if "evidence.weight" in out:  # written before the head's share was chosen: all of it
        out.setdefault("evidence.head_share", torch.tensor(1.0, dtype=torch.float64))
        # and before the training topologies were catalogued: none (every tree counts known)
        for name, value in _catalogue_buffers(TopologyCatalogue.empty()).items():
            out.setdefault(f"evidence.{name}", value)  # no trees kept: no topology prior
        out.setdefault("evidence.topology_log_odds", torch.tensor(-math.inf, dtype=torch.float64))
    if "evidence.mass_prior_edges" in out:  # written before the prior counted compositions
        empty = _composition_buffers(MassPrior.empty())
        for name, value in empty.items():
            out.setdefault(f"evidence.{name}", value)
    if "feature_mean" in out:  # a module: temperatures per (known topology or not, leaf
        # count), 1 if uncalibrated; one row, or one number, serves both
        t = out.get("tree_temperature", torch.tensor(1.0, dtype=torch.float64))
        out["tree_temperature"] = t.expand(2, EXACT_MAX_LEAVES + 1).clone() if t.dim() < 2 else t
    return out
