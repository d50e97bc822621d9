"""Training pieces beside the module: the tree loss, OIALR low-rank training, DASO-style
hierarchical synchronisation.

``from lcag.training import OIALR, HierarchicalDDP, LowRankLinear`` imports each on first use,
so importing ``lcag.training`` alone pulls in nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["OIALR", "HierarchicalDDP", "LowRankLinear", "tree_nll"]

_WHERE = {
    "OIALR": "lcag.training.oialr",
    "HierarchicalDDP": "lcag.training.hierarchical_ddp",
    "LowRankLinear": "lcag.training.lowrank",
    "tree_nll": "lcag.training.tree_loss",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lcag.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
