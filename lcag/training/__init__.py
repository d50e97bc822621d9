"""Training pieces beside the module: the tree loss, OIALR low-rank training, DASO-style
hierarchical synchronisation.

``from lcag.training import OIALR, HierarchicalDDP, LowRankLinear`` imports each on first use,
so importing ``lcag.training`` alone pulls in nothing heavy.
"""

from __future__ import annotations

from lcag.lazy import lazy_names

__all__ = ["OIALR", "HierarchicalDDP", "LowRankLinear", "tree_nll"]

_WHERE = {
    "OIALR": "lcag.training.oialr",
    "HierarchicalDDP": "lcag.training.hierarchical_ddp",
    "LowRankLinear": "lcag.training.lowrank",
    "tree_nll": "lcag.training.tree_loss",
}

__getattr__ = lazy_names(__name__, _WHERE)
